"""Scaling study: which network is best for a fixed training budget (issue: the bundled model).

Every configuration (slice grid, U-Net width, res blocks per level, encoder) is the base recipe
plus a few overrides; each trains both stages for the SAME budget (``--seconds`` of wall-clock, or of
the process's CPU time with ``--clock cpu``, fair on a shared machine, or optimizer steps with
``--clock steps``, the same at any load; a share
``--encoder-fraction`` of it for stage 1) through ``cdiff_cli.train.run.train_stage``, then is
scored on the VALIDATION split (healthy l1, per-volume lesion AUPRC; the test split stays for
the final numbers). Compute is the training FLOPs (``torch.utils.flop_counter`` per image, times
the images seen). Writes ``--report`` (markdown, with the commands) and a plot of l1 and AUPRC
against compute next to it. Resumable: finished configurations are read back from
``OUT/results/``, a cut-off one continues from its checkpoints with the seconds it has left.

A configuration is named ``g<H>[x<D>]-w<width>-r<blocks>-<encoder>``: ``g64`` is 64x64x32
(3 mm), ``g96`` 96x96x50 (2 mm, the paper's); ``x<D>`` sets the slices per volume.

    python benchmarks/scaling.py --data data/synthetic --seconds 1200          # the full study
    python benchmarks/scaling.py --configs g64-w16-r1-resnet18,g96-w32-r1-resnet18 --seconds 60

A learning curve per configuration: ``--rungs 600,1200,2400`` trains stage 2 to 600 s, scores,
trains on to 1200 s, scores, and so on (one training, scored at each budget); with
``--encoder-from RUN`` every configuration uses RUN's trained stage 1 (same encoder and grid), so
configurations that differ only in their U-Net are compared on the U-Net alone:

    python benchmarks/scaling.py --recipe recipes/reference.yaml --encoder-from runs/reference \
        --configs g96-w16-r1-resnet18,g96-w16-r2-resnet18 --rungs 600,1200,2400 --clock cpu
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from timed_training import CLOCK_NAMES, train_for, training_flops_per_image, validation_scores  # noqa: E402

from cdiff_cli.config import Recipe, load_recipe  # noqa: E402
from cdiff_cli.fileio import write_json, write_text  # noqa: E402

DEFAULT_CONFIGS = ",".join([
    "g64-w16-r1-resnet18", "g64-w32-r1-resnet18", "g64-w64-r1-resnet18", "g64-w32-r2-resnet18",
    "g64-w32-r1-resnet50",
    "g96-w16-r1-resnet18", "g96-w32-r1-resnet18", "g96-w64-r1-resnet18", "g96-w32-r2-resnet18",
    "g96-w32-r1-resnet50",
])
NAME = re.compile(r"^g(?P<hw>\d+)(?:x(?P<d>\d+))?-w(?P<w>\d+)-r(?P<r>\d+)-(?P<enc>resnet18|resnet34|resnet50)$")
DEPTH = {64: 32, 96: 50}  # slices per volume of the two grids (192x192x100 at 1 mm resampled)


def config_overrides(name: str) -> tuple[int, list[str]]:
    """(grid side, recipe overrides) of a configuration name."""
    m = NAME.match(name)
    if m is None:
        raise SystemExit(f"configuration {name!r}: expected g<H>[x<D>]-w<width>-r<blocks>-<resnet18|34|50>, "
                         "e.g. g96-w32-r1-resnet18")
    hw, width = int(m["hw"]), int(m["w"])
    depth = int(m["d"]) if m["d"] else DEPTH.get(hw, max(hw // 2, 1))
    return hw, [f"data.size=[{hw},{hw},{depth}]", f"unet.base_channels={width}", f"unet.num_res_blocks={m['r']}",
                f"unet.groups={min(8, width)}", f"encoder.arch={m['enc']}",
                f"diffusion.simplex.frequency={hw // 2}"]  # noise features at the same share of the slice


def recipe_for(args: argparse.Namespace, name: str) -> Recipe:
    hw, extra = config_overrides(name)
    grid = extra[0].split("=")[1].strip("[]").replace(",", "x")
    data = [f"data.sources.{i}.path={Path(args.data) / sub}" for i, sub in enumerate(args.sources.split(","))]
    return load_recipe(args.recipe, [*data, *extra, *args.set, f"name={name}", f"runs_dir={args.out / 'runs'}",
                                     f"data.prepared={args.out / 'prepared' / grid}",
                                     "train.steps=1000000", "encoder_train.steps=1000000",  # the clock ends them
                                     "train.val_every=0", "encoder_train.val_every=0",
                                     f"train.ckpt_every={args.ckpt_every}", f"encoder_train.ckpt_every={args.ckpt_every}"])


def rungs_of(args: argparse.Namespace) -> list[float]:
    """Stage-2 budgets at which each configuration is scored: ``--rungs``, or the one budget left
    by ``--seconds`` after stage 1."""
    if args.rungs:
        return sorted(float(r) for r in args.rungs.split(",") if r)
    return [args.seconds * (1 - args.encoder_fraction)]


def result_path(args: argparse.Namespace, name: str, rung: float) -> Path:
    tag = "" if not args.rungs else f"@{rung:g}"
    return args.out / "results" / f"{name}{tag}.json"


def adopt_encoder(recipe: Recipe, source: Path) -> dict[str, Any]:
    """Use the stage 1 trained in run folder ``source`` (``cdiff pretrain-encoder``) instead of training
    one: configurations that differ only in their U-Net then share the same encoder, as a study of
    the U-Net should. Its training time and steps (from its log) count as the stage-1 budget."""
    import shutil

    src = source / "encoder"
    if not (src / "model.safetensors").is_file():
        raise SystemExit(f"--encoder-from {source}: no {src}/model.safetensors (run `cdiff pretrain-encoder`)")
    config = json.loads((src / "config.json").read_text())
    theirs = config["recipe"]
    mine = recipe.model_dump(mode="json")
    for section, key in (("encoder", "arch"), ("encoder", "z_dim"), ("data", "size"), ("data", "channels")):
        if theirs.get(section, {}).get(key) != mine[section][key]:
            raise SystemExit(f"--encoder-from {source}: its {section}.{key} is {theirs.get(section, {}).get(key)!r}, "
                             f"this configuration's {mine[section][key]!r}")
    dst = recipe.run_dir / "encoder"
    if not (dst / "model.safetensors").is_file():
        dst.mkdir(parents=True, exist_ok=True)
        for f in ("config.json", "log.csv", "log.jsonl", "model.safetensors"):
            if (src / f).is_file():
                shutil.copy2(src / f, dst / f)
    log = src / "log.jsonl"
    entries = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.is_file() else []
    last = next((e for e in reversed(entries) if e.get("split") == "train"), {})
    return {"seconds": float(last.get("seconds", 0.0)), "clock": "wall (its own run)", "from": str(source),
            "steps": int(last.get("step", config["training"]["steps"])),
            "images_per_s": float(last.get("images_per_s", 0.0)), "finished": True}


def run_config(args: argparse.Namespace, name: str) -> list[dict[str, Any]]:
    """Prepare (once per grid), train stage 1 (or adopt ``--encoder-from``), then train stage 2 up to
    each rung in turn, scoring on validation at each: one result per rung."""
    import torch

    from cdiff_cli.data.prepare import prepare
    from cdiff_cli.infer.model import build_networks
    from cdiff_cli.train.distributed import resolve_device

    rungs = rungs_of(args)
    paths = [result_path(args, name, r) for r in rungs]
    if all(p.is_file() for p in paths):
        return [json.loads(p.read_text()) for p in paths]
    recipe = recipe_for(args, name)
    if not (Path(recipe.data.prepared) / "splits.json").is_file():
        prepare(recipe)
    t0 = time.perf_counter()
    if args.encoder_from is not None:
        enc = adopt_encoder(recipe, args.encoder_from)
    else:
        enc = train_for("encoder", recipe, args.seconds * args.encoder_fraction, args.device, args.clock)
    device = resolve_device(args.device)
    flops = {k: training_flops_per_image(recipe, k, device) for k in ("encoder", "diffusion")}
    unet, encoder = build_networks(recipe)
    params = {"unet_m": sum(p.numel() for p in unet.parameters()) / 1e6,
              "encoder_m": sum(p.numel() for p in encoder.parameters()) / 1e6 if encoder is not None else 0.0}
    results = []
    for rung, done in zip(rungs, paths):
        if done.is_file():
            results.append(json.loads(done.read_text()))
            continue
        diff = train_for("diffusion", recipe, rung, args.device, args.clock)
        compute = (flops["encoder"] * enc["steps"] * recipe.encoder_train.batch_size
                   + flops["diffusion"] * diff["steps"] * recipe.train.batch_size * recipe.train.grad_accum)
        result = {"name": name, "rung_s": rung, "grid": list(recipe.data.size), "width": recipe.unet.base_channels,
                  "res_blocks": recipe.unet.num_res_blocks, "encoder": recipe.encoder.arch, **params,
                  "encoder_stage": enc, "diffusion_stage": diff, "flops_per_image": flops,
                  "train_pflops": compute / 1e15, "threads": torch.get_num_threads(),
                  "val": validation_scores(recipe, args.device), "wall_s": round(time.perf_counter() - t0, 1)}
        write_json(done, result)
        results.append(result)
    return results


def _fmt(v: Any, scale: float = 1.0, digits: int = 2) -> str:
    return "-" if v is None else f"{v * scale:.{digits}f}"


def paired_against(results: list[dict[str, Any]], key: str) -> list[tuple[str, float, int, float, float, float]]:
    """For every result, its per-volume ``key`` (``<source>_auprc`` or ``healthy_l1``) against the
    FIRST configuration's at the same rung, paired volume by volume: (name, rung, volumes, mean
    difference, 95 % bootstrap interval). One training seed: the interval covers the volumes only."""
    from cdiff_cli.eval.paired import compare

    suffix = "/l1" if key == "healthy_l1" else "/auprc"
    source = "" if key == "healthy_l1" else key.removesuffix("_auprc") + "/"

    def values(r: dict[str, Any]) -> dict[tuple[int, str], float]:  # one seed: (0, case)
        return {(0, c): v for c, v in r["val"].get("cases", {}).items()
                if c.startswith(source) and c.endswith(suffix) and np.isfinite(v)}

    first = results[0]["name"]
    base = {r.get("rung_s"): values(r) for r in results if r["name"] == first}
    rows = []
    for r in results:
        if r["name"] == first or r.get("rung_s") not in base:
            continue
        c = compare(values(r), base[r.get("rung_s")])
        if c is not None and c["volumes"] >= 2:
            rows.append((r["name"], r.get("rung_s") or 0.0, c["volumes"], c["diff"], *c["ci"]))
    return rows


def write_report(args: argparse.Namespace, results: list[dict[str, Any]], command: str) -> None:
    lesion_keys = sorted({k for r in results for k in r["val"] if k.endswith("_auprc")})
    u = "steps" if args.clock == "steps" else "s"  # the budget's unit
    head = ["config", f"stage-2 budget {u}", "grid", "U-Net M", "encoder", "stage-1 steps", "stage-2 steps",
            "train PFLOP", "val healthy l1 (x1e3)", *[f"val {k.removesuffix('_auprc')} AUPRC %" for k in lesion_keys]]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        rows.append("| " + " | ".join([
            r["name"], _fmt(r.get("rung_s"), 1, 0), "x".join(map(str, r["grid"])), _fmt(r["unet_m"]), r["encoder"],
            str(r["encoder_stage"]["steps"]), str(r["diffusion_stage"]["steps"]), _fmt(r["train_pflops"], 1, 3),
            _fmt(r["val"]["healthy_l1"], 1e3), *[_fmt(r["val"].get(k), 100) for k in lesion_keys]]) + " |")
    last = max(r.get("rung_s") or 0.0 for r in results)
    final = [r for r in results if (r.get("rung_s") or 0.0) == last]
    best = max(final, key=lambda r: (r["val"].get(lesion_keys[0]) or 0.0) if lesion_keys else -r["val"]["healthy_l1"])
    paired = []
    for key in [*lesion_keys, "healthy_l1"]:
        scale = 1e3 if key == "healthy_l1" else 100
        unit = "l1 x1e3" if key == "healthy_l1" else "AUPRC points"
        for name, rung, n, mean, lo, hi in paired_against(results, key):
            paired.append(f"| {name} | {rung:.0f} | {key} | {n} | {mean * scale:+.2f} [{lo * scale:+.2f}, "
                          f"{hi * scale:+.2f}] {unit} |")
    paired_text = [] if not paired else [
        f"Paired with **{results[0]['name']}** at the same budget, volume by volume (mean difference and its "
        "95 % bootstrap interval over the validation volumes, 10 000 resamples; one training seed per "
        "configuration, so the interval does not include the spread between trainings):", "",
        f"| config | stage-2 budget {u} | score | volumes | difference |", "|---|---|---|---|---|", *paired, ""]
    encoder_text = (f"Stage 1 is not trained here: every configuration uses the encoder of `{args.encoder_from}` "
                    "(its training counts in the compute). " if args.encoder_from is not None else
                    f"Stage 1 trains for {args.seconds * args.encoder_fraction:g} {u}. ")
    budget_text = (f"stage 2 for {', '.join(f'{r:g}' for r in rungs_of(args))} {u} (scored after each)"
                   if args.rungs else f"both stages for {args.seconds:g} {u} ({args.encoder_fraction:.0%} for stage 1)")
    text = "\n".join([
        "# Scaling study: the network for a fixed training budget", "",
        f"Every configuration trained {budget_text}, counted in "
        f"{CLOCK_WORDS[args.clock]}, on {results[0]['threads']} "
        f"torch thread(s), device `{args.device}`. {encoder_text}Scored on the validation split of fold 0 "
        "(healthy l1 of the raw reconstruction; per-volume AUPRC of the post-processed map). Compute: "
        "training FLOPs counted by `torch.utils.flop_counter` per image, times the images seen.", "",
        "```", command, "```", "", *rows, "",
        f"Best validation AUPRC ({lesion_keys[0] if lesion_keys else 'healthy l1'}) at the largest budget "
        f"({last:g} {u}): **{best['name']}**.", "", *paired_text,
        f"![l1 and AUPRC against compute]({args.report.with_suffix('.png').name})", ""])
    write_text(args.report, text)
    plot(results, lesion_keys, args.report.with_suffix(".png"))


def plot(results: list[dict[str, Any]], lesion_keys: list[str], path: Path) -> None:
    """l1 and the first lesion set's AUPRC against compute: one line per configuration (its rungs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    names = list(dict.fromkeys(r["name"] for r in results))
    for name in names:
        mine = sorted((r for r in results if r["name"] == name), key=lambda r: r["train_pflops"])
        x = [max(r["train_pflops"], 1e-9) for r in mine]
        axes[0].plot(x, [1e3 * r["val"]["healthy_l1"] for r in mine], "o-", label=name)
        if lesion_keys:
            axes[1].plot(x, [100 * (r["val"].get(lesion_keys[0]) or 0.0) for r in mine], "o-", label=name)
    axes[0].set_ylabel("validation healthy l1 (x1e3, lower is better)")
    axes[1].set_ylabel(f"validation {lesion_keys[0].removesuffix('_auprc') if lesion_keys else 'lesion'} "
                       "AUPRC % (higher is better)")
    from matplotlib.ticker import FormatStrFormatter, LogLocator

    for ax in axes:
        ax.set_xscale("log")
        ax.xaxis.set_minor_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))  # readable within one decade
        ax.xaxis.set_minor_formatter(FormatStrFormatter("%g"))
        ax.set_xlabel("training compute (PFLOP, both stages)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


CLOCK_WORDS = {"wall": "wall-clock", "cpu": "the CPU time of its process", "steps": "optimizer steps (not seconds)"}


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "quickstart.yaml")
    ap.add_argument("--data", type=Path, default=Path("data/synthetic"), help="the synthesized benchmark")
    ap.add_argument("--sources", default="IXI,BraTS2021,MSLUB", help="sub-folders of --data, in recipe order")
    ap.add_argument("--configs", default=DEFAULT_CONFIGS)
    ap.add_argument("--seconds", type=float, default=1200.0, help="budget per configuration, both stages")
    ap.add_argument("--clock", choices=list(CLOCK_NAMES), default="wall",
                    help="what --seconds (and --rungs) count: wall-clock, CPU seconds of the process (fair on a "
                    "shared machine), or optimizer steps (the same at any load)")
    ap.add_argument("--encoder-fraction", type=float, default=0.25)
    ap.add_argument("--rungs", default="", help="stage-2 budgets (comma-separated seconds) to score each "
                    "configuration at, training on from one to the next; default: one, what --seconds leaves")
    ap.add_argument("--encoder-from", type=Path, default=None,
                    help="a run folder whose trained stage 1 every configuration uses (same encoder and grid)")
    ap.add_argument("--ckpt-every", type=int, default=200)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--set", action="append", default=[], help="extra recipe override (repeatable)")
    ap.add_argument("--out", type=Path, default=Path("runs/scaling"))
    ap.add_argument("--report", type=Path, default=ROOT / "benchmarks" / "scaling.md")
    args = ap.parse_args(argv)
    names = [n for n in args.configs.split(",") if n]
    for n in names:
        config_overrides(n)  # every name checked before hours of training
    command = "python benchmarks/scaling.py " + " ".join(argv if argv is not None else sys.argv[1:])
    results = []
    for name in names:
        results.extend(run_config(args, name))
        write_report(args, results, command)  # after each: a partial study is readable
        for r in results[-len(rungs_of(args)):]:
            scores = {k: v for k, v in r["val"].items() if k != "cases"}
            print(f"{name} @ {r.get('rung_s', 0):g} s: {json.dumps(scores)}", flush=True)
    return results


if __name__ == "__main__":
    main()
