"""Training throughput of the project's networks under each speed option, side by side.

Builds the real training stages of ``cdiff_cli/train/stages.py`` (``EncoderStage`` and
``DiffusionStage``) and runs complete optimizer steps on random batches, as
``cdiff_cli.train.loop.fit`` does: the stage's ``inputs`` (views / timesteps / noise), forward,
backward, clipping, the optimizer step and the EMA update. Each network is measured as

- ``fp32``: the default;
- ``channels_last``: NHWC memory format (``train.channels_last``);
- ``compile+channels_last``: the ``unet`` / ``encoder`` modules compiled in place (``train.compile``);
- ``bf16``: bf16 autocast (the CUDA default; on a CPU the loop runs fp32);

at each thread count of ``--threads``. All variants are built and warmed up (compiled) first;
the timed steps then take turns, one step of each variant per round, so that a load that
changes during the run slows all of them alike. For the diffusion stages the share of a step
spent drawing the noise is printed too (simplex noise: target <= 5%).

Networks: ``encoder`` and ``diffusion`` of ``--recipe`` (quickstart; its own noise),
``diffusion-3d`` / ``diffusion-2d`` / ``diffusion-gaussian`` (the same stage 2 with 3-D or 2-D
simplex noise, ``diffusion.simplex.dims``, or Gaussian noise as the reference for the noise
share), and ``paper-diffusion``, the stage-2 step of ``recipes/ixi.yaml`` (the paper's U-Net
with its jointly trained ResNet-50) at ``--paper-batch`` slices.

    python benchmarks/bench_train.py [--threads 1,2] [--steps 5] [--paper-batch 4]
        [--nets encoder,diffusion,paper-diffusion] [--options fp32,channels_last,compile+channels_last,bf16]
    python benchmarks/bench_train.py --nets diffusion-3d,diffusion-2d,diffusion-gaussian --options fp32
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cdiff_cli.config import Recipe, TrainConfig, load_recipe
from cdiff_cli.train.checkpoint import save_weights
from cdiff_cli.train.distributed import DistInfo, StepRandom
from cdiff_cli.train.loop import EMA, apply_update, make_optimizer, speed_up
from cdiff_cli.train.stages import DiffusionStage, EncoderStage

ROOT = Path(__file__).resolve().parents[1]
OPTIONS = ("fp32", "channels_last", "compile+channels_last", "bf16")  # the default set; any '+' combination works
TOKENS = ("fp32", "bf16", "channels_last", "compile")


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


@dataclass
class Variant:
    """One (network, option, threads) combination with its own copy of the stage."""

    net_name: str
    option: str
    threads: int
    stage: Any
    cfg: TrainConfig
    recipe: Recipe
    device: torch.device
    times: list[float] = field(default_factory=list)
    noise: list[float] = field(default_factory=list)
    compile_s: float = 0.0

    def __post_init__(self) -> None:
        torch.set_num_threads(self.threads)
        net = self.stage.net.to(self.device).train()
        opts = {"channels_last": "channels_last" in self.option, "compile": "compile" in self.option}
        speed_up(net, self.cfg.model_copy(update=opts))
        self.optimizer = make_optimizer(self.cfg, [p for p in net.parameters() if p.requires_grad])
        self.ema = EMA(net, self.stage.ema_prefixes, self.cfg.ema_decay) if self.cfg.ema_decay > 0 else None
        self.timer = NoiseTimer(self.stage.net.diffusion) if hasattr(self.stage.net, "diffusion") else None
        c, (h, w) = self.recipe.data.channels, self.recipe.data.image_hw
        gen = torch.Generator().manual_seed(0)
        self.batches = [{"image": torch.rand(self.cfg.batch_size, c, h, w, generator=gen)} for _ in range(2)]
        self.step_no = 0

    @property
    def label(self) -> str:
        return f"{self.net_name} {self.option} @{self.threads}"

    def step(self) -> tuple[float, float]:
        """One full optimizer step: (seconds, seconds of noise)."""
        torch.set_num_threads(self.threads)
        net, batch = self.stage.net, self.batches[self.step_no % len(self.batches)]
        before = self.timer.seconds if self.timer else 0.0
        amp = (torch.autocast(self.device.type, dtype=torch.bfloat16) if "bf16" in self.option.split("+")
               else contextlib.nullcontext())
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        rnd = StepRandom(self.recipe.seed, self.step_no, 0, DistInfo(), self.cfg.batch_size, self.device)
        with amp:
            loss, _ = net(**self.stage.inputs(batch, rnd))
        loss.backward()
        apply_update(net, self.optimizer, self.ema, self.cfg.grad_clip)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.step_no += 1
        return time.perf_counter() - t0, (self.timer.seconds - before) if self.timer else 0.0


def build_stage(kind: str, recipe: Recipe, tmp: Path) -> tuple[Any, TrainConfig]:
    """A fresh stage with seed-0 weights (stage 2 reads a random stage-1 encoder written to ``tmp``)."""
    torch.manual_seed(0)
    if kind == "encoder":
        return EncoderStage(recipe, tmp / "encoder"), recipe.encoder_train
    enc_dir = tmp / f"encoder-{recipe.encoder.arch}"
    if not (enc_dir / "model.safetensors").is_file():
        save_weights(enc_dir / "model.safetensors", EncoderStage(recipe, enc_dir).net.encoder.state_dict())
    return DiffusionStage(recipe, tmp / "diffusion", enc_dir), recipe.train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "quickstart.yaml")
    ap.add_argument("--paper-recipe", type=Path, default=ROOT / "recipes" / "ixi.yaml")
    ap.add_argument("--paper-batch", type=int, default=4, help="slices per step of the paper-size network")
    ap.add_argument("--nets", default="encoder,diffusion,paper-diffusion")
    ap.add_argument("--options", default=",".join(OPTIONS))
    ap.add_argument("--threads", default="1,2", help="comma-separated torch thread counts")
    ap.add_argument("--steps", type=int, default=5, help="timed optimizer steps per variant (taking turns)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per variant (the compiling one included)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    threads = [int(t) for t in args.threads.split(",")]
    options = [o for o in args.options.split(",") if o]
    unknown = sorted({tok for o in options for tok in o.split("+")} - set(TOKENS))
    if unknown:
        raise SystemExit(f"unknown --options {unknown}; combine {list(TOKENS)} with '+'")
    quick = load_recipe(args.recipe, [])
    paper = load_recipe(args.paper_recipe, [f"train.batch_size={args.paper_batch}"])
    noise = {"3d": ["diffusion.noise=simplex", "diffusion.simplex.dims=3"],
             "2d": ["diffusion.noise=simplex", "diffusion.simplex.dims=2"], "gaussian": ["diffusion.noise=gaussian"]}
    nets = {"encoder": ("encoder", quick), "diffusion": ("diffusion", quick), "paper-diffusion": ("diffusion", paper),
            **{f"diffusion-{k}": ("diffusion", load_recipe(args.recipe, v)) for k, v in noise.items()}}
    unknown_nets = sorted(set(args.nets.split(",")) - set(nets))
    if unknown_nets:
        raise SystemExit(f"unknown --nets {unknown_nets}; choose from {sorted(nets)}")
    load = os.getloadavg()
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"device {device}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at the start")
    variants: list[Variant] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.nets.split(","):
            kind, recipe = nets[name]
            base, cfg = build_stage(kind, recipe, Path(tmp))
            for n_threads in threads:
                for option in options:
                    v = Variant(name, option, n_threads, copy.deepcopy(base), cfg, recipe, device)
                    t0 = time.perf_counter()
                    for _ in range(args.warmup):
                        v.step()
                    v.compile_s = time.perf_counter() - t0
                    print(f"  warmed up {v.label}: {v.compile_s:.1f} s for {args.warmup} steps", flush=True)
                    variants.append(v)
        for _ in range(args.steps):  # taking turns: one step of every variant per round
            for v in variants:
                dt, noise = v.step()
                v.times.append(dt)
                v.noise.append(noise)
    report(variants, args.steps, args.warmup)
    load = os.getloadavg()
    print(f"\nload average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at the end")


def report(variants: list[Variant], steps: int, warmup: int) -> None:
    print(f"\nmedian of {steps} timed optimizer steps per variant (taking turns) after {warmup} warm-up steps;"
          f" speed-up vs fp32 at the same threads, and vs 1 thread for the same option\n")
    head = (f"{'network':<18} {'option':<22} {'thr':>3} {'batch':>5} {'s/step':>8} {'img/s':>7} {'vs fp32':>7} "
            f"{'vs 1 thr':>8} {'warm-up s':>9} {'noise %':>7}")
    print(head)
    print("-" * len(head))
    med = {(v.net_name, v.option, v.threads): statistics.median(v.times) for v in variants}
    for v in variants:
        s = med[(v.net_name, v.option, v.threads)]
        fp32 = med.get((v.net_name, "fp32", v.threads))
        one = med.get((v.net_name, v.option, 1))
        noise = f"{100 * statistics.median(v.noise) / s:>6.1f}%" if v.timer else f"{'-':>7}"
        print(f"{v.net_name:<18} {v.option:<22} {v.threads:>3} {v.cfg.batch_size:>5} {s:>8.3f} "
              f"{v.cfg.batch_size / s:>7.1f} {f'{fp32 / s:.2f}x' if fp32 else '-':>7} "
              f"{f'{one / s:.2f}x' if one else '-':>8} {v.compile_s:>9.1f} {noise}")


if __name__ == "__main__":
    main()
