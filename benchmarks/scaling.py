"""Scaling study: which network is best for a fixed training budget (issue: the bundled model).

Every configuration (slice grid, U-Net width, res blocks per level, encoder) is the base recipe
plus a few overrides; each trains both stages for the SAME budget (``--seconds`` of wall-clock, or of
the process's CPU time with ``--clock cpu``, fair on a shared machine; a share
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
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from timed_training import train_for, training_flops_per_image, validation_scores  # noqa: E402

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
    return load_recipe(args.recipe, [*data, *args.set, *extra, f"name={name}", f"runs_dir={args.out / 'runs'}",
                                     f"data.prepared={args.out / 'prepared' / grid}",
                                     "train.steps=1000000", "encoder_train.steps=1000000",  # the clock ends them
                                     "train.val_every=0", "encoder_train.val_every=0",
                                     f"train.ckpt_every={args.ckpt_every}", f"encoder_train.ckpt_every={args.ckpt_every}"])


def run_config(args: argparse.Namespace, name: str) -> dict[str, Any]:
    """Prepare (once per grid), train both stages for the budget, score on validation."""
    import torch

    from cdiff_cli.data.prepare import prepare
    from cdiff_cli.train.distributed import resolve_device

    done = args.out / "results" / f"{name}.json"
    if done.is_file():
        return json.loads(done.read_text())
    recipe = recipe_for(args, name)
    if not (Path(recipe.data.prepared) / "splits.json").is_file():
        prepare(recipe)
    t0 = time.perf_counter()
    enc = train_for("encoder", recipe, args.seconds * args.encoder_fraction, args.device, args.clock)
    diff = train_for("diffusion", recipe, args.seconds * (1 - args.encoder_fraction), args.device, args.clock)
    device = resolve_device(args.device)
    flops = {k: training_flops_per_image(recipe, k, device) for k in ("encoder", "diffusion")}
    compute = (flops["encoder"] * enc["steps"] * recipe.encoder_train.batch_size
               + flops["diffusion"] * diff["steps"] * recipe.train.batch_size)
    from cdiff_cli.infer.model import build_networks

    unet, encoder = build_networks(recipe)
    params = {"unet_m": sum(p.numel() for p in unet.parameters()) / 1e6,
              "encoder_m": sum(p.numel() for p in encoder.parameters()) / 1e6 if encoder is not None else 0.0}
    result = {"name": name, "grid": list(recipe.data.size), "width": recipe.unet.base_channels,
              "res_blocks": recipe.unet.num_res_blocks, "encoder": recipe.encoder.arch, **params,
              "encoder_stage": enc, "diffusion_stage": diff, "flops_per_image": flops,
              "train_pflops": compute / 1e15, "threads": torch.get_num_threads(),
              "val": validation_scores(recipe, args.device), "wall_s": round(time.perf_counter() - t0, 1)}
    write_json(done, result)
    return result


def _fmt(v: Any, scale: float = 1.0, digits: int = 2) -> str:
    return "-" if v is None else f"{v * scale:.{digits}f}"


def write_report(args: argparse.Namespace, results: list[dict[str, Any]], command: str) -> None:
    lesion_keys = sorted({k for r in results for k in r["val"] if k.endswith("_auprc")})
    head = ["config", "grid", "U-Net M", "encoder", "stage-1 steps", "stage-2 steps", "train PFLOP",
            "val healthy l1 (x1e3)", *[f"val {k.removesuffix('_auprc')} AUPRC %" for k in lesion_keys]]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        rows.append("| " + " | ".join([
            r["name"], "x".join(map(str, r["grid"])), _fmt(r["unet_m"]), r["encoder"],
            str(r["encoder_stage"]["steps"]), str(r["diffusion_stage"]["steps"]), _fmt(r["train_pflops"], 1, 3),
            _fmt(r["val"]["healthy_l1"], 1e3), *[_fmt(r["val"].get(k), 100) for k in lesion_keys]]) + " |")
    best = max(results, key=lambda r: (r["val"].get(lesion_keys[0]) or 0.0) if lesion_keys else -r["val"]["healthy_l1"])
    text = "\n".join([
        "# Scaling study: the network for a fixed training budget", "",
        f"Every configuration trained both stages for the same "
        f"{'CPU time of its process' if args.clock == 'cpu' else 'wall-clock'}: {args.seconds:g} s "
        f"({args.encoder_fraction:.0%} for stage 1), on {results[0]['threads']} torch thread(s), device "
        f"`{args.device}`; scored on the validation split of fold 0 (healthy l1 of the raw reconstruction; "
        "per-volume AUPRC of the post-processed map). Compute: training FLOPs counted by "
        "`torch.utils.flop_counter` per image, times the images seen.", "",
        "```", command, "```", "", *rows, "",
        f"Best validation AUPRC ({lesion_keys[0] if lesion_keys else 'healthy l1'}) at this budget: "
        f"**{best['name']}**.", "",
        f"![l1 and AUPRC against compute]({args.report.with_suffix('.png').name})", ""])
    write_text(args.report, text)
    plot(results, lesion_keys, args.report.with_suffix(".png"))


def plot(results: list[dict[str, Any]], lesion_keys: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    x = [max(r["train_pflops"], 1e-9) for r in results]
    l1 = [1e3 * r["val"]["healthy_l1"] for r in results]
    axes[0].scatter(x, l1)
    axes[0].set_ylabel("validation healthy l1 (x1e3, lower is better)")
    for key in lesion_keys:
        axes[1].scatter(x, [100 * (r["val"].get(key) or 0.0) for r in results], label=key.removesuffix("_auprc"))
    axes[1].set_ylabel("validation lesion AUPRC % (higher is better)")
    if lesion_keys:
        axes[1].legend()
    first = [100 * (r["val"].get(lesion_keys[0]) or 0.0) if lesion_keys else 0.0 for r in results]
    for ax, ys in ((axes[0], l1), (axes[1], first)):
        ax.set_xscale("log")
        ax.set_xlabel("training compute (PFLOP, both stages)")
        for xi, yi, r in zip(x, ys, results):
            ax.annotate(r["name"], (xi, yi), fontsize=6, xytext=(3, 3), textcoords="offset points")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "quickstart.yaml")
    ap.add_argument("--data", type=Path, default=Path("data/synthetic"), help="the synthesized benchmark")
    ap.add_argument("--sources", default="IXI,BraTS2021,MSLUB", help="sub-folders of --data, in recipe order")
    ap.add_argument("--configs", default=DEFAULT_CONFIGS)
    ap.add_argument("--seconds", type=float, default=1200.0, help="budget per configuration, both stages")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="what --seconds counts: wall-clock, or CPU seconds of the process (fair on a shared machine)")
    ap.add_argument("--encoder-fraction", type=float, default=0.25)
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
        results.append(run_config(args, name))
        write_report(args, results, command)  # after each: a partial study is readable
        print(f"{name}: {json.dumps(results[-1]['val'])}", flush=True)
    return results


if __name__ == "__main__":
    main()
