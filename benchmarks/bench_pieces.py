"""U-Net time per image by images per call on the CPU, and a training step in micro-batches.

Why ``infer/pieces.py`` cuts inference passes into calls of 2^16 pixels, and why
``recipes/reference.yaml`` trains with ``batch_size: 8, grad_accum: 2``: side by side in one
run, random weights (speed does not depend on them), at the default thread count and at 1.

- inference: forward of ``--images`` images in calls of each ``--pieces`` size, ms per image,
  and the speed-up over one call with all of them;
- training: one Adam step of ``--batch`` images (L1 loss, forward + backward) as one call and
  in micro-batches of each ``--micro`` size, seconds per step and the speed-up.

    python benchmarks/bench_pieces.py [--recipes recipes/quickstart.yaml,recipes/reference.yaml]
                                      [--images 192] [--pieces 8,16,32,64,192] [--batch 16] [--micro 16,8,4]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from cdiff_cli.config import load_recipe
from cdiff_cli.infer.model import build_networks


def best_of(fn: Callable[[], None], repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", default="recipes/quickstart.yaml,recipes/reference.yaml")
    ap.add_argument("--images", type=int, default=192, help="images per inference batch (64 slices x 3 t)")
    ap.add_argument("--pieces", default="8,16,32,64,192")
    ap.add_argument("--batch", type=int, default=16, help="images per training step")
    ap.add_argument("--micro", default="16,8,4")
    ap.add_argument("--threads", default=f"{torch.get_num_threads()},1")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    pieces = [int(p) for p in args.pieces.split(",")]
    micros = [int(m) for m in args.micro.split(",")]
    for path in args.recipes.split(","):
        recipe = load_recipe(path, [])
        torch.manual_seed(0)
        net, _ = build_networks(recipe)
        (h, w), n, b = recipe.data.image_hw, args.images, args.batch
        x, t = torch.randn(n, 1, h, w), torch.randint(0, 1000, (n,))
        z = torch.randn(n, recipe.encoder.z_dim)
        for threads in (int(v) for v in args.threads.split(",")):
            torch.set_num_threads(threads)
            net.eval()
            ms = {}
            with torch.inference_mode():
                for p in pieces:
                    ms[p] = 1000 * best_of(lambda p=p: [net(x[i:i + p], t[i:i + p], z[i:i + p])
                                                        for i in range(0, n, p)], args.repeats) / n
            whole = ms[max(pieces)]
            print(f"{path} {h}x{w}, {threads} thread(s), inference ms/image by images per call: "
                  + "  ".join(f"{p}: {ms[p]:.2f} ({whole / ms[p]:.2f}x)" for p in pieces))
            net.train()
            train_net = net.to(memory_format=torch.channels_last)
            opt = torch.optim.Adam(train_net.parameters(), 1e-4)
            xb = x[:b].contiguous(memory_format=torch.channels_last)

            def step(m: int) -> None:
                opt.zero_grad()
                for i in range(0, b, m):
                    loss = (train_net(xb[i:i + m], t[i:i + m], z[i:i + m]) - xb[i:i + m]).abs().mean() * m / b
                    loss.backward()
                opt.step()

            sec = {m: best_of(lambda m=m: step(m), args.repeats + 1) for m in micros}
            print(f"{path} {h}x{w}, {threads} thread(s), training step of {b} (channels_last) by micro-batch: "
                  + "  ".join(f"{m}x{b // m}: {sec[m]:.3f} s ({sec[b] / sec[m]:.2f}x)" if b in sec else
                              f"{m}x{b // m}: {sec[m]:.3f} s" for m in micros))


if __name__ == "__main__":
    main()
