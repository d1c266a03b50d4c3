"""Simplex noise: our batched torch generator (2-D and 3-D) vs the opensimplex package, side by side.

    .venv/bin/python benchmarks/bench_simplex.py [--batch 32] [--size 96] [--ref-samples 8] [--frequency 64]

For each variant (``diffusion.simplex.dims``: 3 = slices of 3-D OpenSimplex as AnoDDPM's
``rand_3d_fixed_T_octaves``; 2 = 2-D octaves as ``rand_2d_octaves`` of the pDDPM/cDDPM code)
it prints, next to the opensimplex reference of the same variant: the std over all pixels of
all fields, a spectrum summary (the power-weighted mean radial frequency in cycles/px, the
share of power below 1/16 cycles/px, and the mean |log ratio| of our radial power spectrum to
the reference's) and the time per batch. Ours draws a fresh 6-octave field for each of the B
samples in one call: the first call builds and caches the geometry, later ones reuse it
(``warm``, median of ``--repeats``), at torch's default thread count and at 1 thread. The
reference is one ``noise2array`` / ``noise3array`` call per sample and octave (numba-compiled
if numba is installed, pure Python otherwise; the line says which), timed on ``--ref-samples``
fields and scaled to the batch.
"""

from __future__ import annotations

import argparse
import importlib.util
import time

import numpy as np
import torch

from cdiff_cli.config import SimplexConfig
from cdiff_cli.diffusion import simplex as S


def reference_field(height: int, width: int, cfg: SimplexConfig, seed: int, t: float) -> np.ndarray:
    """One opensimplex field as AnoDDPM (3-D slice at t) or the pDDPM/cDDPM code (2-D, shifted by t) draws it."""
    import opensimplex

    gen = opensimplex.OpenSimplex(seed)
    y, x = np.arange(height, dtype=np.float64), np.arange(width, dtype=np.float64)
    out = np.zeros((height, width))
    feature, amplitude = cfg.frequency, 1.0
    for _ in range(cfg.octaves):
        if cfg.dims == 3:
            out += amplitude * gen.noise3array(x / feature, y / feature, np.array([t / feature]))[0]
        else:
            out += amplitude * gen.noise2array(x / feature + t, y / feature)
        feature /= 2
        amplitude *= cfg.persistence
    return out


def reference_point_std(cfg: SimplexConfig, points: int = 6000, seeds: int = 4) -> float:
    """The reference's ensemble std from random positions of several permutations: a precise figure
    where a few whole fields are dominated by the sampling noise of the coarsest octave."""
    import opensimplex

    rng = np.random.default_rng(0)
    values = []
    for seed in range(seeds):
        gen = opensimplex.OpenSimplex(seed)
        noise = gen.noise3 if cfg.dims == 3 else gen.noise2
        pts = rng.random((points // seeds, cfg.dims)) * 5000
        out, feature = np.zeros(len(pts)), cfg.frequency
        for k in range(cfg.octaves):
            out += cfg.persistence**k * np.array([noise(*(p / feature)) for p in pts])
            feature /= 2
        values.append(out)
    return float(np.concatenate(values).std())


def radial_spectrum(fields: np.ndarray) -> np.ndarray:
    """Mean power per integer radial frequency bin of (n, H, W) fields (bin r = r / H cycles/px)."""
    f = np.abs(np.fft.fft2(fields - fields.mean((1, 2), keepdims=True))) ** 2
    f = np.fft.fftshift(f, axes=(1, 2)).mean(0)
    h, w = f.shape
    yy, xx = np.indices(f.shape)
    r = np.hypot(yy - h // 2, xx - w // 2).astype(int)
    return (np.bincount(r.ravel(), f.ravel()) / np.bincount(r.ravel()))[: min(h, w) // 2]


def spectrum_summary(spec: np.ndarray, size: int) -> tuple[float, float]:
    """(power-weighted mean radial frequency in cycles/px, share of power below 1/16 cycles/px)."""
    freq = np.arange(len(spec)) / size
    return float((freq * spec).sum() / spec.sum()), float(spec[freq < 1 / 16].sum() / spec.sum())


def time_ours(shape: tuple[int, ...], cfg: SimplexConfig, device: torch.device, threads: int,
              repeats: int) -> tuple[float, float, torch.Tensor]:
    """(first call s with an empty geometry cache, warm median s, the last batch)."""
    torch.set_num_threads(threads)
    S.clear_geometry_cache()
    gen = torch.Generator().manual_seed(0)

    def once() -> tuple[float, torch.Tensor]:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        field = S.simplex_noise(shape, cfg, gen, device=device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0, field

    first, _ = once()
    for _ in range(3 * S.Z_LEVELS * cfg.octaves if cfg.dims == 3 else 2):  # fill the cache (every 3-D level)
        once()
    runs = [once() for _ in range(repeats)]
    return first, float(np.median([r[0] for r in runs])), runs[-1][1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--frequency", type=float, default=64.0, help="feature size of the first octave in px")
    ap.add_argument("--ref-samples", type=int, default=8)
    ap.add_argument("--stat-samples", type=int, default=128, help="fields of ours for the statistics")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    shape = (args.batch, args.size, args.size)
    default_threads = torch.get_num_threads()
    thread_counts = [default_threads] + ([1] if default_threads > 1 and device.type == "cpu" else [])
    numba = importlib.util.find_spec("numba") is not None
    print(f"batch {args.batch} x {args.size} x {args.size}, 6 octaves, persistence 0.8, "
          f"frequency {args.frequency:g} px; "
          f"torch {torch.__version__} on {device}; reference: opensimplex "
          f"({'numba' if numba else 'pure Python, 1 thread'}), {args.ref_samples} fields timed and scaled")
    rows, point_std = [], {}
    for dims in (3, 2):
        cfg = SimplexConfig(dims=dims, frequency=args.frequency)
        rng = np.random.default_rng(dims)
        reference_field(8, 8, cfg, 0, 0.0)  # warm-up (numba compilation, if present)
        t0 = time.perf_counter()
        ref = np.stack([reference_field(args.size, args.size, cfg, int(rng.integers(1 << 31)),
                                        float(rng.integers(1000))) for _ in range(args.ref_samples)])
        t_ref = (time.perf_counter() - t0) * args.batch / args.ref_samples
        timings = {th: time_ours(shape, cfg, device, th, args.repeats) for th in thread_counts}
        torch.set_num_threads(default_threads)
        ours = S.simplex_noise((args.stat_samples, args.size, args.size), cfg, torch.Generator().manual_seed(1),
                               device=device).cpu().double().numpy()
        spec_o, spec_r = radial_spectrum(ours), radial_spectrum(ref)
        logdiff = float(np.abs(np.log(spec_o[1:]) - np.log(spec_r[1:])).mean())
        rows.append((f"ours {dims}-D", ours.std(), *spectrum_summary(spec_o, args.size), logdiff, timings))
        rows.append((f"opensimplex {dims}-D", ref.std(), *spectrum_summary(spec_r, args.size), 0.0, t_ref))
        point_std[dims] = reference_point_std(cfg)
    head = (f"{'noise':<18} {'std':>6} {'mean freq':>9} {'low share':>9} {'|log P ratio|':>13}  "
            + "  ".join(f"{f'{th} thr first / warm ms':>24}" for th in thread_counts))
    print("\n" + head + "\n" + "-" * len(head))
    for name, std, centroid, low, logdiff, timing in rows:
        if isinstance(timing, dict):
            times = "  ".join(f"{f'{1e3 * a:.1f} / {1e3 * b:.1f}':>24}" for a, b, _ in timing.values())
        else:
            times = f"{f'{1e3 * timing:.0f} (1 thread)':>24}"
        print(f"{name:<18} {std:>6.3f} {centroid:>9.4f} {low:>9.3f} {logdiff:>13.3f}  {times}")
    print(f"\nstd ratio ours / opensimplex fields: 3-D {rows[0][1] / rows[1][1]:.3f}, "
          f"2-D {rows[2][1] / rows[3][1]:.3f} "
          f"({args.ref_samples} reference fields: noisy)")
    print(f"opensimplex ensemble std (6000 random points): 3-D {point_std[3]:.3f}, 2-D {point_std[2]:.3f}; "
          f"ours / that: 3-D {rows[0][1] / point_std[3]:.3f}, 2-D {rows[2][1] / point_std[2]:.3f}; "
          f"2-D / 3-D std (ours): {rows[2][1] / rows[0][1]:.3f}")
    for dims, (o, r) in zip((3, 2), ((rows[0], rows[1]), (rows[2], rows[3]))):
        warm = {th: t[1] for th, t in o[5].items()}
        print(f"speed-up over opensimplex, {dims}-D warm: " + ", ".join(f"{r[5] / s:.0f}x at {th} thread(s)"
                                                                     for th, s in warm.items()))


if __name__ == "__main__":
    main()
