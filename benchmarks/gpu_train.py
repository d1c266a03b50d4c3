"""The training part of the prepared GPU run (``gpu.sh``): data, the largest model that comes back, metrics.

``data``: synthesizes the embedded benchmark (one preset) and prepares it on the 2 mm grid
(96x96x50); ``gpu.sh`` runs it in the background, one process per preset, beside the GPU
measurements. ``train``: takes the largest prepared preset that is ready, picks the widest
U-Net (the paper's layout: channel_mult (1, 2, 2), 3 res blocks, middle attention) whose
float16 bundle still comes back (``--max-mib``; the ResNet-18 encoder is frozen in stage 2, so
the bundle stores it once), trains both stages for the seconds left (``timed_training.py``:
the project's own ``train_stage`` with a seconds ``Budget``), evaluates it with
``cdiff_cli.eval.protocol.evaluate`` (fold-0 test split, the reference protocol), bundles it
with ``cdiff_cli.hub.bundle.bundle`` and writes to ``--out``: ``metrics.json`` and the bundle
as ``model.tar.NN`` parts of at most 16 MiB (``cat model.tar.* | tar x`` gives a run folder
that ``cdiff push``, ``cdiff evaluate --model`` and the app read).

``--dry`` does the same on the CPU with the tiny preset and tiny networks, in seconds.

    python benchmarks/gpu_train.py data --work W --preset default
    python benchmarks/gpu_train.py train --work W --out OUT --budget-s 240 [--bench OUT/gpu_bench.json]
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from timed_training import train_for, validation_scores  # noqa: E402

from cdiff_cli.config import Recipe, load_recipe  # noqa: E402
from cdiff_cli.fileio import write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PART = 16 * 2**20  # what comes back: files of at most 16 MiB
WIDTHS = (128, 112, 96, 80, 64, 48, 32)
GPU = ["data.size=[96,96,50]", "diffusion.simplex.frequency=48", "unet.channel_mult=[1,2,2]", "unet.num_res_blocks=3",
       "unet.mid_attention=true", "unet.num_heads=4", "unet.head_channels=64", "unet.time_embed_dim=512",
       "encoder.arch=resnet18", "encoder.trainable_in_diffusion=false", "train.batch_size=32",
       "encoder_train.batch_size=32", "train.ckpt_every=500", "encoder_train.ckpt_every=500"]
DRY = ["data.crop=[160,192,96]", "data.size=[32,32,8]", "data.folds=2", "data.test_fraction=0.25",
       "data.lesion_val_fraction=0.5", "diffusion.simplex.octaves=3", "diffusion.simplex.frequency=16",
       "unet.channel_mult=[1,2]", "unet.num_res_blocks=1", "unet.num_heads=2", "unet.head_channels=-1",
       "unet.time_embed_dim=32", "encoder.arch=resnet18", "encoder.z_dim=16", "encoder.trainable_in_diffusion=false",
       "train.batch_size=4", "encoder_train.batch_size=4", "infer.batch_size=8", "train.ckpt_every=100",
       "encoder_train.ckpt_every=100"]


def recipe_for(work: Path, preset: str, dry: bool, width: int = 16, extra: list[str] | None = None) -> Recipe:
    data = work / f"synthetic-{preset}"
    groups = 32 if width % 32 == 0 else 16 if width % 16 == 0 else 8
    return load_recipe(ROOT / "recipes" / "quickstart.yaml", [
        f"data.sources.0.path={data / 'IXI'}", f"data.sources.1.path={data / 'BraTS2021'}",
        f"data.sources.2.path={data / 'MSLUB'}", f"data.prepared={work / f'prepared-{preset}'}",
        f"runs_dir={work / 'runs'}", f"name=gpu-{preset}", *(DRY if dry else GPU),
        f"unet.base_channels={width}", f"unet.groups={groups}", "train.steps=1000000", "encoder_train.steps=1000000",
        "train.val_every=0", "encoder_train.val_every=0", *(extra or [])])


def make_data(work: Path, preset: str, dry: bool, synthesize_too: bool = True) -> None:
    from cdiff_cli.data.prepare import prepare
    from cdiff_cli.synthetic.benchmark import synthesize

    t0 = time.perf_counter()
    if synthesize_too:
        synthesize(work / f"synthetic-{preset}", seed=0, preset=preset)  # type: ignore[arg-type]
    t1 = time.perf_counter()
    prepare(recipe_for(work, preset, dry))
    write_json(work / f"ready-{preset}.json", {"synthesize_s": round(t1 - t0, 1),
                                               "prepare_s": round(time.perf_counter() - t1, 1)})


def wait_for_data(work: Path, presets: list[str], seconds: float) -> str:
    """The first preset (largest first) whose data is ready; waits up to ``seconds`` for any."""
    deadline = time.monotonic() + seconds
    while True:
        ready = [p for p in presets if (work / f"ready-{p}.json").is_file()]
        if ready:
            return ready[0]
        failed = [p for p in presets if (work / f"failed-{p}").exists()]
        if len(failed) == len(presets):
            raise SystemExit(f"gpu_train: preparing the data failed for {failed} (see {work}/data-*.log)")
        if time.monotonic() > deadline:
            raise SystemExit(f"gpu_train: no prepared data in {work} after {seconds:.0f} s (presets {presets})")
        time.sleep(2)


def fp16_mib(recipe: Recipe) -> float:
    """Size of the float16 bundle's weights: the U-Net plus the (frozen, stored once) encoder."""
    from cdiff_cli.infer.model import build_networks

    unet, encoder = build_networks(recipe)
    n = sum(p.numel() for p in unet.state_dict().values()) + sum(p.numel() for p in encoder.state_dict().values())
    return 2 * n / 2**20


def pick_width(work: Path, preset: str, dry: bool, max_mib: float) -> tuple[int, float]:
    for width in (WIDTHS if not dry else (16, 8)):
        size = fp16_mib(recipe_for(work, preset, dry, width))
        if size <= max_mib:
            return width, size
    raise SystemExit(f"gpu_train: even the narrowest U-Net exceeds --max-mib {max_mib}")


def speed_overrides(bench: Path | None, seconds: float) -> tuple[list[str], str]:
    """The option that trains the most images in ``seconds`` by gpu_bench's stage-2 numbers (warm-up
    included); bf16 + channels_last without them."""
    rows = []
    if bench is not None and bench.is_file():
        rows = [r for r in json.loads(bench.read_text()).get("training", [])
                if r.get("stage") == "diffusion" and "images_per_s" in r and "bf16" in r["option"]]
    best = max(rows, key=lambda r: r["images_per_s"] * max(seconds - r["warmup_s"], 0), default=None)
    option = best["option"] if best else "bf16+channels_last"
    over = [f"{sec}.channels_last={'channels_last' in option}" for sec in ("train", "encoder_train")]
    over += [f"train.compile={'compile' in option}"]
    return over, option


def pack(folder: Path, out: Path) -> list[str]:
    """``folder`` as an uncompressed tar (float16 weights do not compress) in parts of at most 16 MiB."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(folder, arcname=folder.name)
    data = buf.getvalue()
    names = []
    for i in range(math.ceil(len(data) / PART)):
        name = f"model.tar.{i:02d}"
        (out / name).write_bytes(data[i * PART:(i + 1) * PART])
        names.append(name)
    return names


def train(args: argparse.Namespace) -> dict[str, Any]:
    from cdiff_cli.eval.protocol import evaluate
    from cdiff_cli.hub.bundle import bundle

    t0 = time.perf_counter()
    presets = args.presets.split(",")
    preset = wait_for_data(args.work, presets, args.budget_s / 3)
    width, mib = pick_width(args.work, preset, args.dry, args.max_mib)
    eval_reserve = 10.0 if args.dry else 75.0  # evaluation, bundling and packing
    train_s = args.budget_s - (time.perf_counter() - t0) - eval_reserve
    if train_s < (4 if args.dry else 30):
        raise SystemExit(f"gpu_train: only {train_s:.0f} s left to train; nothing trained")
    speed, option = speed_overrides(args.bench, train_s * (1 - args.encoder_fraction))
    recipe = recipe_for(args.work, preset, args.dry, width, speed)
    device = "cpu" if args.dry else "auto"
    stages = {"encoder": train_for("encoder", recipe, train_s * args.encoder_fraction, device)}
    stages["diffusion"] = train_for("diffusion", recipe, train_s * (1 - args.encoder_fraction), device)
    metrics = evaluate(recipe, str(recipe.run_dir), None, device)["metrics"]
    bundle_dir = args.work / f"cdiff-gpu-{preset}-w{width}"
    bundle(recipe.run_dir, bundle_dir, max_mb=args.max_mib * 2**20 / 1e6 + 1)
    parts = pack(bundle_dir, args.out)
    summary = {"preset": preset, "data": json.loads((args.work / f"ready-{preset}.json").read_text()),
               "unet_width": width, "bundle_weights_mib": round(mib, 1), "speed_option": option,
               "stages": stages, "val": validation_scores(recipe, device),
               "test": {k: metrics[k] for k in ("sets", "healthy", "threshold_search", "timesteps")},
               "parts": parts, "unpack": "cat model.tar.* | tar x", "seconds": round(time.perf_counter() - t0, 1),
               "recipe": recipe.to_dict()}
    write_json(args.out / "metrics.json", summary)
    print(json.dumps({k: summary[k] for k in ("preset", "unet_width", "speed_option", "stages", "val", "parts",
                                              "seconds")}, indent=1))
    return summary


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("data")
    d.add_argument("--work", type=Path, required=True)
    d.add_argument("--preset", default="default")
    d.add_argument("--dry", action="store_true")
    d.add_argument("--prepare-only", action="store_true", help="WORK/synthetic-PRESET exists: prepare it only")
    t = sub.add_parser("train")
    t.add_argument("--work", type=Path, required=True)
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--presets", default="default,small", help="preferred first; the first ready one is used")
    t.add_argument("--budget-s", type=float, default=240.0, help="everything: waiting, training, evaluation")
    t.add_argument("--encoder-fraction", type=float, default=0.2)
    t.add_argument("--max-mib", type=float, default=56.0, help="float16 weights that may come back")
    t.add_argument("--bench", type=Path, default=None, help="gpu_bench.py's JSON: picks the speed option")
    t.add_argument("--dry", action="store_true")
    args = ap.parse_args(argv)
    if args.dry:
        import torch

        torch.set_num_threads(1)
    if args.cmd == "data":
        make_data(args.work, args.preset, args.dry, synthesize_too=not args.prepare_only)
    else:
        args.out.mkdir(parents=True, exist_ok=True)
        train(args)


if __name__ == "__main__":
    main()
