"""Gradio demo of cdiff: upload a brain MRI slice or volume, see its healthy reconstruction and
where it differs (the anomaly map), with the top-k anomaly boxes.

Runs as a Hugging Face Space (``python app.py`` serves on 0.0.0.0:7860, or
``GRADIO_SERVER_PORT``). The model is ``CDIFF_MODEL`` (a run directory or a Hub repo id,
``USER/NAME[@rev]``), else the bundled ``cdiff_cli/assets/reference``. All inference lives in
:mod:`cdiff_cli.app` (through the Python API); this file only lays out the page and maps errors to messages.
NOT FOR CLINICAL USE.
"""

from __future__ import annotations

import functools
import html
import logging
import os
from pathlib import Path
from typing import Any, Callable

import gradio as gr

from cdiff_cli.errors import CdiffError, first_line
from cdiff_cli.app.analysis import Analysis, level_in_words
from cdiff_cli.app.examples import example_files, example_label
from cdiff_cli.app.render import Rendered
from cdiff_cli.app.session import MAX_UPLOAD_BYTES, SKULL, Session, default_model_spec, skull_mode

log = logging.getLogger("cdiff.app")
HERE = Path(__file__).resolve().parent
FILE_TYPES = [".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".nii", ".nii.gz", ".zip"]
SESSION = Session(default_model_spec(), os.environ.get("CDIFF_DEVICE", "auto"))

INTRO = """# cdiff: unsupervised anomaly detection in brain MRI
Contrastive-guided conditional diffusion (Patrício et al., Pattern Recognition Letters 2025): the model
reconstructs a *healthy* version of the input in one diffusion pass per noise level; what it cannot
reconstruct lights up in the anomaly map. Upload an axial T2-weighted slice (PNG/JPG), a skull-stripped
NIfTI volume or a zipped DICOM series (the zip of its folder), or click an example.

> **NOT FOR CLINICAL USE.** Research demo; not a medical device. Do not upload identifiable patient data.
"""


def _guard(fn: Callable[..., Any]) -> Callable[..., Any]:
    """User errors -> a message in the page (gr.Error); anything else is logged, the server stays up."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except CdiffError as e:
            raise gr.Error(str(e), title="Cannot analyse this input", print_exception=False) from None
        except MemoryError:
            raise gr.Error("the input is too large to process here", title="Out of memory") from None
        except Exception as e:  # noqa: BLE001 - never let one request take the app down
            log.exception("request failed")
            first = first_line(e, "")[:200]
            raise gr.Error(f"unexpected error ({type(e).__name__}: {first})", title="Error") from None

    return wrapper


STRENGTHS = {  # plain-language reconstruction strengths -> noise levels t (one U-Net pass each, averaged)
    "Light: keeps fine detail; finds small, faint changes": "250",
    "Strong: rebuilds more of the image; large lesions stand out, more false alarms at edges": "750",
}
MODEL_DEFAULT = "The model's default (recommended)"


def _judged_healthy(a: Analysis, index: int) -> bool:
    """Whether the verdict that gates this slice's boxes (the session's gate) found no anomaly."""
    if a.verdict is None or a.verdict.anomalous is None:
        return False  # no verdict, or not calibrated: boxes are never withheld
    v = a.verdict_of(index, SESSION.model.recipe.localize.gate)
    return v is None or v.anomalous is False


def _details(a: Analysis, r: Rendered, index: int, threshold: float, kind: str, all_candidates: bool) -> str:
    """Everything below the verdict: scores, boxes and where their coordinates are, timing."""
    where = "brain" if a.kind == "volume" or a.brain_outlined else "foreground"
    lines = [f"**{a.name}** · noise levels t = {','.join(map(str, a.timesteps))} · {a.seconds:.1f} s"]
    lines += [f"⚠️ {note}" for note in a.notes]
    if a.brain_outlined:
        lines.append("**Skull and scalp**: the brain was outlined by the bundled brain-mask network; the map, "
                     "scores and boxes cover it only.")
    if a.kind == "volume":
        lines.append(f"**Volume anomaly score**: mean {r.total_scores['mean']:.4f} · max {r.total_scores['max']:.4f} "
                     f"(map inside the {where})")
        lines.append(f"**Slice {index} / {a.depth - 1}**: mean {r.slice_scores['mean']:.4f} · "
                     f"max {r.slice_scores['max']:.4f}")
    else:
        lines.append(f"**Anomaly score**: mean {r.slice_scores['mean']:.4f} · max {r.slice_scores['max']:.4f} "
                     f"(map inside the {where})")
    if r.boxes:
        listed = "; ".join(f"#{i} at x={b.x}, y={b.y}, {b.width}x{b.height} px, peak {b.score:.3f}"
                           + (f" (p = {b.p_value:.3g})" if b.p_value is not None else "")
                           for i, b in enumerate(r.boxes, start=1))
        lines.append(f"**{len(r.boxes)} box(es)** at threshold {threshold:.4f} ({kind}): {listed}. {a.pixels}")
    elif not all_candidates and _judged_healthy(a, index):
        lines.append("No box: the verdict found no anomaly here (tick *show every candidate region* to see them).")
    else:
        lines.append(f"No region reaches the threshold {threshold:.4f} ({kind}) on this slice.")
    return "\n\n".join(lines)


VERDICT_COLOURS = {"anomalous": "#b71c1c", "healthy": "#1b5e20", "uncalibrated": "#616161"}


def verdict_html(a: Analysis, index: int) -> str:
    """The verdict as the page's first element: a coloured headline (text, not only colour), then its words."""
    parts = a.verdict_parts(index)
    if parts is None:
        return "<div id='verdict-text'><h3>Anomaly map</h3><p>This model gives no verdict.</p></div>"
    state, head, lines = parts
    body = "".join(f"<p style='margin:4px 0'>{html.escape(line)}</p>" for line in lines)
    return (f"<div id='verdict-text' data-state='{state}'><div style='display:inline-block;padding:6px 14px;"
            f"border-radius:6px;background:{VERDICT_COLOURS[state]};color:#fff;font-size:1.35em;font-weight:700'>"
            f"{html.escape(head.upper())}</div>{body}</div>")


def _panels(a: Analysis, index: int | None, threshold: float | None, calibrated: bool, top_k: float,
            all_candidates: bool) -> tuple:
    thr, kind = SESSION.threshold(threshold, bool(calibrated))
    i = a.default_slice if index is None else int(index)
    r = SESSION.render(a, i, thr, int(top_k), bool(all_candidates))
    verdict = verdict_html(a, i)
    return (r.image, r.recon, r.overlay, (r.image, r.recon), verdict,
            _details(a, r, i, thr, kind, bool(all_candidates)))


@_guard
def analyze(file: str | None, timesteps: str, threshold: float | None, calibrated: bool, top_k: float,
            all_candidates: bool = False, skull: str | None = None, progress: gr.Progress = gr.Progress()) -> tuple:
    """Reconstruct the upload and show its most anomalous slice (``skull``: one of :data:`SKULL`'s choices,
    or its mode ``auto``/``on``/``off``; None: the model's ``infer.brain_mask``)."""
    mode = skull_mode(skull)
    a = SESSION.analyze(file, timesteps, progress=lambda frac, desc: progress(frac, desc=desc), brain_mask=mode)
    panels = _panels(a, None, threshold, calibrated, top_k, all_candidates)
    slider = gr.update(minimum=0, maximum=max(a.depth - 1, 1), value=a.default_slice, visible=a.kind == "volume",
                       label=f"Axial slice (0 to {a.depth - 1}; opens on the most anomalous)")
    download = gr.update(value=str(a.download) if a.download else None, visible=a.download is not None)
    state = {"file": file, "timesteps": timesteps, "brain_mask": mode}
    return (*panels[:4], slider, panels[4], panels[5], download, state)


def on_upload(file: str | None, timesteps: str, threshold: float | None, calibrated: bool, top_k: float,
              all_candidates: bool = False, skull: str | None = None, progress: gr.Progress = gr.Progress()) -> tuple:
    if not file:  # the upload was cleared
        return None, None, None, None, gr.update(visible=False), "", "", gr.update(visible=False, value=None), None
    return analyze(file, timesteps, threshold, calibrated, top_k, all_candidates, skull, progress)


@_guard
def show_slice(state: dict | None, index: float, threshold: float | None, calibrated: bool, top_k: float,
               all_candidates: bool = False) -> tuple:
    """Re-render from the cached maps: moving the slider never reruns the model."""
    if not state:
        raise gr.Error("analyse a file first", title="Nothing to show")
    a = SESSION.analyze(state["file"], state["timesteps"], brain_mask=state.get("brain_mask"))  # a cache hit
    return _panels(a, index, threshold, calibrated, top_k, all_candidates)


def restyle(state: dict | None, index: float, threshold: float | None, calibrated: bool, top_k: float,
            all_candidates: bool = False) -> tuple:
    """Settings changed: re-render if something is shown, else leave the page alone."""
    if not state:
        return tuple(gr.update() for _ in range(6))
    return show_slice(state, index, threshold, calibrated, top_k, all_candidates)


def pick_strength(choice: str, default_steps: str) -> str:
    """The plain-language strength -> the noise levels it stands for (shown in the advanced field)."""
    return STRENGTHS.get(choice, default_steps)


def build_demo() -> gr.Blocks:
    try:
        model_text = SESSION.describe()
        model = SESSION.model
        examples = [str(p) for p in example_files(model, extra_dir=HERE / "examples")]
        has_cal = model.threshold is not None
        default_thr = float(model.threshold if model.threshold is not None else model.recipe.localize.threshold
                            if isinstance(model.recipe.localize.threshold, float) else 0.5)
        default_steps = ",".join(map(str, model.recipe.infer.timesteps))
        skull_default = next(k for k, v in SKULL.items() if v == model.recipe.infer.brain_mask)
        scale_text = model.map_scale.describe()
        level = level_in_words(model.loaded.scoring.level) if model.loaded.scoring is not None else (
            "This model stores no healthy statistics: it gives no verdict, and every candidate region is boxed.")
        ready = True
    except CdiffError as e:
        model_text, examples, has_cal, default_thr, default_steps, ready = f"**{e}**", [], False, 0.5, "", False
        skull_default = None
        scale_text = level = ""

    # uploads and results older than 2 h are deleted every hour (a public Space must not keep them)
    with gr.Blocks(title="cdiff: anomaly detection in brain MRI", delete_cache=(3600, 7200)) as demo:
        gr.Markdown(INTRO)
        gr.Markdown(f"**Model**: {model_text}" if ready else f"⚠️ {model_text}", elem_id="model-info")
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                upload = gr.File(label="2-D slice (PNG/JPG), NIfTI volume (.nii, .nii.gz) or zipped DICOM series, "
                                 "up to "
                                 f"{MAX_UPLOAD_BYTES // 2**20} MB", file_types=FILE_TYPES, elem_id="upload")
                if examples:
                    gr.Examples(examples=[[p] for p in examples], inputs=[upload],
                                label="Examples (synthetic: a slice and a volume with a bright lesion)",
                                example_labels=[example_label(Path(p)) for p in examples])
                skull = gr.Radio(list(SKULL), value=skull_default, label="Skull and scalp (2-D slices)",
                                 info="a small bundled network finds the brain; maps, scores and boxes then cover "
                                      "it only (volumes must be skull-stripped)", elem_id="skull")
                strength = gr.Radio([MODEL_DEFAULT, *STRENGTHS], value=MODEL_DEFAULT, label="Reconstruction strength",
                                    info="How much of the image the model rebuilds from noise before comparing.")
                with gr.Accordion("Boxes and advanced settings", open=False):
                    all_candidates = gr.Checkbox(value=False, label="Show every candidate region",
                                                 info="also on inputs the verdict finds healthy", elem_id="all")
                    calibrated = gr.Checkbox(value=has_cal, label="Use the calibrated threshold",
                                             info="stored with the model" if has_cal else "none stored: the value below is used")
                    threshold = gr.Number(value=default_thr, label="Threshold for boxes (map units)", precision=4,
                                          interactive=not has_cal, elem_id="threshold",
                                          info="used when the calibrated threshold is not ticked")
                    top_k = gr.Slider(1, 20, value=5, step=1, label="At most this many boxes (largest first)")
                    timesteps = gr.Textbox(value=default_steps, label="Noise levels t (comma-separated, 0-999)",
                                           placeholder="250,500,750", elem_id="timesteps",
                                           info="One U-Net pass each, averaged; higher t rebuilds more. "
                                                "Set by the strength above.")
                run = gr.Button("Analyze", variant="primary", interactive=ready, elem_id="analyze")
                slice_slider = gr.Slider(0, 1, value=0, step=1, label="Axial slice", visible=False,
                                         elem_id="slice")
                details = gr.Markdown(elem_id="score")
                download = gr.File(label="Anomaly map on your volume's grid (NIfTI)", visible=False,
                                   interactive=False, elem_id="download")
            with gr.Column(scale=3):
                verdict = gr.HTML(f"<p>{html.escape(level)}</p>" if level else "", elem_id="verdict")
                with gr.Row():
                    image_in = gr.Image(label="Input", format="png", interactive=False, elem_id="input-image")
                    image_rec = gr.Image(label="Reconstruction (healthy)", format="png", interactive=False,
                                         elem_id="recon-image")
                    image_ov = gr.Image(label="Anomaly map + boxes", format="png", interactive=False,
                                        elem_id="overlay-image")
                gr.Markdown(scale_text, elem_id="scale")
                compare = gr.ImageSlider(label="Before / after: input vs reconstruction", format="png",
                                         interactive=False, max_height=520)
        state = gr.State(None)

        settings = [timesteps, threshold, calibrated, top_k, all_candidates, skull]
        outputs = [image_in, image_rec, image_ov, compare, slice_slider, verdict, details, download, state]
        view = [state, slice_slider, threshold, calibrated, top_k, all_candidates]
        view_out = [image_in, image_rec, image_ov, compare, verdict, details]
        run.click(analyze, [upload, *settings], outputs, api_name="analyze")
        upload.change(on_upload, [upload, *settings], outputs, api_visibility="private")
        slice_slider.release(show_slice, view, view_out, api_name="show_slice", show_progress="hidden")
        strength.change(functools.partial(pick_strength, default_steps=default_steps), strength, timesteps,
                        api_visibility="private")
        calibrated.change(lambda c: gr.update(interactive=not c), calibrated, threshold, api_visibility="private")
        for trigger in (threshold.submit, calibrated.change, top_k.release, all_candidates.change):
            trigger(restyle, view, view_out, api_visibility="private", show_progress="hidden")
    demo.queue(default_concurrency_limit=int(os.environ.get("CDIFF_CONCURRENCY", "1")), max_size=32)
    return demo


demo = build_demo()

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    demo.launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        max_file_size=MAX_UPLOAD_BYTES,
        show_error=True,
        footer_links=["api", "gradio"],
    )
