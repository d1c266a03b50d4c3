"""The study of issue 27: ARMS x SEEDS at the quickstart networks, resumable across sessions and machines.

Each arm (``benchmarks/study27_arms.yaml``: a method's preset plus the arm's overrides) is trained with
every seed by ``cdiff benchmark``'s own unit (so its own and the common inference, the z measures, steps
and seconds are those of the benchmark). As it goes it writes, under ``--out`` (small files, meant to be
committed), ``results/<arm>-s<seed>.json`` per finished unit and ``ledger.json`` (each unit: done or
running, its result file, its recipe's fingerprint). A killed run, or the next session on a fresh machine
with the committed ledger and results, resumes where it stopped: finished units are read back; a unit cut
off mid-way continues from its checkpoints in ``--runs`` when they are still there (else it starts over).
Then it writes the paired comparisons over (seed, volume) of every arm against each ``--against`` arm
under the common inference (95 % bootstrap intervals, Wilcoxon p): ``study.md``, ``study.json``, and
the benchmark report of all arms (``benchmark.{md,json,png}``, ours = the arm ``cdiff``).

Screening (3 seeds, at least 800 stage-2 steps), then the final comparison (5 seeds):

    python benchmarks/study27.py benchmarks/study27_arms.yaml --seeds 3 --budget 800 --encoder-budget 250 \\
        --out benchmarks/results/study27-screen --runs runs/study27-screen
    python benchmarks/study27.py benchmarks/study27_arms.yaml --arms BEST,ddpm,cddpm --seeds 5 --budget 800 \\
        --encoder-budget 250 --against ddpm,cddpm --out benchmarks/results/study27-final --runs runs/study27-final \\
        --reuse benchmarks/results/study27-screen     # seeds 0-2 of each arm were trained in the screening

BEST, the arm the final comparison takes (fixed before the screening's last arm, cf-joint, had a
result): of the arms that are not baselines (``--baselines``, default ddpm and cddpm), the one with the
highest mean BraTS-like AUPRC under the common inference over the screening's seeds; ``study.md`` ends
with that ranking (the issue's first target is on that AUPRC).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from cdiff_cli.errors import CdiffError
from cdiff_cli.eval.bench_protocol import CommonInference, common_view, parse_timesteps
from cdiff_cli.eval.bench_report import comparisons, paired_markdown, write_reports
from cdiff_cli.eval.benchmark import Unit, check_ema_warmup, method_recipe, run_unit
from cdiff_cli.fileio import write_json, write_text


def load_arms(path: Path, names: list[str] | None) -> tuple[Path, list[str], dict[str, dict[str, Any]]]:
    """The arms file: (base recipe, overrides for all, {arm: spec}) of the arms to run; an arm marked
    ``todo`` is left out unless named, and then it is an error."""
    import yaml

    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    arms = raw.get("arms") or {}
    if not arms:
        raise CdiffError(f"{path}: no arms")
    for name in names or []:
        if name not in arms:
            raise CdiffError(f"--arms: unknown arm {name!r}; {path} has {', '.join(arms)}")
        if arms[name].get("todo"):
            raise CdiffError(f"arm {name}: not ready ({arms[name]['todo']})")
    chosen = {n: a for n, a in arms.items() if (n in names if names else not a.get("todo"))}
    for n, a in arms.items():
        if not names and a.get("todo"):
            print(f"arm {n}: skipped, {a['todo']}")
    return Path(raw.get("recipe", "recipes/quickstart.yaml")), list(raw.get("overrides") or []), chosen


def fingerprint(unit: Unit) -> str:
    """The unit's resolved recipe without where it runs: the same arm and seed train the same model."""
    d = {k: v for k, v in unit.recipe.to_dict().items() if k not in ("name", "runs_dir")}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def plan(args: argparse.Namespace) -> list[Unit]:
    base, overrides, arms = load_arms(args.arms_file, args.arms)
    units = []
    for name, arm in arms.items():
        for seed in range(args.seeds):
            recipe = method_recipe(Path(arm.get("recipe", base)), overrides, arm.get("method", "cdiff"), seed,
                                   args.budget, args.encoder_budget, args.runs / name, arm=list(arm.get("overrides") or []))
            units.append(Unit(name, seed, recipe, "train"))
    check_ema_warmup(units)
    return units


def run(args: argparse.Namespace) -> dict[str, Any]:
    out: Path = args.out
    units = plan(args)
    common = CommonInference(parse_timesteps(args.common_timesteps), args.common_passes)
    ledger_path = out / "ledger.json"
    ledger = json.loads(ledger_path.read_text(encoding="utf-8")) if ledger_path.is_file() else {"units": {}}
    ledger["options"] = {"common_inference": common.to_dict(), "budget": args.budget,
                         "encoder_budget": args.encoder_budget, "invariance_slices": args.invariance_slices}
    results, trained = [], 0
    for i, unit in enumerate(units, start=1):
        key, fp = f"{unit.label}-s{unit.seed}", fingerprint(unit)
        entry = ledger["units"].get(key, {})
        if entry.get("fingerprint", fp) != fp:
            raise CdiffError(f"arm {unit.label} seed {unit.seed}: its recipe changed since {entry.get('result')} "
                             "was written; rename the arm (or delete its results and ledger entry)")
        path = out / "results" / f"{key}.json"
        if entry.get("status") != "done" and (found := reused(args.reuse, key, fp, ledger["options"])) is not None:
            result, source = found
            write_json(path, result)
            ledger["units"][key] = {"arm": unit.label, "seed": unit.seed, "status": "done", "fingerprint": fp,
                                    "run_dir": source["run_dir"], "result": f"results/{key}.json",
                                    "reused_from": source["from"]}
            write_json(ledger_path, ledger)
            entry = ledger["units"][key]
        if entry.get("status") == "done" and path.is_file():
            print(f"[{i}/{len(units)}] {key}: done earlier ({path})")
            results.append(json.loads(path.read_text(encoding="utf-8")))
            continue
        if args.max_units is not None and trained >= args.max_units:
            print(f"stopping after {trained} unit(s) (--max-units); run again to go on")
            break
        ledger["units"][key] = {"arm": unit.label, "seed": unit.seed, "status": "running", "fingerprint": fp,
                                "run_dir": str(unit.recipe.run_dir), "result": f"results/{key}.json"}
        write_json(ledger_path, ledger)
        print(f"[{i}/{len(units)}] {key}: {unit.recipe.run_dir}")
        t0 = time.perf_counter()
        result = run_unit(unit, None, args.device, args.infer_slices, None, None, common, args.invariance_slices)
        result["seconds"] = round(time.perf_counter() - t0, 1)
        write_json(path, result)
        ledger["units"][key]["status"] = "done"
        write_json(ledger_path, ledger)
        results.append(result)
        trained += 1
    done = len(results) == len(units)
    ledger["complete"] = done
    write_json(ledger_path, ledger)
    if done:
        report(out, results, list(dict.fromkeys(u.label for u in units)), args, common)
    return {"units": len(units), "done": len(results), "trained": trained, "complete": done}


def reused(dirs: list[Path], key: str, fp: str, options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]] | None:
    """A unit finished in another study's folder (``--reuse``) with the same recipe fingerprint, budgets,
    common inference and invariance slices: its result and where it came from; None if there is none.
    The same arm and seed with the same recipe train the same model, so it is not trained twice."""
    for d in dirs:
        ledger_path = d / "ledger.json"
        if not ledger_path.is_file():
            continue
        other = json.loads(ledger_path.read_text(encoding="utf-8"))
        entry = other.get("units", {}).get(key, {})
        path = d / "results" / f"{key}.json"
        if entry.get("status") == "done" and entry.get("fingerprint") == fp and other.get("options") == options \
                and path.is_file():
            return json.loads(path.read_text(encoding="utf-8")), {"from": str(d), "run_dir": entry["run_dir"]}
    return None


def report(out: Path, results: list[dict[str, Any]], arms: list[str], args: argparse.Namespace,
           common: CommonInference) -> None:
    """Every arm against each ``--against`` arm, paired over (seed, volume) under the common inference."""
    rows = [common_view(r) for r in results]
    against = [a for a in args.against if a in arms]
    # arm - baseline: a positive difference is the arm's gain
    paired = {b: {a: comparisons(rows, a, [b], args.resamples)[b] for a in arms if a != b} for b in against}
    text = [f"# Study: {', '.join(arms)}, {args.seeds} seeds, {args.budget} stage-2 steps, common inference "
            f"t in {list(common.timesteps)}, {common.passes} pass(es)", ""]
    for b, comps in paired.items():
        text.append(paired_markdown(comps, f"## Each arm against {b} (common inference)", f"arm \u2212 {b}"))
    ranking = choice(rows, [a for a in arms if a not in args.baselines])
    if ranking:
        text += ["## The choice: mean BraTS-like AUPRC under the common inference (arms other than "
                 f"{', '.join(args.baselines)})", "", "| arm | seeds | AUPRC | Dice |", "|:---|---:|---:|---:|"]
        text += [f"| {'**' + a + '**' if i == 0 else a} | {n} | {100 * auprc:.1f} | {100 * dice:.1f} |"
                 for i, (a, n, auprc, dice) in enumerate(ranking)]
        text += ["", f"BEST = {ranking[0][0]}", ""]
    write_json(out / "study.json", {"arms": arms, "seeds": args.seeds, "common_inference": common.to_dict(),
                                    "against": against, "paired": paired,
                                    "choice": [{"arm": a, "seeds": n, "brats_auprc": x, "brats_dice": d}
                                               for a, n, x, d in ranking]})
    write_text(out / "study.md", "\n".join(text))
    options = {"recipe": str(args.arms_file), "budget": args.budget, "encoder_budget": args.encoder_budget,
               "seeds": args.seeds, "max_test_volumes": None, "max_val_volumes": None, "subset_methods": [],
               "ablations": [], "resamples": args.resamples, "common_inference": common.to_dict()}
    write_reports(out, results, arms, options)


def choice(rows: list[dict[str, Any]], candidates: list[str]) -> list[tuple[str, int, float, float]]:
    """The candidate arms by mean BraTS-like AUPRC (common inference) over their seeds, best first:
    (arm, seeds, AUPRC, Dice)."""
    out = []
    for arm in candidates:
        mine = [r for r in rows if r["method"] == arm]
        if mine:
            out.append((arm, len(mine), sum(r["brats_auprc"] for r in mine) / len(mine),
                        sum(r["brats_dice"] for r in mine) / len(mine)))
    return sorted(out, key=lambda t: -t[2])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("arms_file", type=Path, help="the arms (benchmarks/study27_arms.yaml)")
    ap.add_argument("--arms", type=lambda s: [a.strip() for a in s.split(",") if a.strip()], default=None,
                    help="comma-separated arms to run (default: every arm not marked todo)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--budget", type=int, default=800, help="stage-2 (U-Net) steps")
    ap.add_argument("--encoder-budget", type=int, default=None, help="stage-1 steps (default: the recipe's)")
    ap.add_argument("--against", type=lambda s: [a.strip() for a in s.split(",") if a.strip()],
                    default=["cdiff", "ddpm", "cddpm"], help="the arms every arm is paired with")
    ap.add_argument("--baselines", type=lambda s: [a.strip() for a in s.split(",") if a.strip()],
                    default=["ddpm", "cddpm"], help="arms that are not candidates for BEST")
    ap.add_argument("--common-timesteps", default="250,500,750")
    ap.add_argument("--common-passes", type=int, default=1)
    ap.add_argument("--invariance-slices", type=int, default=64)
    ap.add_argument("--infer-slices", type=int, default=32, help="validation slices of the speed measurement")
    ap.add_argument("--resamples", type=int, default=10_000)
    ap.add_argument("--reuse", type=Path, action="append", default=[],
                    help="another study's folder: units done there with the same recipe and options are read "
                         "from it instead of trained again (repeatable)")
    ap.add_argument("--max-units", type=int, default=None, help="stop after training this many units")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path, required=True, help="ledger and results (small: commit them)")
    ap.add_argument("--runs", type=Path, default=None, help="checkpoints and models (default: runs/<out name>)")
    args = ap.parse_args(argv)
    args.runs = args.runs or Path("runs") / args.out.name
    if args.seeds < 1 or args.budget < 1:
        ap.error("--seeds and --budget must be at least 1")
    os.environ.setdefault("CDIFF_PROGRESS", "0")
    try:
        summary = run(args)
    except CdiffError as e:
        raise SystemExit(f"study27: {e}") from None
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
