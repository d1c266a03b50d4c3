"""The CelebA proof of concept: attribute readers, natural-image preprocessing, the fixture
generator, the contrastive-analysis metrics (hand-checked), and the whole pipeline on the
fixture through the real CLI (synthesize -> prepare -> pretrain -> train -> reconstruct ->
evaluate), plus the app session on an RGB model and the eps sweep script."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import yaml
from PIL import Image

from test_train import run_cli

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------
# Metrics (pure functions, hand-checked)


def test_ssim_hand_cases() -> None:
    from cdiff_cli.eval.contrastive_metrics import gaussian_window, ssim, ssim_batch

    rng = np.random.default_rng(0)
    x = rng.random((3, 16, 16))
    assert ssim(x, x) == pytest.approx(1.0)
    c1 = 0.01**2  # constants: the structure term is C2/C2 = 1, only luminance is left
    assert ssim(np.full((11, 11), 0.5), np.full((11, 11), 0.25)) == pytest.approx(
        (2 * 0.5 * 0.25 + c1) / (0.5**2 + 0.25**2 + c1))
    assert ssim(np.full((12, 12), 0.8), np.full((12, 12), 0.8)) == pytest.approx(1.0)
    # a 13x13 image has 3x3 valid windows: the mean of nine explicitly computed window SSIMs
    a, b = rng.random((13, 13)), rng.random((13, 13))
    w = np.outer(gaussian_window(), gaussian_window())
    vals = []
    for i in range(3):
        for j in range(3):
            p, q = a[i : i + 11, j : j + 11], b[i : i + 11, j : j + 11]
            mp, mq = (w * p).sum(), (w * q).sum()
            vp, vq, cpq = (w * p * p).sum() - mp**2, (w * q * q).sum() - mq**2, (w * p * q).sum() - mp * mq
            vals.append((2 * mp * mq + 1e-4) * (2 * cpq + 9e-4) / ((mp**2 + mq**2 + 1e-4) * (vp + vq + 9e-4)))
    assert ssim(a, b) == pytest.approx(np.mean(vals), rel=1e-12)
    assert ssim_batch(np.stack([a, a]), np.stack([b, a])).tolist() == pytest.approx([np.mean(vals), 1.0])
    with pytest.raises(ValueError, match="smaller than"):
        ssim(np.zeros((8, 8)), np.zeros((8, 8)))


def test_ssim_matches_reference_implementations() -> None:
    from cdiff_cli.eval.contrastive_metrics import ssim_batch

    rng = np.random.default_rng(1)
    x = rng.random((2, 3, 24, 30))
    y = np.clip(x + 0.1 * rng.standard_normal(x.shape), 0, 1)
    ours = ssim_batch(x, y)
    checked = 0
    try:
        from skimage.metrics import structural_similarity as sk

        ref = [sk(x[i], y[i], channel_axis=0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                  data_range=1.0) for i in range(2)]
        assert ours == pytest.approx(ref, abs=1e-9)
        checked += 1
    except ImportError:
        pass
    try:
        import torch
        from torchmetrics.functional.image import structural_similarity_index_measure as tm

        # torchmetrics averages over reflect-padded borders too; its map cropped to the valid part is ours
        _, full = tm(torch.tensor(x), torch.tensor(y), data_range=1.0, return_full_image=True, reduction="none")
        assert ours == pytest.approx(full[..., 5:-5, 5:-5].mean(dim=(1, 2, 3)).numpy(), abs=1e-9)
        checked += 1
    except ImportError:
        pass
    if not checked:
        pytest.skip("neither scikit-image nor torchmetrics is installed")


def test_mse_knn_and_accuracies() -> None:
    from cdiff_cli.eval.contrastive_metrics import accuracy, balanced_accuracy, knn_predict, majority_chance, mse_batch

    assert mse_batch(np.zeros((2, 1, 2, 2)), np.array([[[[1, 1], [0, 0]]], [[[0, 0], [0, 0]]]])).tolist() == [0.5, 0.0]
    train = np.array([[1.0, 0.0], [0.9, 0.1], [0.8, 0.3], [0.0, 1.0], [0.1, 0.9]])
    labels = np.array(["a", "a", "b", "b", "b"])
    # query near (1, 0): nearest three are a, a, b -> a (majority), cosine ignores the scale
    assert knn_predict(train, labels, np.array([[5.0, 0.0]]), k=3).tolist() == ["a"]
    # k=2 tie (a vs b): the nearest neighbour's label wins
    assert knn_predict(train, labels, np.array([[0.8, 0.32]]), k=2).tolist() == ["b"]
    # leave-one-out: each vector skips itself
    loo = knn_predict(train, labels, train, k=1, leave_one_out=True)
    assert loo.tolist() == ["a", "a", "a", "b", "b"]
    assert accuracy(labels, loo) == pytest.approx(0.8)
    assert balanced_accuracy([0, 0, 0, 1], [0, 0, 1, 1]) == pytest.approx((2 / 3 + 1) / 2)
    assert balanced_accuracy([0, 0, 0, 1], [0, 0, 0, 0]) == 0.5
    assert majority_chance([1, 1, 0], [0, 1, 1, 1]) == 0.75


def test_attribute_probe_and_identity_knn_protocols() -> None:
    from cdiff_cli.eval.contrastive_probes import attribute_probe, subsample

    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(60, bool), np.ones(60, bool)]
    informative = rng.standard_normal((120, 4)) + 3 * y[:, None]
    r = attribute_probe(informative[::2], y[::2], informative[1::2], y[1::2])
    assert r["available"] and r["balanced_accuracy"] > 0.9 and r["balanced_chance"] == 0.5
    noise = rng.standard_normal((120, 4))
    r = attribute_probe(noise[::2], y[::2], noise[1::2], y[1::2])
    assert abs(r["balanced_accuracy"] - 0.5) < 0.25  # invariant features: near chance
    assert not attribute_probe(noise[:10], np.zeros(10, bool), noise[10:20], y[50:60])["available"]
    assert subsample(np.arange(10), 0, 0).tolist() == list(range(10))
    picked = subsample(np.arange(100), 5, 3)
    assert len(picked) == 5 and picked.tolist() == sorted(picked.tolist())
    assert picked.tolist() == subsample(np.arange(100), 5, 3).tolist()


def test_lpips_is_computed_or_says_why() -> None:
    import torch

    from cdiff_cli.eval.perceptual import lpips_distances, lpips_status

    ok, why = lpips_status()
    assert isinstance(why, str) and why
    x = np.random.default_rng(0).random((2, 3, 32, 32)).astype(np.float32)
    d = lpips_distances(x, x, torch.device("cpu"))
    if ok:
        assert d is not None and d.shape == (2,) and np.allclose(d, 0, atol=1e-5)
    else:
        assert d is None and "not" in why


# --------------------------------------------------------------------------------------
# Readers, preprocessing, fixture


def _jpeg(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (40, 50)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.new("RGB", size, color)
    im.putpixel((3, 3), (255, 255, 255))  # not constant
    im.save(path, format="JPEG")


def _mini_celeba(root: Path) -> Path:
    """Five images: background, glasses, glasses + hat, plain, lipstick (still background)."""
    from cdiff_cli.data.contrastive_attributes import CELEBA_ATTRIBUTES

    on = {1: [], 2: ["Eyeglasses"], 3: ["Eyeglasses", "Wearing_Hat"], 4: [], 5: ["Wearing_Lipstick"]}
    rows = []
    for k, attrs in on.items():
        _jpeg(root / "img_align_celeba" / f"{k:06d}.jpg", (40 * k, 100, 200 - 30 * k))
        rows.append(f"{k:06d}.jpg " + " ".join(" 1" if a in attrs else "-1" for a in CELEBA_ATTRIBUTES))
    (root / "list_attr_celeba.txt").write_text(f"5\n{' '.join(CELEBA_ATTRIBUTES)}\n" + "\n".join(rows) + "\n")
    (root / "list_eval_partition.txt").write_text("".join(f"{k:06d}.jpg {p}\n" for k, p in zip(on, [0, 0, 2, 2, 1])))
    (root / "identity_CelebA.txt").write_text("".join(f"{k:06d}.jpg {k % 2}\n" for k in on))
    return root


def test_celeba_reader_roles_and_user_errors(tmp_path: Path) -> None:
    from cdiff_cli.data.contrastive_attributes import CELEBA_ACCESSORIES, assign_roles, read_celeba
    from cdiff_cli.errors import DataError, RecipeError

    root = _mini_celeba(tmp_path / "celeba")
    t = read_celeba(root)
    assert t.files[0] == "000001.jpg" and t.split == ["train", "train", "test", "test", "val"]
    assert t.identity == ["1", "0", "1", "0", "1"]
    roles = assign_roles(t, "Eyeglasses", list(CELEBA_ACCESSORIES))
    assert roles.tolist() == ["background", "target", "excluded", "background", "background"]
    with pytest.raises(RecipeError, match="did you mean 'Eyeglasses'"):
        assign_roles(t, "Eyeglases", [])
    (root / "identity_CelebA.txt").unlink()
    assert read_celeba(root).identity is None  # optional
    (root / "list_eval_partition.txt").unlink()
    with pytest.raises(DataError, match="missing list_eval_partition.txt"):
        read_celeba(root)
    root = _mini_celeba(tmp_path / "c2")
    text = (root / "list_attr_celeba.txt").read_text().splitlines()
    (root / "list_attr_celeba.txt").write_text("\n".join(text[:-1]) + "\n")  # a truncated file
    with pytest.raises(DataError, match="announces 5 images but 4"):
        read_celeba(root)


def test_attribute_csv_reader(tmp_path: Path) -> None:
    from cdiff_cli.config import DataSource
    from cdiff_cli.data.contrastive_attributes import assign_roles, read_attribute_csv
    from cdiff_cli.errors import DataError, RecipeError

    for i in range(4):
        _jpeg(tmp_path / "imgs" / f"sub/{i}.png", (50 * i, 20, 20))
    csv_path = tmp_path / "table.csv"
    csv_path.write_text("path,glasses,hat,person,part\nsub/0.png,0,no,p1,train\nsub/1.png,1,no,p1,test\n"
                        "sub/2.png,yes,TRUE,p2,train\nsub/3.png,-1,false,p2,validation\n")

    def src(**kw: Any) -> DataSource:
        base = dict(name="faces", layout="attributes", path=tmp_path / "imgs", table=csv_path, file_column="path",
                    target="glasses", exclude=["hat"], identity_column="person", split_column="part")
        return DataSource(**{**base, **kw})

    t = read_attribute_csv(src())
    assert t.split == ["train", "test", "train", "val"] and t.identity == ["p1", "p1", "p2", "p2"]
    assert assign_roles(t, "glasses", ["hat"]).tolist() == ["background", "target", "excluded", "background"]
    with pytest.raises(RecipeError, match="did you mean 'glasses'"):
        read_attribute_csv(src(target="glases"))
    with pytest.raises(RecipeError, match="file_column 'file'"):
        read_attribute_csv(src(file_column="file"))
    from cdiff_cli.config import DataConfig
    from cdiff_cli.data.contrastive_attributes import seeded_splits

    no_split = read_attribute_csv(src(split_column=None))  # seeded, by identity: a person stays in one split
    cfg = DataConfig(sources=[src()], test_fraction=0.5)
    made = seeded_splits(no_split, cfg)
    assert made[0] == made[1] and made[2] == made[3] and made == seeded_splits(no_split, cfg)
    csv_path.write_text("path,glasses,hat,person,part\nsub/0.png,maybe,0,p1,train\n")
    with pytest.raises(DataError, match="line 2, glasses: 'maybe'"):
        read_attribute_csv(src())


def test_layout_fields_are_validated() -> None:
    from cdiff_cli.config import recipe_from_dict
    from cdiff_cli.errors import RecipeError

    def recipe(source: dict[str, Any]) -> Any:
        return recipe_from_dict({"data": {"sources": [source], "size": [32, 32, 1], "channels": 3}})

    recipe({"name": "c", "layout": "celeba", "path": "x", "center_crop": 140})
    with pytest.raises(RecipeError, match="target: only for layouts celeba and attributes"):
        recipe({"name": "i", "layout": "ixi", "path": "x", "target": "Eyeglasses"})
    with pytest.raises(RecipeError, match="needs `table`"):
        recipe({"name": "a", "layout": "attributes", "path": "x", "target": "t"})
    with pytest.raises(RecipeError, match="leave role 'healthy'"):
        recipe({"name": "c", "layout": "celeba", "path": "x", "role": "lesion"})


def test_natural_preprocessing_and_its_inverse() -> None:
    from cdiff_cli.data.contrastive_grid import crop_box, crop_mask, from_natural_grid, to_natural_input

    assert crop_box((218, 178), (64, 64), 140) == (39, 19, 140, 140)
    assert crop_box((218, 178), (64, 64), None) == (20, 0, 178, 178)  # as large as fits
    assert crop_box((100, 50), (32, 64), None) == (37, 0, 25, 50)  # wide grid on a tall image
    img = np.random.default_rng(0).random((3, 218, 178)).astype(np.float32)
    x, meta = to_natural_input(img, (64, 64), 140, channels=3)
    assert x.shape == (3, 64, 64) and 0 <= x.min() and x.max() <= 1
    back = from_natural_grid(x, meta, base=img)  # (3, 218, 178): the crop resized back, the rest the input
    assert back.shape == img.shape and np.array_equal(back[:, :39], img[:, :39])
    assert from_natural_grid(np.ones((64, 64)), meta)[crop_mask(meta)].min() == pytest.approx(1.0)
    gray, _ = to_natural_input(img, (32, 32), None, channels=1)
    assert gray.shape == (1, 32, 32)


def test_rgb_views_are_batched_and_deterministic() -> None:
    import torch

    from cdiff_cli.config import ViewConfig
    from cdiff_cli.train.views import class_invariant_view, color_jitter, random_flip

    x = torch.rand(4, 3, 16, 16)
    flipped = random_flip(x, torch.Generator().manual_seed(0))
    assert all(torch.equal(f, s) or torch.equal(f, s.flip(-1)) for f, s in zip(flipped, x))
    j = color_jitter(x, torch.Generator().manual_seed(0), 0.3)
    assert j.shape == x.shape and 0 <= float(j.min()) and float(j.max()) <= 1
    cfg = ViewConfig(flip=True, color_jitter=0.2)
    a = class_invariant_view(x, cfg, torch.Generator().manual_seed(1))
    b = class_invariant_view(x, cfg, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b)
    plain = ViewConfig()  # defaults draw nothing extra: brain recipes keep their exact views
    assert not plain.flip and plain.color_jitter == 0


def test_fixture_is_deterministic_and_in_the_real_format(tmp_path: Path) -> None:
    from cdiff_cli.data.contrastive_attributes import CELEBA_ATTRIBUTES, read_celeba
    from cdiff_cli.synthetic.celeba import synthesize_celeba

    s = synthesize_celeba(tmp_path / "a", seed=3, identities=3, per_identity=4)
    synthesize_celeba(tmp_path / "b", seed=3, identities=3, per_identity=4)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len([f for f in files if f.suffix == ".jpg"]) == 12
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    lines = (tmp_path / "a" / "list_attr_celeba.txt").read_text().splitlines()
    assert lines[0] == "12" and lines[1].split() == list(CELEBA_ATTRIBUTES)
    with Image.open(tmp_path / "a" / "img_align_celeba" / "000001.jpg") as im:
        assert im.size == (178, 218) and im.mode == "RGB" and im.format == "JPEG"
    t = read_celeba(tmp_path / "a")
    assert len(t.files) == 12 and set(t.split) <= {"train", "val", "test"} and t.identity is not None
    assert s["counts"]["images"] == 12
    from cdiff_cli.errors import CdiffError

    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "other.txt").write_text("not ours")
    with pytest.raises(CdiffError, match="not empty"):
        synthesize_celeba(tmp_path / "c")


# --------------------------------------------------------------------------------------
# The whole pipeline on the fixture, through the CLI


def _recipe(fixture: Path, root: Path) -> dict[str, Any]:
    return {
        "name": "celeba_tiny", "seed": 0, "runs_dir": str(root / "runs"),
        "data": {"sources": [{"name": "celeba", "layout": "celeba", "path": str(fixture), "center_crop": 140}],
                 "prepared": str(root / "prepared"), "size": [32, 32, 1], "channels": 3},
        "encoder": {"arch": "resnet18", "z_dim": 16, "views": {"flip": True, "color_jitter": 0.1}},
        "encoder_train": {"steps": 3, "batch_size": 8, "val_every": 0, "log_every": 1, "ckpt_every": 3},
        "unet": {"base_channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1, "groups": 8, "num_heads": 2,
                 "head_channels": -1, "time_embed_dim": 32},
        "diffusion": {"simplex": {"octaves": 3, "frequency": 16}},
        "train": {"steps": 3, "batch_size": 8, "val_every": 0, "log_every": 1, "ckpt_every": 3, "ema_decay": 0.9},
        "infer": {"timesteps": [500], "batch_size": 32},
        "eval": {"max_images": 12},
        "localize": {"median_size": 3},
    }


@pytest.fixture(scope="module")
def celeba_run(module_tmp: Callable[[str], Path]) -> dict[str, Path]:
    """Fixture -> prepare -> both stages, through the real CLI; shared by the tests below."""
    root = module_tmp("celeba")
    fixture = root / "celeba_fixture"
    recipe = root / "celeba.yaml"
    recipe.write_text(yaml.safe_dump(_recipe(fixture, root)))
    cap = _NullCapture()
    for args in (["synthesize", str(fixture), "--preset", "celeba-tiny"], ["prepare", str(recipe)],
                 ["pretrain-encoder", str(recipe), "--device", "cpu"],
                 ["train-diffusion", str(recipe), "--device", "cpu"]):
        code, err = run_cli(args, cap)  # type: ignore[arg-type]
        assert code == 0, (args, err)
    return {"root": root, "fixture": fixture, "recipe": recipe, "run": root / "runs" / "celeba_tiny"}


class _NullCapture:
    """run_cli reads stderr from a capsys; the module-scoped fixture has none."""

    def readouterr(self) -> Any:
        return type("R", (), {"err": "", "out": ""})()


def test_prepared_store(celeba_run: dict[str, Path]) -> None:
    from cdiff_cli.data.contrastive_store import CAStore

    store = CAStore.open(celeba_run["root"] / "prepared" / "celeba")
    assert store.images_array().shape[1:] == (3, 32, 32) and store.images_array().dtype == np.uint8
    doc = json.loads((celeba_run["root"] / "prepared" / "celeba" / "store.json").read_text())
    assert doc["config"]["target"] == "Eyeglasses" and "Wearing_Hat" in doc["config"]["exclude"]
    assert set(store.role) == {"background", "target"} and doc["excluded"] >= 0
    assert doc["counts"]["background"]["train"] > 0 and doc["counts"]["target"]["test"] > 0


def test_reconstruct_rgb(celeba_run: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    jpg = celeba_run["fixture"] / "img_align_celeba" / "000001.jpg"
    out = celeba_run["root"] / "recon"
    code, err = run_cli(["reconstruct", str(jpg), "--model", str(celeba_run["run"]), "--out", str(out),
                         "--device", "cpu"], capsys)
    assert code == 0, err
    recon, amap = np.load(out / "000001_recon.npy"), np.load(out / "000001_anomaly.npy")
    assert recon.shape == (3, 218, 178) and amap.shape == (218, 178)
    assert amap[:30].max() == 0 and amap.max() > 0  # zero outside the centred crop the model saw
    with Image.open(out / "000001_preview.png") as im:
        assert im.mode in ("RGB", "RGBA")
        px = np.asarray(im.convert("RGB"), dtype=np.int16)
        assert np.abs(px[..., 0] - px[..., 2]).max() > 30  # colour, not gray


def test_localize_refuses_a_colour_model_in_one_line(celeba_run: dict[str, Path],
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = celeba_run["root"] / "loc"
    code, err = run_cli(["localize", str(celeba_run["fixture"] / "img_align_celeba"), "--model",
                         str(celeba_run["run"]), "--threshold", "0.5", "--out", str(out), "--device", "cpu"], capsys)
    assert code == 2 and "3-channel (colour) model" in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_evaluate_contrastive_smoke(celeba_run: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """The report's fields and the gap (the difference of the class means) are checked exactly; the tiny
    model's AUROC and k-NN accuracy only for their ranges (smoke)."""
    out = celeba_run["root"] / "eval"
    code, err = run_cli(["evaluate", str(celeba_run["recipe"]), "--out", str(out), "--device", "cpu"], capsys)
    assert code == 0, err
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["protocol"] == "contrastive-analysis"
    for role in ("background", "target"):
        c = doc["classes"][role]
        assert 0 < c["n"] <= 12 and -1 <= c["ssim"]["mean"] <= 1 and c["mse"]["mean"] >= 0
    assert doc["gap"]["mse"] == pytest.approx(abs(doc["classes"]["background"]["mse"]["mean"]
                                                   - doc["classes"]["target"]["mse"]["mean"]))
    assert 0 <= doc["auroc"]["mse"] <= 1
    if not doc["lpips"]["available"]:
        assert doc["classes"]["target"]["lpips"] is None and doc["lpips"]["reason"]
    knn = doc["probes"]["identity_knn"]
    assert knn["available"] and knn["protocol"] == "train -> test" and 0 <= knn["all"]["accuracy"] <= 1
    assert doc["probes"]["attribute_probe"]["balanced_chance"] == 0.5
    md = (out / "metrics.md").read_text()
    assert "SSIM" in md and "gap abs(NEG - EG)" in md and "k-NN identity" in md
    assert (out / "error_histograms.png").is_file() and (out / "target_reconstructions.png").is_file()
    assert (celeba_run["run"] / "diffusion" / "calibration.json").is_file()


def test_app_session_shows_rgb(celeba_run: dict[str, Path]) -> None:
    from cdiff_cli.errors import DataError
    from cdiff_cli.app.examples import example_files
    from cdiff_cli.app.session import Session

    session = Session(str(celeba_run["run"]), "cpu")
    a = session.analyze(str(celeba_run["fixture"] / "img_align_celeba" / "000002.jpg"))
    assert a.image.shape == (1, 218, 178, 3) and a.recon.shape == a.image.shape and a.anomaly.shape == (1, 218, 178)
    r = session.render(a, 0, 0.05, 3)
    assert r.image.shape[2] == 3 and r.image.shape == r.recon.shape
    assert r.overlay.shape[0] == r.image.shape[0] and r.overlay.shape[1] > r.image.shape[1]  # + its colour bar
    assert np.abs(r.image[..., 0].astype(int) - r.image[..., 2]).max() > 30  # the colours are kept
    examples = example_files(session.model, cache_dir=celeba_run["root"] / "examples")
    assert [p.name for p in examples] == ["face_no_glasses.jpg", "face_glasses.jpg"]
    nii = celeba_run["root"] / "x.nii.gz"
    nii.write_bytes(b"\x1f\x8b" + b"0" * 100)
    with pytest.raises(DataError, match="colour images"):
        session.analyze(str(nii))


def test_user_errors_are_one_line(celeba_run: dict[str, Path], tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    raw = _recipe(celeba_run["fixture"], tmp_path)
    raw["data"]["sources"][0]["target"] = "Eyeglases"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    code, err = run_cli(["prepare", str(bad)], capsys)
    assert code == 2 and "did you mean 'Eyeglasses'" in err and len(err.strip().splitlines()) == 1
    fixture = tmp_path / "broken"
    import shutil

    shutil.copytree(celeba_run["fixture"], fixture)
    raw = _recipe(fixture, tmp_path)
    from cdiff_cli.data.contrastive_store import CAStore

    first, second = CAStore.open(celeba_run["root"] / "prepared" / "celeba").files[:2]  # two images that are kept
    (fixture / "img_align_celeba" / first).write_bytes(b"\xff\xd8\xff garbage")
    (fixture / "img_align_celeba" / second).unlink()
    bad.write_text(yaml.safe_dump(raw))
    code, err = run_cli(["prepare", str(bad)], capsys)
    assert code == 2 and first in err and len(err.strip().splitlines()) == 1
    code, err = run_cli(["prepare", str(bad), "data.on_error=skip"], capsys)
    assert code == 0, err
    doc = json.loads((tmp_path / "prepared" / "prepare.json").read_text())
    assert {s["file"] for s in doc["skipped"]} == {first, second}


@pytest.mark.slow  # a study script: trains one encoder per epsilon
def test_sweep_eps_script(celeba_run: dict[str, Path], tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import sweep_eps
    finally:
        sys.path.pop(0)
    out = tmp_path / "sweep"
    code = sweep_eps.main([str(celeba_run["recipe"]), f"runs_dir={tmp_path / 'runs'}", "--eps", "0,1",
                           "--steps", "2", "--max-images", "10", "--device", "cpu", "--out", str(out)])
    assert code == 0
    doc = json.loads((out / "sweep_eps.json").read_text())
    assert [r["eps"] for r in doc["results"]] == [0.0, 1.0]
    assert all(r["probes"]["identity_knn"]["available"] for r in doc["results"])
    assert (out / "sweep_eps.png").is_file()
