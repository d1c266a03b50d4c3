"""The bundled reference model is a complete run folder (push dry-run, load), and
``cdiff_cli.hub.bundle`` (``scripts/bundle_reference.py``) makes such bundles: a frozen encoder
stored once, float16."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from cdiff_cli.errors import CdiffError
from cdiff_cli.hub import push
from cdiff_cli.hub.bundle import bundle
from cdiff_cli.infer.model import REFERENCE, load_model
from cdiff_cli.train.checkpoint import load_weights
from conftest import make_model_folder, tiny_recipe_dict

CPU = torch.device("cpu")


def _keys(path: Path) -> list[str]:
    with safe_open(str(path), framework="pt") as f:
        return list(f.keys())


def _same_encoder(model: object, path: Path) -> bool:
    stored = load_weights(path)
    own = model.encoder.state_dict()  # type: ignore[attr-defined]
    return set(own) == set(stored) and all(torch.equal(own[k], stored[k].to(own[k].dtype)) for k in own)


def test_bundled_reference_pushes_in_dry_run_and_loads(tmp_path: Path) -> None:
    files = dict(push.dry_run(REFERENCE, "x/y", tmp_path / "upload"))
    assert {"encoder/model.safetensors", "encoder/config.json", "diffusion/model.safetensors",
            "diffusion/config.json", "recipe.yaml", "README.md", "metrics.json"} <= set(files)
    assert sum(p.stat().st_size for p in REFERENCE.rglob("*") if p.is_file()) < 25e6
    model = load_model(None, CPU)
    assert model.folder == REFERENCE / "diffusion"
    assert _same_encoder(model, REFERENCE / "encoder" / "model.safetensors")
    again = load_model(tmp_path / "upload", CPU)  # the upload folder loads as the bundle does
    assert all(torch.equal(a, b) for a, b in zip(again.unet.state_dict().values(), model.unet.state_dict().values()))


@pytest.fixture
def frozen_run(tmp_path: Path) -> Path:
    raw = tiny_recipe_dict(encoder={"arch": "resnet18", "z_dim": 16, "trainable_in_diffusion": False})
    run = make_model_folder(tmp_path / "runs" / "tiny", raw)
    (run / "eval").mkdir()
    (run / "eval" / "metrics.json").write_text(json.dumps({"sets": {"brats": {"dice": 0.5, "n": 2}}, "folds": 1}))
    (run / "encoder" / "log.csv").write_text("step,split,loss,lr,images_per_s,seconds\n4,train,1.0,,,\n")
    return run


def test_bundle_stores_a_frozen_encoder_once_and_loads(frozen_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    bundle(frozen_run, out, max_mb=25)
    assert not any(k.startswith("encoder.") for k in _keys(out / "diffusion" / "model.safetensors"))
    assert (out / "eval" / "metrics.json").is_file() and (out / "encoder" / "log.csv").is_file()
    model = load_model(out, CPU)
    assert _same_encoder(model, out / "encoder" / "model.safetensors")
    original = load_weights(frozen_run / "encoder" / "model.safetensors")
    assert all(torch.equal(v, original[k].half().float()) for k, v in model.encoder.state_dict().items()
               if v.is_floating_point())
    push.dry_run(out, "x/y", tmp_path / "upload")


def test_bundle_recovers_a_frozen_encoder_from_an_older_bundle(frozen_run: Path, tmp_path: Path) -> None:
    shutil.rmtree(frozen_run / "encoder")  # the older layout: the encoder only inside diffusion/
    out = tmp_path / "bundle"
    bundle(frozen_run, out, max_mb=25)
    cfg = json.loads((out / "encoder" / "config.json").read_text())
    assert cfg["kind"] == "encoder" and "frozen" in cfg["training"]["recovered_from"]
    load_model(out, CPU)


def test_bundle_refuses_what_it_cannot_complete(tmp_path: Path, frozen_run: Path) -> None:
    trained = make_model_folder(tmp_path / "runs" / "trained")
    shutil.rmtree(trained / "encoder")
    with pytest.raises(CdiffError, match="not recoverable"):
        bundle(trained, tmp_path / "b1", max_mb=25)
    with pytest.raises(CdiffError, match="above --max-mb"):
        bundle(frozen_run, tmp_path / "b2", max_mb=0.01)
    assert not (tmp_path / "b1").exists() and not (tmp_path / "b2").exists()


def test_the_apps_example_slice_shows_the_bundled_model_boxing_its_tumour() -> None:
    """examples/: an axial T2 slice of an unseen synthetic brain (benchmarks/bench_app_slices.py,
    seed 1, BraTS2021_00004 z 85) whose tumour a user can see; through the app's own session the
    bundled model's first (largest) box lies on it."""
    from cdiff_cli.app.session import Session
    from cdiff_cli.eval.detection import box_iou

    example = Path(__file__).resolve().parents[1] / "examples" / "tumour_unseen_brain_t2_axial.png"
    gold = (75, 52, 68, 66)  # x, y, width, height of the tumour in the 240 x 240 PNG
    session = Session(str(REFERENCE), device="cpu")
    threshold, how = session.threshold(0.5, calibrated=True)
    boxes = session.render(session.analyze(str(example)), 0, threshold, 5).boxes
    assert how == "calibrated" and boxes
    b = boxes[0]
    assert box_iou((b.x, b.y, b.width, b.height), gold, inclusive=False) >= 0.5
