"""Simplex noise: our batched torch generator vs the opensimplex package, side by side.

    .venv/bin/python benchmarks/bench_simplex.py [--batch 32] [--size 96] [--ref-samples 32]

Ours draws a fresh 6-octave field for each of the B samples in one call; the reference is what
AnoDDPM does (``rand_3d_fixed_T_octaves``): ``opensimplex.noise3array`` once per sample per
octave (numba-compiled if numba is installed, pure Python otherwise; the line says which).
``--ref-samples`` < batch times the reference on fewer samples and scales it up (printed).
"""

from __future__ import annotations

import argparse
import importlib.util
import time

import numpy as np
import torch

from cdiff_cli.config import SimplexConfig
from cdiff_cli.diffusion.simplex import simplex_noise


def reference_field(height: int, width: int, cfg: SimplexConfig, seed: int, t: float) -> np.ndarray:
    import opensimplex

    gen = opensimplex.OpenSimplex(seed)
    y, x = np.arange(height, dtype=np.float64), np.arange(width, dtype=np.float64)
    out = np.zeros((height, width))
    feature, amplitude = cfg.frequency, 1.0
    for _ in range(cfg.octaves):
        out += amplitude * gen.noise3array(x / feature, y / feature, np.array([t / feature]))[0]
        feature /= 2
        amplitude *= cfg.persistence
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--ref-samples", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    cfg = SimplexConfig()
    shape = (args.batch, args.size, args.size)
    device = torch.device(args.device)

    gen = torch.Generator().manual_seed(0)
    default_threads = torch.get_num_threads()

    def time_ours(threads: int) -> tuple[float, torch.Tensor]:
        torch.set_num_threads(threads)
        simplex_noise(shape, cfg, gen, device=device)  # warm-up
        times = []
        for _ in range(args.repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            field = simplex_noise(shape, cfg, gen, device=device)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        return float(np.median(times)), field

    t_ours, ours = time_ours(default_threads)
    t_ours1 = time_ours(1)[0] if default_threads > 1 and device.type == "cpu" else None
    torch.set_num_threads(default_threads)

    n_ref = min(args.ref_samples, args.batch)
    rng = np.random.default_rng(0)
    reference_field(8, 8, cfg, 0, 0.0)  # warm-up (numba compilation, if present)
    t0 = time.perf_counter()
    ref = [
        reference_field(args.size, args.size, cfg, int(rng.integers(1 << 31)), float(rng.integers(1000)))
        for _ in range(n_ref)
    ]
    t_ref = (time.perf_counter() - t0) * args.batch / n_ref

    numba = importlib.util.find_spec("numba") is not None
    print(f"batch {args.batch} x {args.size} x {args.size}, {cfg.octaves} octaves, persistence {cfg.persistence}, "
          f"frequency {cfg.frequency:g} px")
    print(f"ours (torch, {device}, {default_threads} threads): {t_ours * 1e3:9.1f} ms per batch "
          f"(median of {args.repeats})")
    if t_ours1 is not None:
        print(f"ours (torch, {device}, 1 thread):   {t_ours1 * 1e3:9.1f} ms per batch")
    scaled = "" if n_ref == args.batch else f", measured on {n_ref} samples and scaled"
    print(f"opensimplex ({'numba' if numba else 'pure Python, 1 thread'}): {t_ref * 1e3:9.1f} ms per batch{scaled}")
    one = f" ({t_ref / t_ours1:.0f}x on 1 thread)" if t_ours1 is not None else ""
    print(f"speed-up: {t_ref / t_ours:.0f}x{one}")
    print(f"std: ours {ours.std().item():.3f}, opensimplex {np.std(np.stack(ref)):.3f}")


if __name__ == "__main__":
    main()
