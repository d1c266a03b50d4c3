"""The bodies of the CLI commands: load, call one function, print where the results are.

Imported lazily by ``cdiff_cli.cli.main`` so that ``cdiff --help`` stays instant.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from cdiff_cli.config import load_recipe
from cdiff_cli.console import console, info
from cdiff_cli.errors import CdiffError


def _summary(title: str, rows: dict[str, Any]) -> None:
    info(f"[bold green]{title}[/]")
    for key, value in rows.items():
        info(f"  {key}: {value}")


def run_synthesize(out_dir: Path, seed: int, preset: str) -> None:
    if preset.startswith("celeba"):
        from cdiff_cli.synthetic.celeba import PRESETS, synthesize_celeba

        if preset not in PRESETS:
            raise CdiffError(f"--preset {preset!r}: expected one of {', '.join(PRESETS)}")
        with console.status(f"drawing the CelebA-layout fixture into {out_dir} ..."):
            summary = synthesize_celeba(out_dir, seed, *PRESETS[preset])
        _summary(f"wrote the CelebA-layout fixture to {out_dir}", {**summary["counts"], "seconds": summary["seconds"]})
        return
    if preset not in {"tiny", "small", "default"}:
        raise CdiffError(f"--preset {preset!r}: expected tiny, small, default, celeba or celeba-tiny")
    from cdiff_cli.synthetic.benchmark import synthesize

    with console.status(f"synthesizing the {preset} benchmark into {out_dir} ..."):
        summary = synthesize(out_dir, seed=seed, preset=preset, log=info)  # type: ignore[arg-type]
    counts = summary.get("counts", {})
    anatomies = summary.get("anatomies", [])
    _summary(f"wrote the synthetic benchmark to {out_dir}", {
        **{k: v for k, v in counts.items()}, "anatomies": f"{len(anatomies)} ({', '.join(anatomies)})",
        "seconds": summary.get("seconds"), "preview": out_dir / "preview.png",
        "one subject per anatomy": out_dir / "anatomies.png"})


def run_fetch_anatomy(only: list[str], force: bool) -> None:
    from cdiff_cli.synthetic.fetch import fetch
    from cdiff_cli.synthetic.sources import cache_root

    result = fetch(only or None, force=force, log=info)
    failed = [k for k, v in result.items() if v.startswith("failed")]
    if failed:
        raise CdiffError(f"{len(failed)} of {len(result)} anatomy package(s) failed ({', '.join(failed)}); "
                         "the others are in " + str(cache_root()))
    _summary(f"anatomy cache ready in {cache_root()}", {k: v for k, v in result.items()})


def run_prepare(recipe_path: Path, overrides: list[str]) -> None:
    recipe = load_recipe(recipe_path, overrides)
    from cdiff_cli.data.prepare import prepare
    from cdiff_cli.data.splits import leakage_line

    summary = prepare(recipe)
    _summary(f"prepared store written to {recipe.data.prepared}", {
        "sources": ", ".join(f"{k} ({v.get('volumes', v.get('images'))} volumes, "
                             f"{v.get('slices', v.get('images'))} slices)"
                             for k, v in summary["sources"].items()),
        "skipped files": len(summary.get("skipped", [])),
        "dropped (not in the dataset's avail_*.csv)": _dropped(summary.get("dropped", [])),
        "leakage": "; ".join(f"{k}: {leakage_line(v)}" for k, v in summary.get("leakage", {}).items()) or "none",
        "seconds": summary.get("seconds")})


def _dropped(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "none"
    names = [r["subject"] for r in rows]
    return f"{len(names)} subject(s): {', '.join(names[:20])}{', ...' if len(names) > 20 else ''} (in prepare.json)"


def run_train(kind: str, recipe_path: Path, overrides: list[str], device: str, resume: bool) -> None:
    recipe = load_recipe(recipe_path, overrides)
    from cdiff_cli.train.run import train_stage

    result = train_stage(kind, recipe, device, resume)  # type: ignore[arg-type]
    if result.get("model"):
        _summary(f"{kind} trained: {result['model']}", {
            "steps": result["steps"], "final loss": f"{result['final_loss']:.4f}",
            "images/s": result["images_per_s"], "log": Path(result["model"]).parent / "log.csv"})


def _check_options(timesteps: str | None = None, batch_size: int | None = None, seed: int | None = None,
                   noise_passes: int | None = None, top_k: int | None = None,
                   threshold: str | None = None, threads: int | None = None,
                   brain_mask: str | None = None) -> tuple[int, ...] | None:
    """Every inference option checked before any input is read or model loaded (one line each,
    named as the user typed it); the timesteps parsed. ``threads`` is applied once checked."""
    from cdiff_cli.infer.options import brain_mask_of, count_of, seed_of, threshold_of, timesteps_of

    count = lambda v: count_of("", v)  # noqa: E731 - the flag names the value in the message
    checks = [(timesteps, "--timesteps", lambda v: timesteps_of(v, text=True)), (batch_size, "--batch-size", count),
              (seed, "--seed", seed_of), (noise_passes, "--noise-passes", count), (top_k, "--top-k", count),
              (threshold, "--threshold", threshold_of), (threads, "--threads", count),
              (brain_mask, "--brain-mask", brain_mask_of)]
    parsed = {flag: None if value is None else _checked(flag, value, check) for value, flag, check in checks}
    from cdiff_cli.infer.threads import set_threads

    set_threads(parsed["--threads"])
    return parsed["--timesteps"]


def _checked(flag: str, value: Any, check: Callable[[Any], Any]) -> Any:
    """``check(value)``, its error reworded to name the option as the user typed it."""
    try:
        return check(value)
    except CdiffError as e:
        raise CdiffError(f"{flag} {value!r}: {str(e).split(': ', 1)[-1]}") from None


def run_reconstruct(inputs: list[Path], model: str | None, out: Path, timesteps: str | None,
                    batch_size: int | None, seed: int | None, device: str, noise_passes: int | None = None,
                    series: str | None = None, strict: bool = False, compress: str = "fast",
                    preview: bool = False, threads: int | None = None, brain_mask: str | None = None) -> None:
    from cdiff_cli.api.files import Outputs, reconstruct_inputs

    steps = _check_options(timesteps, batch_size, seed, noise_passes, threads=threads, brain_mask=brain_mask)
    outputs = Outputs(compress, preview)  # type: ignore[arg-type]  # checked: one line on a typo
    written = reconstruct_inputs(inputs, model, out, steps, batch_size, seed, device, noise_passes, series, strict,
                                 outputs, brain_mask)
    _summary(f"reconstructed {len(written)} input(s) into {out}", {
        **({"previews": out / "*_preview.png"} if preview else {}), "record": out / "reconstruct.json"})


def run_evaluate(recipe_path: Path, overrides: list[str], model: str | None, out: Path | None, device: str) -> None:
    recipe = load_recipe(recipe_path, overrides)
    from cdiff_cli.eval.protocol import evaluate

    result = evaluate(recipe, model, out, device)
    info(Path(result["markdown"]).read_text())
    _summary("evaluation written", {"metrics": result["json"], "table": result["markdown"],
                                    "plots": result["plots"]})


def run_localize(input_dir: Path, model: str | None, recipe_path: Path | None, protocol: str | None,
                 top_k: int | None, threshold: str | None, annotations: Path | None, t2_filter: bool | None,
                 out: Path, device: str, series: str | None = None, strict: bool = False,
                 pictures: bool = True, all_candidates: bool = False, threads: int | None = None,
                 gate: str | None = None, brain_mask: str | None = None) -> None:
    _check_options(top_k=top_k, threshold=threshold, threads=threads, brain_mask=brain_mask)
    if protocol not in (None, "recipe", "paper"):
        raise CdiffError(f"--protocol {protocol!r}: expected paper or recipe")
    if gate not in (None, "volume", "slice"):
        raise CdiffError(f"--gate {gate!r}: expected volume or slice")
    recipe = load_recipe(recipe_path) if recipe_path is not None else None
    if model is None and recipe is not None and (recipe.run_dir / "diffusion").is_dir():
        model = str(recipe.run_dir)  # the recipe's own run, else the bundled model
    from cdiff_cli.eval.localize import localize

    result = localize(input_dir, model, top_k, threshold, annotations, t2_filter, out, device,
                      recipe=recipe, protocol=protocol or "recipe", series=series,  # type: ignore[arg-type]
                      strict=strict, pictures=pictures, all_candidates=all_candidates, gate=gate, brain_mask=brain_mask,
                      recipe_name=f"recipe {recipe_path}" if recipe_path is not None else None)
    if result.get("metrics"):
        info(Path(result["markdown"]).read_text())
    volumes, images = result["n_volumes"], result["n_inputs"] - result["n_volumes"]
    what = ", ".join(x for x in (f"{images} image(s)" if images else "", f"{volumes} volume(s)" if volumes else "") if x)
    where = "slice(s)" if volumes and not images else "image(s)/slice(s)" if volumes else "image(s)"
    _summary(f"localized {result['n_inputs']} input(s) ({what or 'none'}): {result['n_boxes']} box(es) on "
             f"{result['n_with_boxes']} {where}", {
        "settings": ", ".join(f"{k} {v} ({result['settings_from'][k]})" for k, v in result["settings"].items()),
        "verdicts": _verdict_summary(result),
        "boxes (COCO JSON)": result["boxes"], "pictures": result["pictures"] or "none (--no-pictures)",
        "metrics": result.get("metrics_json", "no annotations: none computed")})


def _verdict_summary(result: dict[str, Any]) -> str:
    """One line: how many inputs the calibrated verdict finds anomalous (or that the model is not calibrated)."""
    verdicts = result["verdicts"]
    if len(verdicts) == 1:
        return verdicts[0]["verdict"]["text"]
    if verdicts and verdicts[0]["verdict"]["anomalous"] is None:
        return f"not calibrated: run cdiff evaluate (boxes on every input); {result['verdicts_markdown']}"
    return f"{result['n_anomalous']} of {len(verdicts)} input(s) anomalous; {result['verdicts_markdown']}"


def _sizes(files: list[tuple[str, int]]) -> dict[str, str]:
    return {path: f"{size / 1e6:.2f} MB" if size >= 1e5 else f"{size} B" for path, size in files}


def run_push(run_dir: Path | None, repo_id: str | None, private: bool, revision: str | None, dry_run: Path | None,
             message: str | None, model: str | None = None, model_revision: str | None = None) -> None:
    from cdiff_cli.hub import push as hub

    if model is not None or model_revision is not None:
        raise CdiffError("--model and --model-revision go with --space USER/NAME (the Space that serves the model)")
    if run_dir is None or repo_id is None:
        raise CdiffError("push a model with `cdiff push RUN_DIR --repo-id USER/NAME`, or its Space with "
                         "`cdiff push --space USER/NAME --model USER/MODEL`")
    if dry_run is not None:
        files = hub.dry_run(run_dir, repo_id, dry_run)
        title = f"dry run: wrote the upload folder for {repo_id} to {dry_run} (nothing uploaded)"
    else:
        result = hub.push(run_dir, repo_id, private, revision, message)
        files = result["files"]
        title = f"pushed {run_dir} to {result['url']} ({result['revision']}, {'private' if private else 'public'})"
    _summary(title, _sizes(files))


def run_push_space(space: str, model: str | None, model_revision: str | None, dry_run: Path | None,
                   message: str | None, run_dir: Path | None = None, repo_id: str | None = None,
                   private: bool = False, revision: str | None = None) -> None:
    from cdiff_cli.hub import space as hub

    if run_dir is not None or repo_id is not None:
        raise CdiffError("--space pushes the Space of a published model: give --model USER/MODEL, not a run "
                         "directory or --repo-id (push the model first with `cdiff push RUN_DIR --repo-id ...`)")
    if private or revision is not None:
        raise CdiffError("--space: a Space is public (its build fetches the package's wheel from its own files "
                         "without a token) and runs from its main branch: drop --private and --revision")
    if model is None:
        raise CdiffError("--space needs --model USER/MODEL: the model repository the Space loads")
    if dry_run is not None:
        files = hub.dry_run_space(space, model, dry_run, model_revision)
        title = (f"dry run: wrote the Space {space} to {dry_run} (nothing uploaded); it loads {model} at "
                 f"{model_revision or 'main'}, not resolved to a commit without the network")
    else:
        result = hub.push_space(space, model, model_revision, message)
        files = result["files"]
        title = f"pushed the Space {result['url']}: it loads {model} at commit {result['revision']}"
    _summary(title, _sizes(files))


def run_benchmark(recipe_path: Path, overrides: list[str], methods: str, seeds: int, budget: int | None,
                  encoder_budget: int | None, nova: Path | None, out: Path, device: str,
                  ablations: str | None = None, max_test: int | None = None, subset: str | None = None,
                  resamples: int = 10_000, max_val: int | None = None, common_timesteps: str = "250,500,750",
                  common_passes: int = 1, invariance_slices: int = 64) -> None:
    names = [m.strip() for m in methods.split(",") if m.strip()]
    if not names:
        raise CdiffError("--methods: name at least one method, e.g. cdiff,ddpm")
    if len(set(names)) != len(names):
        raise CdiffError(f"--methods {methods}: a method is listed twice")
    for flag, value in (("--budget", budget), ("--encoder-budget", encoder_budget)):
        if value is not None and value < 1:
            raise CdiffError(f"{flag} {value}: must be at least 1")
    if resamples < 100:
        raise CdiffError(f"--resamples {resamples}: use at least 100")
    if invariance_slices < 0:
        raise CdiffError(f"--invariance-slices {invariance_slices}: must be 0 (none) or more")
    from cdiff_cli.eval.ablations import parse_ablations
    from cdiff_cli.eval.bench_protocol import CommonInference, parse_timesteps
    from cdiff_cli.eval.benchmark import run_benchmark as benchmark

    common = None if common_timesteps.strip().lower() == "none" else \
        CommonInference(parse_timesteps(common_timesteps), common_passes)

    result = benchmark(recipe_path, overrides, names, seeds, budget, encoder_budget, out, nova, device,
                       ablations=parse_ablations(ablations), max_test=max_test,
                       subset=None if subset is None else tuple(m.strip() for m in subset.split(",") if m.strip()),
                       resamples=resamples,
                       max_val=max_val, common=common, invariance_slices=invariance_slices)
    info(Path(result["markdown"]).read_text())
    _summary("benchmark written", {"table": result["markdown"], "json": result["json"], "plot": result["plot"],
                                   "paired plot": result.get("paired_plot", "\u2013")})

