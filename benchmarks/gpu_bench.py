"""The paper-size networks on one GPU: training images/s per speed option, FLOPs, inference latency.

Measures ``recipes/ixi.yaml`` (96x96 slices, the paper's U-Net of 35 M parameters, a ResNet-50
encoder trained jointly) in bf16 autocast:

- training images/s of stage 1 and stage 2 for ``bf16``, ``bf16+channels_last`` and
  ``bf16+compile+channels_last`` (and ``fp32`` for reference), steps taking turns as in
  ``bench_train.py``;
- the model FLOPs of one training step per image (``torch.utils.flop_counter``) and the share
  of the GPU's bf16 peak (``--peak-tflops``, 790 for an H200 measured on dense products) that
  the measured images/s give;
- inference of one 96x96x50 volume at 3 timesteps (``reconstruct_slices``, target < 50 ms) per
  option, and the whole ``Model.anomaly_map`` (with the CPU post-processing), with peak GPU memory.

Every part checks ``--budget-s`` first and is skipped (and says so) when the time is spent.
``--dry`` runs the same code on the CPU with tiny networks in seconds (the test of gpu.sh).

    python benchmarks/gpu_bench.py --out gpu_bench.json [--budget-s 240] [--dry]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train import Variant, build_stage  # noqa: E402
from timed_training import training_flops_per_image  # noqa: E402

from cdiff_cli.config import Recipe, load_recipe  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = ["data.size=[32,32,8]", "unet.base_channels=16", "unet.channel_mult=[1,2]", "unet.num_res_blocks=1",
        "unet.groups=8", "unet.num_heads=2", "unet.head_channels=-1", "unet.time_embed_dim=32",
        "encoder.arch=resnet18", "encoder.z_dim=16", "diffusion.simplex.octaves=3",
        "diffusion.simplex.frequency=16"]


class Clock:
    def __init__(self, budget_s: float) -> None:
        self.t0, self.budget = time.perf_counter(), budget_s

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.t0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def training(recipe: Recipe, device: torch.device, options: list[str], steps: int, warmup: int,
             peak_tflops: float, clock: Clock) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("encoder", "diffusion"):
            if clock.left() < 30:
                rows.append({"stage": kind, "skipped": "time budget spent"})
                continue
            flops = training_flops_per_image(recipe, kind, device)
            base, cfg = build_stage(kind, recipe, Path(tmp))
            variants = []
            for option in options:
                v = Variant(kind, option, torch.get_num_threads(), copy.deepcopy(base), cfg, recipe, device)
                t0 = time.perf_counter()
                for _ in range(warmup):
                    v.step()
                v.compile_s = time.perf_counter() - t0
                print(f"  {kind} {option}: warm-up {v.compile_s:.1f} s", flush=True)
                variants.append(v)
            for _ in range(steps):
                for v in variants:
                    v.times.append(v.step()[0])
            ref = statistics.median(variants[0].times)
            for v in variants:
                s = statistics.median(v.times)
                ips = cfg.batch_size / s
                rows.append({"stage": kind, "option": v.option, "batch": cfg.batch_size, "s_per_step": s,
                             "images_per_s": ips, "speedup_vs_first": ref / s, "warmup_s": v.compile_s,
                             "train_gflop_per_image": flops / 1e9, "tflops": flops * ips / 1e12,
                             "peak_fraction": flops * ips / 1e12 / peak_tflops})
            del variants, base
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def _model_folder(recipe: Recipe, folder: Path) -> Path:
    """A run folder with the recipe's networks at random (seed-0) weights, loaded like a trained one."""
    from cdiff_cli.infer.model import build_networks
    from cdiff_cli.train.checkpoint import write_model_folder

    torch.manual_seed(0)
    unet, encoder = build_networks(recipe)
    weights = {f"unet.{k}": v for k, v in unet.state_dict().items()}
    weights.update({f"encoder.{k}": v for k, v in encoder.state_dict().items()} if encoder is not None else {})
    write_model_folder(folder / "diffusion", weights, {"kind": "diffusion", "recipe": recipe.to_dict()})
    return folder


def inference(recipe: Recipe, device: torch.device, options: list[str], repeats: int, warmup: int,
              clock: Clock) -> list[dict[str, Any]]:
    from cdiff_cli.api import Model
    from cdiff_cli.infer.model import load_model
    from cdiff_cli.infer.reconstruct import reconstruct_slices

    d, (h, w) = recipe.data.size[2], recipe.data.image_hw
    rng = np.random.default_rng(0)
    volume = rng.random((d, h, w), dtype=np.float32)
    mask = np.ones((d, h, w), dtype=np.float32)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = _model_folder(recipe, Path(tmp))
        for option in options:
            if clock.left() < 20:
                rows.append({"option": option, "skipped": "time budget spent"})
                continue
            model = load_model(folder, device)
            if "channels_last" in option:
                model.unet.to(memory_format=torch.channels_last)
                model.encoder.to(memory_format=torch.channels_last)
            if "compile" in option:
                model.unet.compile()
                model.encoder.compile()
            for batch in dict.fromkeys((d, recipe.infer.batch_size)):
                x = volume[:, None]
                t0 = time.perf_counter()
                for _ in range(warmup):
                    reconstruct_slices(model, x, batch_size=batch)
                warm = time.perf_counter() - t0
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                times = []
                for _ in range(repeats):
                    _sync(device)
                    t0 = time.perf_counter()
                    reconstruct_slices(model, x, batch_size=batch)
                    _sync(device)
                    times.append(time.perf_counter() - t0)
                peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
                t0 = time.perf_counter()
                Model(model).anomaly_map(volume, kind="prepared", mask=mask, batch_size=batch)
                rows.append({"option": option, "batch": batch, "timesteps": list(recipe.infer.timesteps),
                             "volume": [d, h, w], "reconstruct_ms": 1e3 * statistics.median(times),
                             "reconstruct_ms_min": 1e3 * min(times), "anomaly_volume_ms": 1e3 * (time.perf_counter() - t0),
                             "warmup_s": warm, "peak_gib": peak})
                print(f"  inference {option} batch {batch}: {rows[-1]['reconstruct_ms']:.1f} ms", flush=True)
            del model
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="the JSON file to write")
    ap.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "ixi.yaml")
    ap.add_argument("--budget-s", type=float, default=240.0)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--peak-tflops", type=float, default=790.0, help="the GPU's dense bf16 rate")
    ap.add_argument("--dry", action="store_true", help="tiny networks on the CPU (seconds): tests the script")
    args = ap.parse_args()
    clock = Clock(args.budget_s)
    if args.dry:
        torch.set_num_threads(1)  # tiny networks: one thread beats contending for a shared CPU
    device = torch.device("cpu" if args.dry else "cuda")
    if not args.dry and not torch.cuda.is_available():
        raise SystemExit("gpu_bench: no CUDA device (use --dry for the CPU check)")
    recipe = load_recipe(args.recipe, TINY + ["train.batch_size=2", "encoder_train.batch_size=2",
                                              "infer.batch_size=8"] if args.dry else [])
    options = ["bf16"] if args.dry else ["fp32", "bf16", "bf16+channels_last", "bf16+compile+channels_last"]
    steps, warmup, repeats = (1, 1, 1) if args.dry else (args.steps, args.warmup, args.repeats)
    torch.backends.cudnn.benchmark = True
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu (dry run)",
        "torch": torch.__version__, "recipe": str(args.recipe), "dry": args.dry, "peak_tflops": args.peak_tflops}
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after each part: a run stopped by its time limit keeps what it measured
        result["seconds"] = round(time.perf_counter() - clock.t0, 1)
        args.out.write_text(json.dumps(result, indent=2) + "\n")

    result["training"], result["inference"] = training(recipe, device, options, steps, warmup, args.peak_tflops,
                                                       clock), []
    save()
    result["inference"] = inference(recipe, device, [o for o in options if o != "fp32"], repeats, warmup, clock)
    save()
    print(summary(result))


def summary(result: dict[str, Any]) -> str:
    lines = [f"{result['device']}, torch {result['torch']}, {result['recipe']}", "",
             f"{'stage':<10} {'option':<28} {'batch':>5} {'img/s':>8} {'vs first':>8} {'warm-up s':>9} "
             f"{'GFLOP/img':>9} {'TFLOP/s':>8} {'of peak':>7}"]
    for r in result["training"]:
        if "skipped" in r:
            lines.append(f"{r['stage']:<10} skipped: {r['skipped']}")
            continue
        lines.append(f"{r['stage']:<10} {r['option']:<28} {r['batch']:>5} {r['images_per_s']:>8.1f} "
                     f"{r['speedup_vs_first']:>7.2f}x {r['warmup_s']:>9.1f} {r['train_gflop_per_image']:>9.1f} "
                     f"{r['tflops']:>8.1f} {100 * r['peak_fraction']:>6.1f}%")
    lines += ["", f"{'inference':<28} {'batch':>5} {'ms / volume':>11} {'with post-proc ms':>17} {'peak GiB':>8}"]
    for r in result["inference"]:
        if "skipped" in r:
            lines.append(f"{r['option']:<28} skipped: {r['skipped']}")
            continue
        peak = f"{r['peak_gib']:.2f}" if r["peak_gib"] is not None else "-"
        lines.append(f"{r['option']:<28} {r['batch']:>5} {r['reconstruct_ms']:>11.1f} "
                     f"{r['anomaly_volume_ms']:>17.1f} {peak:>8}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
