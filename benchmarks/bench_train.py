"""Training throughput of a recipe's networks on this machine, and the cost of the noise.

Builds the two real training stages from ``cdiff_cli/train/stages.py`` (``EncoderStage`` and
``DiffusionStage``, so ``EncoderNet`` and ``DiffusionNet`` with the recipe's architecture)
and runs complete optimizer steps on synthetic random batches, as ``cdiff_cli.train.loop.fit``
does: the stage's ``inputs`` (views / timesteps / noise), forward, backward, gradient
clipping, the optimizer step and the EMA update. A few warm-up steps, then N timed steps.

For the diffusion stage, every call of ``diffusion.sample_noise`` inside the step is timed
too, giving the share of a step spent generating noise (simplex noise: target <= 5%), for
3-D and 2-D simplex noise (``diffusion.simplex.dims``). The same diffusion step with Gaussian
noise is measured in the same run as the reference.

    python benchmarks/bench_train.py [--recipe recipes/quickstart.yaml] [--steps 10] [--threads 2]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from cdiff_cli.config import Recipe, load_recipe
from cdiff_cli.train.checkpoint import save_weights
from cdiff_cli.train.distributed import DistInfo, StepRandom
from cdiff_cli.train.loop import EMA, apply_update, autocast_for, make_optimizer
from cdiff_cli.train.stages import DiffusionStage, EncoderStage


class NoiseTimer:
    """Wraps ``diffusion.sample_noise`` of one instance and sums the time spent in it."""

    def __init__(self, diffusion: Any) -> None:
        self.seconds = 0.0
        self._inner = diffusion.sample_noise
        diffusion.sample_noise = self

    def __call__(self, *args: Any, **kw: Any) -> torch.Tensor:
        t0 = time.perf_counter()
        out = self._inner(*args, **kw)
        self.seconds += time.perf_counter() - t0
        return out


def run_stage(stage: Any, cfg: Any, recipe: Recipe, steps: int, warmup: int,
              noise_timer: NoiseTimer | None) -> dict[str, float]:
    """``warmup`` + ``steps`` full optimizer steps; per-step wall times of the timed ones."""
    device = torch.device("cpu")
    net = stage.net.to(device)
    net.train()
    optimizer = make_optimizer(cfg, [p for p in net.parameters() if p.requires_grad])
    ema = EMA(net, stage.ema_prefixes, cfg.ema_decay) if cfg.ema_decay > 0 else None
    c, (h, w) = recipe.data.channels, recipe.data.image_hw
    gen = torch.Generator().manual_seed(0)
    batches = [{"image": torch.rand(cfg.batch_size, c, h, w, generator=gen)} for _ in range(4)]  # (B, C, H, W)
    times, noise = [], []
    for step in range(warmup + steps):
        batch = batches[step % len(batches)]
        before = noise_timer.seconds if noise_timer else 0.0
        t0 = time.perf_counter()
        rnd = StepRandom(recipe.seed, step, 0, DistInfo(), cfg.batch_size, device)
        with autocast_for(device, cfg.amp):
            loss, _ = net(**stage.inputs(batch, rnd))
        loss.backward()
        apply_update(net, optimizer, ema, cfg.grad_clip)
        dt = time.perf_counter() - t0
        if step >= warmup:
            times.append(dt)
            noise.append((noise_timer.seconds - before) if noise_timer else 0.0)
    step_s = statistics.median(times)
    noise_s = statistics.median(noise)
    return {"batch": cfg.batch_size, "step_s": step_s, "images_per_s": cfg.batch_size / step_s,
            "noise_ms": 1e3 * noise_s, "noise_share": noise_s / step_s,
            "params_m": sum(p.numel() for p in net.parameters() if p.requires_grad) / 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", type=Path, default=Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml")
    ap.add_argument("--steps", type=int, default=10, help="timed optimizer steps per stage")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = load_recipe(args.recipe, [])
    print(f"recipe {args.recipe} ({recipe.data.image_hw[0]}x{recipe.data.image_hw[1]} px, {recipe.encoder.arch}, "
          f"U-Net {recipe.unet.base_channels}x{list(recipe.unet.channel_mult)}); torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s), {platform.processor() or platform.machine()}")
    rows: dict[str, dict[str, float]] = {}
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        enc_stage = EncoderStage(recipe, Path(tmp) / "encoder")
        rows[f"encoder ({recipe.encoder.objective})"] = run_stage(enc_stage, recipe.encoder_train, recipe,
                                                                  args.steps, args.warmup, None)
        # stage 2 needs a stage-1 encoder on disk: the (random) one just built
        save_weights(Path(tmp) / "encoder" / "model.safetensors", enc_stage.net.encoder.state_dict())
        variants = {"simplex 3-D": ["diffusion.noise=simplex", "diffusion.simplex.dims=3"],
                    "simplex 2-D": ["diffusion.noise=simplex", "diffusion.simplex.dims=2"],
                    "gaussian": ["diffusion.noise=gaussian"]}
        for noise, extra in variants.items():
            r = load_recipe(args.recipe, extra)
            torch.manual_seed(0)
            stage = DiffusionStage(r, Path(tmp) / "diffusion", Path(tmp) / "encoder")
            timer = NoiseTimer(stage.net.diffusion)
            frozen = "frozen" if not r.encoder.trainable_in_diffusion else "trained"
            rows[f"diffusion ({noise} noise, encoder {frozen})"] = run_stage(stage, r.train, r, args.steps,
                                                                             args.warmup, timer)
    print(f"\nmedian of {args.steps} timed optimizer steps after {args.warmup} warm-up steps\n")
    head = f"{'stage':<48} {'params M':>8} {'batch':>5} {'s/step':>7} {'images/s':>8} {'noise ms':>8} {'noise %':>7}"
    print(head)
    print("-" * len(head))
    for name, r in rows.items():
        noise_cols = (f"{r['noise_ms']:>8.1f} {100 * r['noise_share']:>6.1f}%" if "diffusion" in name
                      else f"{'-':>8} {'-':>7}")
        print(f"{name:<48} {r['params_m']:>8.2f} {r['batch']:>5} {r['step_s']:>7.3f} {r['images_per_s']:>8.1f} "
              f"{noise_cols}")
    print()
    for name, r in rows.items():
        if name.startswith("diffusion (simplex"):
            verdict = "OK" if r["noise_share"] <= 0.05 else "ABOVE TARGET"
            print(f"noise share of a {name}: {100 * r['noise_share']:.1f}% (target <= 5%: {verdict})")


if __name__ == "__main__":
    main()
