"""Train the brain-mask network on slices with skull of the training anatomies and measure its Dice.

    python scripts/train_brain_mask.py --seed 0 --out cdiff_cli/assets/brainmask

Renders ``--per-anatomy`` training slices of each anatomy in the cache except the held-out ones
(``synthetic/brainmask.py``: HELD_OUT; Colin27/BrainWeb is never among the anatomies), trains
(``train/brainmask.py``), then renders NOVA-like slices with skull (about 480 px, 8-bit) of the
held-out anatomies (unseen) and of the training anatomies (seen, other subjects) and reports the Dice
of the network's mask (``infer/brain.py``) against the exact brain mask on the images' own pixels.
Writes ``model.safetensors`` and ``train.json`` (settings, loss log, Dice) into ``--out``.
One torch thread; on a 2-core machine about 30 minutes at the defaults.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from cdiff_cli.eval.brain_mask import dice_table
from cdiff_cli.models.brainmask import save_brain_net
from cdiff_cli.synthetic import sources
from cdiff_cli.synthetic.brainmask import HELD_OUT, nova_like_slices, training_slices
from cdiff_cli.train.brainmask import train_brain_net


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("cdiff_cli/assets/brainmask"))
    ap.add_argument("--per-anatomy", type=int, default=400)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--eval-per-anatomy", type=int, default=30)
    ap.add_argument("--data-seed", type=int, default=0, help="seed of the rendered training slices")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    have = [a.id for a in sources.available()[0]]
    train_ids = [a for a in have if a not in HELD_OUT]
    unseen = [a for a in HELD_OUT if a in have]
    if not unseen:
        print("no held-out anatomy in the cache: run `cdiff fetch-anatomy` first", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    data = training_slices(train_ids, args.per_anatomy, seed=args.data_seed)
    print(f"{len(data.images)} training slices of {len(train_ids)} anatomies in {time.perf_counter() - t0:.0f} s",
          flush=True)
    net, history = train_brain_net(data.images, data.masks, steps=args.steps, batch=args.batch, seed=args.seed,
                                   log=lambda s: print(s, flush=True))
    args.out.mkdir(parents=True, exist_ok=True)
    weights = args.out / "model.safetensors"
    info = {"seed": args.seed, "data_seed": args.data_seed, "per_anatomy": args.per_anatomy, "steps": args.steps,
            "batch": args.batch, "train_anatomies": train_ids, "held_out": unseen}
    save_brain_net(net, weights, info)
    rows = dice_table(weights, {"unseen": nova_like_slices(unseen, args.eval_per_anatomy),
                                "seen": nova_like_slices(train_ids, max(1, args.eval_per_anatomy // 3))})
    for name, row in rows.items():
        print(f"{name}: brain-mask network Dice {row['network']['mean']:.4f} (min {row['network']['min']:.4f}), "
              f"intensity foreground {row['foreground']['mean']:.4f} over {row['n']} slices", flush=True)
    doc = {**info, "history": history, "dice": rows, "seconds": round(time.perf_counter() - t0, 1),
           "weights_bytes": weights.stat().st_size}
    (args.out / "train.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
