"""Bundle a trained run as the package's default model (``cdiff_cli/assets/reference``).

Keeps what inference needs (the diffusion folder with the jointly stored encoder, its
config and calibration) plus the recipe, training logs and metrics for the record.
Weights are stored in float16 to keep the package small; they are cast back to float32
when loaded.

    python scripts/bundle_reference.py runs/quickstart
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

from cdiff_cli.fileio import atomic_dir

TARGET = Path(__file__).resolve().parents[1] / "cdiff_cli" / "assets" / "reference"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--out", type=Path, default=TARGET)
    args = ap.parse_args()
    run = args.run_dir
    with atomic_dir(args.out) as tmp:
        (tmp / "diffusion").mkdir()
        weights = load_file(str(run / "diffusion" / "model.safetensors"))
        half = {k: (v.half() if v.is_floating_point() else v) for k, v in weights.items()}
        save_file(half, str(tmp / "diffusion" / "model.safetensors"), metadata={"format": "pt", "dtype": "float16"})
        for name in ("config.json", "calibration.json"):
            shutil.copy(run / "diffusion" / name, tmp / "diffusion" / name)
        shutil.copy(run / "recipe.yaml", tmp / "recipe.yaml")
        (tmp / "logs").mkdir()
        for stage in ("encoder", "diffusion"):
            if (run / stage / "log.csv").is_file():
                shutil.copy(run / stage / "log.csv", tmp / "logs" / f"{stage}_log.csv")
        for sub in ("eval", "localize"):
            for name in ("metrics.json", "metrics.md"):
                if (run / sub / name).is_file():
                    shutil.copy(run / sub / name, tmp / f"{sub}_{name}")
    total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"bundled {run} -> {args.out} ({total / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
