"""Shared fixtures: tiny recipes and tiny model folders (random weights, no training), all on CPU."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

# The only clock a test may read: a bound that a working process never reaches, however loaded the
# machine (a wait for a server to answer, a thread to hand over an item, training to log its first
# step); reaching it means a hang, not slowness. Timing claims live in benchmarks/.
HANG_S = 600.0

os.environ.setdefault("CDIFF_PROGRESS", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# hermetic anatomy cache: the tests never see a user's fetched anatomies (MNI152 only, from nilearn)
os.environ["CDIFF_CACHE"] = tempfile.mkdtemp(prefix="cdiff-test-cache-")
atexit.register(shutil.rmtree, os.environ["CDIFF_CACHE"], True)


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny models are dominated by per-op overhead: one thread avoids OpenMP oversubscription
    slowdowns (10x and more) on small shared CI machines."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run_cli(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    """``cdiff ARGS`` in this process, as the console script runs it (user errors: one line, exit 2); its code."""
    import sys

    from cdiff_cli.cli.main import main

    monkeypatch.setattr(sys, "argv", ["cdiff", *args])
    monkeypatch.delenv("CDIFF_DEBUG", raising=False)
    try:
        main()
    except SystemExit as e:
        return int(e.code or 0)
    return 0


@pytest.fixture(scope="module")
def module_tmp(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """``module_tmp(name)``: a fresh folder that lives until the test module ends. Model folders and
    checkpoints are tens of MB each, so a whole run kept in the base temp would need over 10 GB of
    disk; the folders are kept only when a test has failed, for post-mortems."""
    made: list[Path] = []

    def make(name: str) -> Path:
        made.append(tmp_path_factory.mktemp(name))
        return made[-1]

    yield make
    if request.session.testsfailed == 0:
        for folder in made:
            shutil.rmtree(folder, ignore_errors=True)


def tiny_recipe_dict(data_root: Path | str = "data/synthetic", prepared: Path | str = "data/prepared/tiny",
                     runs_dir: Path | str = "runs", **extra: Any) -> dict[str, Any]:
    """A recipe small enough for tests: 32x32x8 volumes, a 16-channel U-Net, a ResNet-18 encoder."""
    root = Path(data_root)
    raw: dict[str, Any] = {
        "name": "tiny",
        "seed": 0,
        "runs_dir": str(runs_dir),
        "data": {
            "sources": [
                {"name": "ixi", "layout": "ixi", "path": str(root / "IXI"), "role": "healthy"},
                {"name": "brats", "layout": "brats", "path": str(root / "BraTS2021"), "role": "lesion"},
            ],
            "prepared": str(prepared),
            "crop": [160, 192, 96],
            "size": [32, 32, 8],
            "folds": 2,
            "test_fraction": 0.25,
            "lesion_val_fraction": 0.5,
        },
        "encoder": {"arch": "resnet18", "z_dim": 16},
        "encoder_train": {"steps": 4, "batch_size": 4, "val_every": 2, "val_batches": 1, "log_every": 1,
                          "ckpt_every": 2, "warmup_steps": 2},
        "unet": {"base_channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1, "groups": 8, "num_heads": 2,
                 "head_channels": -1, "time_embed_dim": 32},
        "diffusion": {"simplex": {"octaves": 3, "frequency": 16}},
        "train": {"steps": 4, "batch_size": 4, "val_every": 2, "val_batches": 1, "log_every": 1, "ckpt_every": 2,
                  "ema_decay": 0.9},
        "infer": {"timesteps": [250, 500], "batch_size": 8},
    }
    for key, value in extra.items():
        raw[key] = value
    return raw


def make_model_folder(run_dir: Path, recipe_dict: dict[str, Any] | None = None, seed: int = 0) -> Path:
    """A run directory with random-weight encoder and diffusion folders, as training writes them."""
    import torch

    from cdiff_cli.config import recipe_from_dict
    from cdiff_cli.infer.model import build_networks
    from cdiff_cli.train.checkpoint import write_model_folder

    recipe = recipe_from_dict(recipe_dict or tiny_recipe_dict())
    torch.manual_seed(seed)
    unet, encoder = build_networks(recipe)
    for p in unet.parameters():  # undo zero-init so the output depends on the input
        if p.dim() > 1 and float(p.detach().abs().sum()) == 0.0:
            torch.nn.init.normal_(p, std=0.02)
    weights = {f"unet.{k}": v for k, v in unet.state_dict().items()}
    config = {"kind": "diffusion", "recipe": recipe.to_dict(), "recipe_hash": recipe.hash()}
    if encoder is not None:
        weights.update({f"encoder.{k}": v for k, v in encoder.state_dict().items()})
        write_model_folder(run_dir / "encoder", {k: v for k, v in encoder.state_dict().items()},
                           {"kind": "encoder", "recipe": recipe.to_dict(), "recipe_hash": recipe.hash()})
    write_model_folder(run_dir / "diffusion", weights, config)
    (run_dir / "recipe.yaml").write_text(recipe.to_yaml())
    return run_dir


@pytest.fixture
def tiny_run(tmp_path: Path) -> Path:
    return make_model_folder(tmp_path / "runs" / "tiny")


@pytest.fixture(scope="session")
def tiny_benchmark(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded synthetic benchmark, tiny preset, generated once per test session."""
    from cdiff_cli.synthetic.benchmark import synthesize

    out = tmp_path_factory.mktemp("bench") / "synthetic"
    synthesize(out, seed=0, preset="tiny")
    return out


@pytest.fixture(scope="session")
def tiny_prepared(tiny_benchmark: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared store of the tiny benchmark and the recipe that made it (``recipe.yaml``)."""
    import yaml

    from cdiff_cli.config import recipe_from_dict
    from cdiff_cli.data.prepare import prepare

    root = tmp_path_factory.mktemp("prepared")
    raw = tiny_recipe_dict(tiny_benchmark, root / "store", root / "runs")
    prepare(recipe_from_dict(raw))
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path
