"""Reliability: one table of bad inputs through the real ``cdiff`` entry point, plus property tests.

Every row runs ``cdiff ARGS`` in-process (``run_cli``) against a fresh copy of a small
dataset, a prepared store and a run directory, and checks the same contract for all of
them: exit code 2, exactly one ``cdiff: error: ...`` line on stderr (no traceback), the
expected message, nothing written (the watched folders are byte-identical afterwards, the
outputs that did not exist still do not), no temporary leftovers, and no pickle ever
unpickled. ``docs/RELIABILITY.md`` lists the rows and the messages.
"""

from __future__ import annotations

import builtins
import gzip
import hashlib
import json
import os
import pickle
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import make_model_folder, tiny_recipe_dict
from test_prepare import SHAPE  # the same tiny synthetic head as the prepare tests
from test_prepare import head as _head
from test_prepare import save as _nii
from test_train import run_cli

ROOT = Path(__file__).resolve().parents[1]
IXI = [f"IXI{100 + i:03d}-HH-{i:04d}-T2" for i in range(4)]
BRATS = [f"BraTS2021_{i:05d}" for i in range(2)]


# --------------------------------------------------------------------------------------
# the world every case starts from: data, a prepared store, a run with a checkpoint


def _png(path: Path, arr: np.ndarray) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def _make_data(root: Path) -> None:
    for i, name in enumerate(IXI):
        img, brain, _ = _head(i)
        _nii(root / "ixi" / f"{name}.nii.gz", img + 30 * (1 - brain))
        _nii(root / "ixi" / "masks" / f"{name}_mask.nii.gz", brain)
    for i, sid in enumerate(BRATS):
        img, _, les = _head(50 + i, lesion=True)
        _nii(root / "brats" / sid / f"{sid}_t2.nii.gz", img)
        _nii(root / "brats" / sid / f"{sid}_seg.nii.gz", les * 2)
    yy, xx = np.mgrid[:48, :40]
    disc = (((yy - 24) / 20) ** 2 + ((xx - 20) / 16) ** 2 < 1) * 180
    for i in range(2):
        _png(root / "slices" / f"slice{i}.png", (disc + 10 * i).astype(np.uint8))


def _raw_recipe(data: Path, prepared: Path, runs: Path) -> dict[str, Any]:
    raw = tiny_recipe_dict(data, prepared, runs)
    raw["data"].update(
        sources=[{"name": "ixi", "layout": "ixi", "path": str(data / "ixi")},
                 {"name": "brats", "layout": "brats", "path": str(data / "brats"), "role": "lesion"}],
        crop=[32, 32, 24], size=[32, 32, 8], spacing=2.0, test_fraction=0.25)
    return raw


@pytest.fixture(scope="module")
def world(module_tmp: Callable[[str], Path]) -> Path:
    """data/, prepared/ (a good store), runs/tiny/ (trained encoder + a diffusion checkpoint at step 1),
    push/tiny/ (a complete random-weight model folder), ddpm/ (a U-Net-only model folder)."""
    from cdiff_cli.config import recipe_from_dict
    from cdiff_cli.data.prepare import prepare
    from cdiff_cli.train.loop import TrainingInterrupted
    from cdiff_cli.train.run import train_stage

    root = module_tmp("world")
    _make_data(root / "data")
    raw = _raw_recipe(root / "data", root / "prepared", root / "runs")
    raw["encoder_train"].update(steps=1, val_every=0)
    raw["train"].update(steps=3, val_every=0, ckpt_every=100)
    raw["encoder"]["trainable_in_diffusion"] = False  # smaller checkpoints: faster copies per case
    recipe = recipe_from_dict(raw)
    prepare(recipe)
    train_stage("encoder", recipe, "cpu")
    shutil.rmtree(recipe.run_dir / "encoder" / "checkpoints")
    with pytest.raises(TrainingInterrupted):
        train_stage("diffusion", recipe, "cpu", stop_after=1)
    make_model_folder(root / "push" / "tiny")
    ddpm = tiny_recipe_dict(method="ddpm")
    ddpm["unet"]["cond_mode"] = "none"
    make_model_folder(root / "ddpm" / "tiny", ddpm)
    (root / "recipe.json").write_text(json.dumps(raw))
    return root


# --------------------------------------------------------------------------------------
# one case = a fresh copy of the world, one thing broken, one command


@dataclass
class Ctx:
    tmp: Path
    raw: dict[str, Any]
    marker: Path  # created if (and only if) a pickle is ever unpickled
    world: Path | None = None
    watch: list[Path] = field(default_factory=list)  # must be byte-identical afterwards
    absent: list[Path] = field(default_factory=list)  # must not exist afterwards

    def need(self, name: str) -> Path:
        """A private copy of the world's ``name`` folder (copied on first use: runs/ is ~100 MB)."""
        if not (self.tmp / name).exists() and self.world is not None:
            shutil.copytree(self.world / name, self.tmp / name)
        return self.tmp / name

    @property
    def data(self) -> Path:
        return self.tmp / "data"

    @property
    def prepared(self) -> Path:
        return self.tmp / "prepared"

    @property
    def run(self) -> Path:
        return self.need("runs") / "tiny"

    @property
    def ckpt(self) -> Path:
        (step,) = (self.run / "diffusion" / "checkpoints").iterdir()
        return step

    def recipe(self, raw: dict[str, Any] | None = None, name: str = "recipe.yaml") -> str:
        path = self.tmp / name
        path.write_text(yaml.safe_dump(raw if raw is not None else self.raw))
        return str(path)

    def pickle_bomb(self, path: Path) -> None:
        """A real pickle whose loading would create ``marker``: proof that nothing unpickles it."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pickle.dumps(_Touch(str(self.marker))))


class _Touch:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (builtins.open, (self.path, "w"))


def _snapshot(root: Path) -> dict[str, str]:
    if not root.exists():
        return {"<absent>": ""}
    if root.is_file():
        return {".": hashlib.sha256(root.read_bytes()).hexdigest()}
    return {p.relative_to(root).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir")
            for p in sorted(root.rglob("*"))}


def _corrupt(path: Path) -> None:
    """Flip bytes inside a safetensors header: the size is plausible, the JSON is not."""
    data = bytearray(path.read_bytes())
    data[8:24] = b"\xff" * 16
    path.write_bytes(bytes(data))


def _gz(path: Path, payload: bytes) -> None:
    path.write_bytes(gzip.compress(payload))


def _bomb_png(path: Path, width: int = 100_000, height: int = 100_000) -> None:
    """A 60-byte PNG whose header claims width x height pixels (a decompression bomb's header)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
                     + chunk(b"IEND", b""))


def _ixi(c: Ctx, i: int = 1) -> Path:
    return c.data / "ixi" / f"{IXI[i]}.nii.gz"


def _brats(c: Ctx, kind: str = "t2", i: int = 1) -> Path:
    return c.data / "brats" / BRATS[i] / f"{BRATS[i]}_{kind}.nii.gz"


def _prepare(c: Ctx) -> list[str]:
    c.watch += [c.prepared, c.data]
    return ["prepare", c.recipe()]


def _prepare_folder(c: Ctx) -> list[str]:
    """prepare a recipe with one ``layout: folder`` source of 2-D images (slices/)."""
    raw = dict(c.raw, data={**c.raw["data"], "sources": [{"name": "slices", "layout": "folder",
                                                           "path": str(c.data / "slices")}]})
    c.watch += [c.prepared]
    c.absent += [c.prepared / "slices"]
    return ["prepare", c.recipe(raw)]


def _diffusion(c: Ctx, *extra: str) -> list[str]:
    c.watch += [c.need("runs"), c.prepared]
    return ["train-diffusion", c.recipe(), "--device", "cpu", *extra]


def _resume(c: Ctx) -> list[str]:
    return _diffusion(c, "--resume")


def _push(c: Ctx, run: Path | None = None) -> list[str]:
    run = run or c.need("push") / "tiny"
    out = c.tmp / "upload"
    c.watch += [c.need("push")]
    c.absent += [out]
    return ["push", str(run), "--repo-id", "alice/cdiff-tiny", "--dry-run", str(out)]


def _step(fn: Callable[[Ctx], Any], then: Callable[[Ctx], list[str]]) -> Callable[[Ctx], list[str]]:
    def setup(c: Ctx) -> list[str]:
        fn(c)
        return then(c)
    return setup


def _set(path: str, value: Any) -> Callable[[Ctx], None]:
    def apply(c: Ctx) -> None:
        node = c.raw
        *head, last = path.split(".")
        for part in head:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[last] = value
    return apply


def _synth(c: Ctx, target: Path, *extra: str) -> list[str]:
    c.watch += [target]
    return ["synthesize", str(target), "--preset", "tiny", *extra]


def _foreign_folder(c: Ctx) -> Path:
    (c.tmp / "mine").mkdir()
    (c.tmp / "mine" / "thesis.tex").write_text("keep me")
    return c.tmp / "mine"


def _arch_mismatch_checkpoint(c: Ctx) -> None:
    """A checkpoint whose state.json matches the recipe but whose weights come from a wider U-Net."""
    import torch
    from safetensors.torch import save_file

    from cdiff_cli.config import recipe_from_dict
    from cdiff_cli.train.stages import DiffusionNet

    wider = json.loads(json.dumps(c.raw))
    wider["unet"]["base_channels"] = 32
    torch.manual_seed(0)
    net = DiffusionNet(recipe_from_dict(wider))
    save_file({f"net.{k}": v.contiguous() for k, v in net.state_dict().items()}, str(c.ckpt / "model.safetensors"))


def _diffusion_weights_as_encoder(c: Ctx) -> None:
    shutil.copyfile(c.need("push") / "tiny" / "diffusion" / "model.safetensors",
                    c.run / "encoder" / "model.safetensors")


# (id, setup -> args, expected message regex)
CASES: list[tuple[str, Callable[[Ctx], list[str]], str]] = [
    # --- prepare: the recipe file -----------------------------------------------------
    ("prepare/recipe-nonexistent", lambda c: ["prepare", str(c.tmp / "nope.yaml")], r"recipe not found: .*nope\.yaml"),
    ("prepare/recipe-is-a-directory", lambda c: ["prepare", str(c.data)], r"recipe is a directory"),
    ("prepare/recipe-empty-file", lambda c: ["prepare", c.recipe({})], r"data: Field required"),
    ("prepare/recipe-binary-junk",
     lambda c: (c.tmp.joinpath("junk.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00\x01"),
                ["prepare", str(c.tmp / "junk.yaml")])[1], r"junk\.yaml is not valid YAML"),
    ("prepare/recipe-not-a-mapping", lambda c: ["prepare", c.recipe([1, 2, 3])], r"must hold a mapping"),
    ("prepare/recipe-unknown-key", _step(lambda c: c.raw["data"].update(sizes=[32, 32, 8]), _prepare),
     r"unknown recipe key 'data\.sizes'; did you mean data\.size\?"),
    ("prepare/recipe-wrong-type", _step(_set("data.size", "large"), _prepare), r"data\.size: .*'large'"),
    ("prepare/recipe-negative-size", _step(_set("data.size", [-32, 32, 8]), _prepare),
     r"data\.crop and data\.size must be positive"),
    ("prepare/override-negative-folds", lambda c: [*_prepare(c), "data.folds=-2"],
     r"data\.folds: Input should be greater than or equal to 1 \(got -2\)"),
    # --- prepare: the data ------------------------------------------------------------
    ("prepare/source-nonexistent", _step(_set("data.sources.0.path", "/nonexistent/ixi"), _prepare),
     r"IXI data folder not found: /nonexistent/ixi"),
    ("prepare/source-is-a-file", _step(lambda c: c.raw["data"]["sources"][0].update(path=str(_ixi(c))), _prepare),
     r"IXI data folder .* is a file, expected a folder"),
    ("prepare/nifti-empty-file", _step(lambda c: _brats(c).write_bytes(b""), _prepare),
     r"image .*BraTS2021_00001_t2\.nii\.gz is empty \(0 bytes\)"),
    ("prepare/nifti-truncated", _step(lambda c: _brats(c).write_bytes(_brats(c).read_bytes()[:2000]), _prepare),
     r"image .*BraTS2021_00001_t2\.nii\.gz is corrupt or truncated"),
    ("prepare/nifti-wrong-magic", _step(lambda c: _gz(_ixi(c), os.urandom(600)), _prepare),
     r"image .*IXI101-HH-0001-T2\.nii\.gz is not a NIfTI file"),
    ("prepare/nifti-is-a-png", _step(lambda c: shutil.copyfile(c.data / "slices" / "slice0.png", _ixi(c)), _prepare),
     r"image .*IXI101-HH-0001-T2\.nii\.gz is (truncated|not a NIfTI)"),
    ("prepare/nifti-2d", _step(lambda c: _nii(_ixi(c), _head(1)[0][:, :, 18]), _prepare),
     r"IXI101-HH-0001-T2\.nii\.gz is 2-D with shape \(40, 48\)"),
    ("prepare/nifti-4d", _step(lambda c: _nii(_ixi(c), np.stack([_head(1)[0]] * 3, -1)), _prepare),
     r"IXI101-HH-0001-T2\.nii\.gz is 4-D with shape \(40, 48, 36, 3\)"),
    ("prepare/nifti-nan-voxels", _step(lambda c: _nii(_ixi(c), np.where(_head(1)[1] > 0, np.nan, 0)
                                                      .astype(np.float32)), _prepare),
     r"IXI101-HH-0001-T2\.nii\.gz has \d+ NaN/Inf voxels"),
    ("prepare/nifti-inf-voxel", _step(lambda c: _nii(_brats(c), np.where(np.arange(SHAPE[0] * SHAPE[1] * SHAPE[2])
                                                                         .reshape(SHAPE) == 77, np.inf,
                                                                         _head(51, True)[0]).astype(np.float32)),
                                      _prepare),
     r"BraTS2021_00001_t2\.nii\.gz has 1 NaN/Inf voxels"),
    ("prepare/nifti-all-zero", _step(lambda c: _nii(_ixi(c), np.zeros(SHAPE, np.float32)), _prepare),
     r"IXI101-HH-0001-T2\.nii\.gz is all zeros"),
    ("prepare/empty-brain-mask",
     _step(lambda c: _nii(c.data / "ixi" / "masks" / f"{IXI[2]}_mask.nii.gz", np.zeros(SHAPE, np.uint8)), _prepare),
     r"brain mask of .*IXI102.* is empty .*IXI102-HH-0002-T2_mask\.nii\.gz"),
    ("prepare/image-seg-shape-mismatch",
     _step(lambda c: _nii(_brats(c, "seg"), np.zeros((40, 48, 30), np.uint8)), _prepare),
     r"BraTS2021_00001_t2\.nii\.gz.*BraTS2021_00001_seg\.nii\.gz|BraTS2021_00001_seg\.nii\.gz.*BraTS2021_00001_t2"),
    ("prepare/folder-decompression-bomb-header", _step(lambda c: _bomb_png(c.data / "slices" / "bomb.png"),
                                                       _prepare_folder),
     r"bomb\.png is (100000x100000 pixels: over the limit|too large to decode safely)"),
    ("prepare/folder-huge-image", _step(lambda c: _png(c.data / "slices" / "wide.png", np.ones((4, 9000), np.uint8)),
                                        _prepare_folder),
     r"wide\.png is 9000x4 pixels: over the limit"),
    ("prepare/folder-truncated-png",
     _step(lambda c: (c.data / "slices" / "slice1.png").write_bytes((c.data / "slices" / "slice0.png")
                                                                    .read_bytes()[:60]), _prepare_folder),
     r"slice1\.png is (corrupt or truncated|a PNG file that cannot be decoded)"),
    ("prepare/folder-empty", _step(lambda c: [p.unlink() for p in (c.data / "slices").iterdir()], _prepare_folder),
     r"no images \(\.bmp, .*\) under .*slices"),
    # --- synthesize -------------------------------------------------------------------
    ("synthesize/out-is-a-file", lambda c: _synth(c, Path(c.recipe())), r"recipe\.yaml exists and is not a folder"),
    ("synthesize/out-is-a-foreign-folder", lambda c: _synth(c, _foreign_folder(c)),
     r"mine is not empty and is not a previous `synthesize` output"),
    ("synthesize/unknown-preset", lambda c: ["synthesize", str(c.tmp / "syn"), "--preset", "huge"],
     r"--preset 'huge': expected tiny, small, default, celeba or celeba-tiny"),
    ("synthesize/negative-seed", lambda c: ["synthesize", str(c.tmp / "syn"), "--preset", "tiny", "--seed", "-1"],
     r"seed must be a non-negative integer, got -1"),
    # --- pretrain-encoder / train-diffusion --------------------------------------------
    ("pretrain-encoder/override-negative-steps",
     lambda c: ["pretrain-encoder", c.recipe(), "encoder_train.steps=-5"],
     r"encoder_train\.steps: Input should be greater than or equal to 1 \(got -5\)"),
    ("pretrain-encoder/override-wrong-type", lambda c: ["pretrain-encoder", c.recipe(), "encoder_train.lr=fast"],
     r"encoder_train\.lr: Input should be a valid number.*'fast'"),
    ("pretrain-encoder/no-prepared-store",
     _step(_set("data.prepared", "/nonexistent/prepared"), lambda c: ["pretrain-encoder", c.recipe()]),
     r"the prepared splits not found: /nonexistent/prepared/splits\.json; run `cdiff prepare <recipe>`"),
    ("pretrain-encoder/store-volumes-truncated",
     _step(lambda c: (c.prepared / "ixi" / "volumes.npy").write_bytes((c.prepared / "ixi" / "volumes.npy")
                                                                     .read_bytes()[:1000]),
           lambda c: ["pretrain-encoder", c.recipe(), "--device", "cpu"]),
     r"prepared store .*ixi: volumes\.npy is corrupt"),
    ("train-diffusion/encoder-missing-file", _step(lambda c: (c.run / "encoder" / "model.safetensors").unlink(),
                                                   _diffusion),
     r"stage-1 encoder not found at .*encoder/model\.safetensors: run `cdiff pretrain-encoder`"),
    ("train-diffusion/encoder-weights-is-a-directory",
     _step(lambda c: ((c.run / "encoder" / "model.safetensors").unlink(),
                      (c.run / "encoder" / "model.safetensors").mkdir()), _diffusion),
     r"stage-1 encoder not found at"),
    ("train-diffusion/encoder-corrupt-safetensors",
     _step(lambda c: _corrupt(c.run / "encoder" / "model.safetensors"), _diffusion),
     r"encoder/model\.safetensors is not a readable safetensors file"),
    ("train-diffusion/encoder-truncated-safetensors",
     _step(lambda c: (c.run / "encoder" / "model.safetensors").write_bytes(
         (c.run / "encoder" / "model.safetensors").read_bytes()[:5000]), _diffusion),
     r"encoder/model\.safetensors is not a readable safetensors file"),
    ("train-diffusion/encoder-is-a-pickle", _step(lambda c: c.pickle_bomb(c.run / "encoder" / "model.safetensors"),
                                                  _diffusion),
     r"encoder/model\.safetensors is not a readable safetensors file"),
    ("train-diffusion/encoder-from-another-architecture", _step(_diffusion_weights_as_encoder, _diffusion),
     r"stage-1 encoder .* does not match the recipe's architecture: .*unexpected tensor"),
    ("train-diffusion/resume-checkpoint-missing-file",
     _step(lambda c: (c.ckpt / "optimizer.safetensors").unlink(), _resume),
     r"weights not found: .*step_0000001/optimizer\.safetensors"),
    ("train-diffusion/resume-checkpoint-bad-state-json",
     _step(lambda c: (c.ckpt / "state.json").write_text("{not json"), _resume),
     r"checkpoint .*step_0000001 is unreadable"),
    ("train-diffusion/resume-checkpoint-corrupt-safetensors",
     _step(lambda c: _corrupt(c.ckpt / "model.safetensors"), _resume),
     r"step_0000001/model\.safetensors is not a readable safetensors file"),
    ("train-diffusion/resume-checkpoint-is-a-pickle", _step(lambda c: c.pickle_bomb(c.ckpt / "model.safetensors"),
                                                            _resume),
     r"step_0000001/model\.safetensors is not a readable safetensors file"),
    ("train-diffusion/resume-checkpoint-from-another-architecture", _step(_arch_mismatch_checkpoint, _resume),
     r"checkpoint .*step_0000001 \(net\) does not match the recipe's architecture: .* has shape"),
    ("train-diffusion/existing-checkpoints-without-resume", _diffusion,
     r"already holds checkpoints \(latest step_0000001\): pass --resume"),
    # --- push (--dry-run: never the network) -------------------------------------------
    ("push/run-dir-nonexistent", lambda c: _push(c, c.need("push") / "nope"), r"run directory not found: .*nope"),
    ("push/run-dir-is-a-file", lambda c: _push(c, Path(c.recipe())), r"run directory .*recipe\.yaml is a file, expected a folder"),
    ("push/missing-config", _step(lambda c: (c.need("push") / "tiny/diffusion/config.json").unlink(), _push),
     r"config\.json"),
    ("push/missing-encoder-config", _step(lambda c: (c.need("push") / "tiny/encoder/config.json").unlink(), _push),
     r"incomplete: missing encoder/config\.json"),
    ("push/corrupt-safetensors", _step(lambda c: _corrupt(c.need("push") / "tiny/diffusion/model.safetensors"), _push),
     r"diffusion/model\.safetensors is not a readable safetensors file"),
    ("push/weights-are-a-pickle", _step(lambda c: c.pickle_bomb(c.need("push") / "tiny/diffusion/model.safetensors"),
                                        _push),
     r"diffusion/model\.safetensors is not a readable safetensors file"),
    ("push/encoder-weights-are-a-pickle",
     _step(lambda c: c.pickle_bomb(c.need("push") / "tiny/encoder/model.safetensors"), _push),
     r"encoder/model\.safetensors is not a readable safetensors file"),
    ("push/weights-from-another-architecture",
     _step(lambda c: shutil.copyfile(c.need("ddpm") / "tiny/diffusion/model.safetensors",
                                     c.need("push") / "tiny/diffusion/model.safetensors"), _push),
     r"holds no 'encoder\.\*' tensors; is it a cdiff model file\?"),
    ("push/dry-run-into-a-foreign-folder", lambda c: [*_push(c)[:-1], str(_foreign_folder(c))],
     r"is a non-empty folder that is not a previous dry run"),
]


@pytest.fixture
def ctx(world: Path, tmp_path: Path) -> Ctx:
    for name in ("data", "prepared"):
        shutil.copytree(world / name, tmp_path / name)
    raw = json.loads((world / "recipe.json").read_text())
    raw = json.loads(json.dumps(raw).replace(str(world), str(tmp_path)))
    return Ctx(tmp_path, raw, tmp_path / "UNPICKLED", world)


def _check_contract(code: int, err: str, pattern: str) -> str:
    lines = err.strip().splitlines()
    assert code == 2, f"exit code {code}, stderr:\n{err}"
    assert "Traceback" not in err
    assert len(lines) == 1, f"expected exactly one line on stderr, got {len(lines)}:\n{err}"
    assert lines[0].startswith("cdiff: error: "), lines[0]
    assert re.search(pattern, lines[0]), f"{pattern!r} not in {lines[0]!r}"
    return lines[0]


@pytest.mark.parametrize("setup, pattern", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(setup: Callable[[Ctx], list[str]], pattern: str, ctx: Ctx,
                   capsys: pytest.CaptureFixture[str]) -> None:
    args = setup(ctx)
    before = {p: _snapshot(p) for p in ctx.watch}
    code, err = run_cli(args, capsys)
    _check_contract(code, err, pattern)
    for path, snap in before.items():
        assert _snapshot(path) == snap, f"{path} changed"
    for path in ctx.absent:
        assert not path.exists(), f"{path} was written"
    leftovers = [p for p in ctx.tmp.rglob("*") if p.name.endswith((".tmp", ".old")) or ".part." in p.name]
    assert not leftovers, f"temporary files left behind: {leftovers}"
    assert not ctx.marker.exists(), "a pickle was unpickled"


def test_the_pickle_in_the_table_would_really_run_code(tmp_path: Path) -> None:
    """The pickle rows are not vacuous: loading that payload with pickle does create the marker."""
    c = Ctx(tmp_path, {}, tmp_path / "UNPICKLED")
    c.pickle_bomb(tmp_path / "model.safetensors")
    pickle.loads((tmp_path / "model.safetensors").read_bytes())  # the point of the test: this payload runs code
    assert c.marker.exists()


@pytest.mark.parametrize("case", ["prepare/nifti-truncated", "prepare/nifti-4d", "prepare/empty-brain-mask"])
def test_failed_first_prepare_leaves_no_store(case: str, ctx: Ctx, capsys: pytest.CaptureFixture[str]) -> None:
    """Without a previous store, a failed prepare leaves none: no source folder, no splits, no temp folders."""
    shutil.rmtree(ctx.prepared)
    setup, pattern = {c[0]: c[1:] for c in CASES}[case]
    code, err = run_cli(setup(ctx), capsys)
    _check_contract(code, err, pattern)
    assert not ctx.prepared.exists() or list(ctx.prepared.iterdir()) == []


def test_on_error_skip_turns_the_same_bad_files_into_a_listed_skip(ctx: Ctx,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """The table's data rows fail by default; ``data.on_error=skip`` prepares the rest and lists them."""
    _brats(ctx).write_bytes(_brats(ctx).read_bytes()[:2000])
    _nii(_ixi(ctx, 2), np.zeros(SHAPE, np.float32))
    code, err = run_cli(["prepare", ctx.recipe(), "data.on_error=skip"], capsys)
    assert code == 0, err
    summary = json.loads((ctx.prepared / "prepare.json").read_text())
    assert {s["subject"] for s in summary["skipped"]} == {"BraTS2021_00001", "IXI102"}


def test_cdiff_debug_shows_the_traceback_of_a_data_error(ctx: Ctx) -> None:
    """The same truncated-volume row, run as a real process, with and without CDIFF_DEBUG=1."""
    _brats(ctx).write_bytes(_brats(ctx).read_bytes()[:2000])
    env = {**os.environ, "CDIFF_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "cdiff_cli", "prepare", ctx.recipe()]
    quiet = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    loud = subprocess.run(cmd, env={**env, "CDIFF_DEBUG": "1"}, capture_output=True, text=True, timeout=120,
                          cwd=ROOT)
    assert quiet.returncode == 2 and len(quiet.stderr.strip().splitlines()) == 1 and "Traceback" not in quiet.stderr
    assert loud.returncode == 1
    assert "Traceback (most recent call last)" in loud.stderr and "DataError" in loud.stderr
    assert "BraTS2021_00001_t2.nii.gz is corrupt or truncated" in loud.stderr


@pytest.mark.parametrize("name", ["../escape.png", "/etc/passwd", "a/../../b.nii.gz", "..\\..\\win.png",
                                  "~/x.npy", "sub/dir/ok.png"])
def test_output_names_cannot_escape_the_output_dir(name: str, tmp_path: Path) -> None:
    from cdiff_cli.fileio import safe_child

    out = tmp_path / "out"
    child = safe_child(out, name)
    assert child.parent == out and child.resolve().is_relative_to(out.resolve())


@pytest.mark.parametrize("name", ["", ".", "..", "a/..", "/"])
def test_unusable_output_names_are_refused(name: str, tmp_path: Path) -> None:
    from cdiff_cli.errors import CdiffError
    from cdiff_cli.fileio import safe_child

    with pytest.raises(CdiffError, match="unusable output name"):
        safe_child(tmp_path, name)


# --------------------------------------------------------------------------------------
# properties: the recipe override parser and the NOVA annotation readers
# (test_config.py and test_nova.py fuzz free text; these fuzz the structured inputs)

_KEYS = ["name", "seed", "data.size", "data.size.0", "data.folds", "data.sources.0.path", "data.sources.5.path",
         "train.steps", "train.lr", "train.betas", "train.betas.1", "unet.channel_mult", "unet.cond_mode",
         "encoder.views.erase_p", "infer.timesteps", "train", "data", "data.sources", "name.sub", "seed.x.y"]
_segment = st.text(st.characters(min_codepoint=33, max_codepoint=0x2FF, blacklist_characters=".="), min_size=1,
                   max_size=8)
_key = st.one_of(st.sampled_from(_KEYS), st.lists(_segment, min_size=1, max_size=4).map(".".join),
                 st.tuples(st.sampled_from(_KEYS), _segment).map(".".join))
_scalar = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                    st.none(), st.text(max_size=12))
_value = st.one_of(_scalar, st.lists(_scalar, max_size=4), st.dictionaries(st.text(max_size=5), _scalar, max_size=3))


def _minimal() -> dict[str, Any]:
    return {"data": {"sources": [{"name": "ixi", "layout": "ixi", "path": "data/IXI"}], "size": [32, 32, 8],
                     "crop": [64, 64, 16]}, "unet": {"base_channels": 16, "groups": 8}}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_key, st.one_of(_value.map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...")
                                  .strip()),
                       st.text(max_size=15)))
def test_structured_overrides_validate_or_fail_with_one_line(key: str, text: str) -> None:
    from cdiff_cli.config import apply_override, recipe_from_dict
    from cdiff_cli.errors import RecipeError

    raw = _minimal()
    try:
        apply_override(raw, f"{key}={text}")
        recipe = recipe_from_dict(raw)
    except RecipeError as e:
        message = str(e)
        assert message and "\n" not in message and "Traceback" not in message
    else:
        assert recipe.to_yaml()  # whatever validates also serialises


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 10**9), st.floats(1e-9, 10.0, allow_nan=False), st.lists(st.integers(1, 4), min_size=1,
                                                                               max_size=4))
def test_valid_overrides_land_exactly_where_they_say(steps: int, lr: float, mult: list[int]) -> None:
    from cdiff_cli.config import apply_override, recipe_from_dict

    raw = _minimal()
    side = 16 * 2 ** len(mult)
    for item in (f"train.steps={steps}", f"train.lr={lr!r}", f"unet.channel_mult={mult}", f"data.size.0={side}",
                 f"data.size.1={side}"):
        apply_override(raw, item)
    recipe = recipe_from_dict(raw)
    assert recipe.train.steps == steps and recipe.train.lr == lr and list(recipe.unet.channel_mult) == mult
    assert recipe.data.size == (side, side, 8)
    untouched = recipe_from_dict(_minimal())
    assert recipe.encoder_train == untouched.encoder_train and recipe.infer == untouched.infer
    assert recipe_from_dict(yaml.safe_load(recipe.to_yaml())) == recipe


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600), st.sampled_from([".csv", ".parquet"]))
def test_random_bytes_as_an_annotation_file_raise_only_dataerror(blob: bytes, suffix: str) -> None:
    from cdiff_cli.data.nova import read_annotations
    from cdiff_cli.errors import DataError

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"nova-v1{suffix}"
        path.write_bytes(blob)
        try:
            records = read_annotations(path)
        except DataError as e:
            assert str(path) in str(e) and "\n" not in str(e)
        else:
            assert all(r.filename for r in records)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.text(st.characters(blacklist_categories=("Cs",)), min_size=0, max_size=20), min_size=1,
                max_size=4))
def test_random_file_names_in_parquet_stay_inside_the_images_root(names: list[str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cdiff_cli.data.nova import read_annotations
    from cdiff_cli.errors import DataError

    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "nova" / "images"
        root.mkdir(parents=True)
        path = Path(d) / "nova" / "nova-v1.parquet"
        pq.write_table(pa.table({"filename": names, "caption_text": ["T2"] * len(names),
                                 "bboxes": pa.array([[] for _ in names],
                                                    type=pa.list_(pa.struct([("x", pa.float64())])))}), path)
        try:
            records = read_annotations(path, images_root=root)
        except DataError as e:
            assert "\n" not in str(e)
        else:
            for r in records:
                assert r.filename not in {"", ".", ".."} and "/" not in r.filename and "\\" not in r.filename
                assert r.image_path.parent == root
