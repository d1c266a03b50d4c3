"""What seeding the noise per slice costs: one batched draw against one generator per slice.

``reconstruct_slices`` gives every slice its own generator (seeded by its index within its input),
so that an input's maps do not depend on its batch. This times the noise of one CPU batch of the
bundled model (64 slices x 3 noise levels of simplex noise at 96 x 96) both ways, side by side,
after a warm-up that builds the cached grid geometry.

    python benchmarks/bench_slice_noise.py [--slices 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import torch

from cdiff_cli import load_model
from cdiff_cli.diffusion.schedule import SliceNoise


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    model = load_model(device="cpu")
    d, n_t = model.loaded.diffusion, len(model.recipe.infer.timesteps)
    shape = (n_t * args.slices, 1, *model.image_hw)
    def per_slice() -> torch.Tensor:
        return d.sample_noise_per_slice(shape, SliceNoise([torch.Generator().manual_seed(i)
                                                           for i in range(args.slices)], torch.Generator()))

    per_slice()  # warm-up
    timings: dict[str, list[float]] = {"batched (one generator)": [], "per slice (one generator each)": []}
    for r in range(args.repeats):
        t0 = time.perf_counter()
        d.sample_noise(shape, torch.Generator().manual_seed(r))
        timings["batched (one generator)"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        per_slice()
        timings["per slice (one generator each)"].append(time.perf_counter() - t0)
    base = min(timings["batched (one generator)"])
    print(f"noise of {args.slices} slices x {n_t} levels, {model.recipe.diffusion.noise} {model.image_hw}:")
    for name, ts in timings.items():
        print(f"  {name:32s} best {min(ts):.3f} s  ({min(ts) / base:.2f}x)")


if __name__ == "__main__":
    main()
