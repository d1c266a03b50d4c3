"""The anomaly score and the calibrated verdict (``infer/scores.py``, ``infer/verdict.py``,
``eval/verdict_calibration.py``), and per-image noise: the same input gets the same maps, score,
verdict and boxes alone or in company, at any batch size, in the API, the CLI and the app."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from PIL import Image

from conftest import make_model_folder, tiny_recipe_dict
from test_train import run_cli


def _phantom(d: int, hw: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(D, H, W) images of an ellipse with some texture, and its mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:hw, :hw]
    mask = (((yy - hw / 2) / (hw * 0.4)) ** 2 + ((xx - hw / 2) / (hw * 0.35)) ** 2) < 1
    img = np.stack([mask * (0.5 + 0.1 * rng.standard_normal((hw, hw))) for _ in range(d)]).clip(0, 1)
    return img.astype(np.float32), np.broadcast_to(mask, img.shape).copy()


def _healthy_volumes(n: int = 4) -> list[Any]:
    from cdiff_cli.eval.verdict_calibration import HealthyVolume
    from cdiff_cli.infer.postprocess import postprocess_volume

    vols = []
    for i in range(n):
        img, mask = _phantom(6, seed=i)
        res = (0.02 * np.abs(np.random.default_rng(100 + i).standard_normal(img.shape))).astype(np.float32) * mask
        vols.append(HealthyVolume(image=img, anomaly=postprocess_volume(res, mask, 1, 3), mask=mask, residual=res))
    return vols


def test_upload_like_slices_are_seeded_and_close_to_the_slice() -> None:
    """A slice read back as an upload of it (enlarged, 8-bit, letterboxed, percentile-rescaled) keeps the
    grid and the anatomy and changes a little everywhere; the same generator gives the same uploads."""
    from cdiff_cli.data.images2d import to_model_input
    from cdiff_cli.eval.verdict_calibration import upload_like

    raw, mask = _phantom(5, hw=40)
    img = np.stack([to_model_input(s, s.shape, mask=m)[0] for s, m in zip(raw, mask)])  # as prepared
    a = upload_like(img, np.random.default_rng(3))
    assert a.shape == img.shape and a.dtype == np.float32 and a.min() >= 0 and a.max() <= 1
    assert np.array_equal(a, upload_like(img, np.random.default_rng(3)))
    diff = np.abs(a - img)[mask]
    assert 0 < diff.mean() < 0.1 and np.corrcoef(a[mask], img[mask])[0, 1] > 0.8
    from scipy import ndimage

    near = np.stack([ndimage.binary_dilation(m, iterations=2) for m in mask])
    assert not (a[~near] > 0.05).any()  # the air stays dark (the edge blurs by a pixel or two)


def test_image_statistics_hold_the_uploads_too() -> None:
    from cdiff_cli.eval.verdict_calibration import fit_scoring

    plain = fit_scoring(_healthy_volumes(), threshold=0.03, median_size=3, erosion=1)
    vols = _healthy_volumes()
    for i, v in enumerate(vols):
        v.upload_image = v.image[:3].copy()
        v.upload_residual = 1.5 * v.residual[:3] + 0.001 * i  # an upload's residual: a little higher
    both = fit_scoring(vols, threshold=0.03, median_size=3, erosion=1)
    assert plain["n_upload_slices"] == 0 and both["n_upload_slices"] == 12
    assert len(both["healthy"]["image"]) == len(plain["healthy"]["image"]) + 12
    assert both["healthy"]["volume"] == plain["healthy"]["volume"]  # volumes are scored as before
    assert np.median(both["healthy"]["image"]) != np.median(plain["healthy"]["image"])


@pytest.fixture(scope="module")
def scoring() -> Any:
    from cdiff_cli.eval.verdict_calibration import fit_scoring
    from cdiff_cli.infer.verdict import Scoring

    doc = fit_scoring(_healthy_volumes(), threshold=0.03, median_size=3, erosion=1)
    assert set(doc["healthy"]) == {"volume", "slice", "image"} and doc["cross_fitted"]
    return Scoring.from_dict(json.loads(json.dumps(doc)))  # as stored: JSON round trip


def test_p_value_is_conformal_one_plus_healthy_at_or_above_over_n_plus_one() -> None:
    from cdiff_cli.infer.verdict import Verdict, p_value, smallest_p

    healthy = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    assert p_value(0.95, healthy) == pytest.approx(2 / 11)
    assert p_value(0.05, healthy) == 1.0 and p_value(2.0, healthy) == pytest.approx(1 / 11) == smallest_p(10)
    assert p_value(0.9, healthy) == pytest.approx(3 / 11)  # ties count as at or above
    yes = Verdict(score=2.0, p_value=1 / 11, level=0.1, anomalous=True, unit="image", n_healthy=10)
    assert yes.text.startswith("anomalous: score 2") and "p = 0.091: above all 10 healthy" in yes.text
    no = Verdict(score=0.5, p_value=0.6, level=0.05, anomalous=False)
    assert no.text.startswith("no anomaly found at the 5 % false-alarm level")
    assert Verdict(0.5, None, 0.05, None).text.startswith("not calibrated: run cdiff evaluate")


def test_conformal_p_flags_at_most_the_level_of_exchangeable_healthy_scores() -> None:
    from cdiff_cli.infer.verdict import p_value

    rng = np.random.default_rng(0)
    n, level, trials, flagged = 19, 0.05, 4000, 0
    for _ in range(trials):  # calibration and a new healthy score from one distribution
        h = rng.standard_normal(n + 1)
        flagged += p_value(h[-1], h[:-1]) <= level
    # exactly 1 / 20 in expectation (the new score above all 19); the plain share would flag 2 / 20
    assert flagged / trials == pytest.approx(1 / 20, abs=0.012)


def test_a_slices_simplex_noise_does_not_depend_on_its_company() -> None:
    import torch

    from cdiff_cli.config import SimplexConfig
    from cdiff_cli.diffusion.simplex import simplex_noise_per_slice

    cfg = SimplexConfig(octaves=3, frequency=16)

    def fields(ids: list[int]) -> torch.Tensor:  # 2 noise levels per slice, ordered (level, slice)
        gens = [torch.Generator().manual_seed(i) for i in ids]
        return simplex_noise_per_slice((2 * len(ids), 1, 24, 24), cfg, gens, torch.Generator().manual_seed(5))

    company, alone = fields([4, 7, 9]).view(2, 3, 24, 24), fields([7]).view(2, 1, 24, 24)
    assert torch.equal(company[:, 1], alone[:, 0])
    assert not torch.equal(company[:, 0], company[:, 1]) and not torch.equal(company[0], company[1])


def test_healthy_map_gets_no_box_and_an_obvious_lesion_gets_one(scoring: Any) -> None:
    from cdiff_cli.infer.postprocess import median_filter_2d
    from cdiff_cli.infer.scores import scoring_region
    from cdiff_cli.infer.verdict import select_boxes

    img, mask = _phantom(1, seed=42)
    res = (0.02 * np.abs(np.random.default_rng(7).standard_normal(img.shape))).astype(np.float32) * mask
    lesion = res.copy()
    lesion[0, 12:18, 14:20] += 0.6  # an obvious bright lesion
    region = scoring_region(img, None, 1)
    found = {}
    for name, r in (("healthy", res), ("lesion", lesion)):
        amap = median_filter_2d(r, 3)
        verdict = scoring.verdict(scoring.score_of(amap, img, region, "image"), "image")
        found[name] = (verdict, select_boxes(amap[0], 0.03, 5, "max", scoring, verdict))
        everything = select_boxes(amap[0], 0.03, 5, "max", scoring, verdict, all_candidates=True)
        assert len(everything) >= len(found[name][1])
    assert found["healthy"][0].anomalous is False and found["healthy"][1] == []
    verdict, boxes = found["lesion"]
    assert verdict.anomalous and verdict.p_value == pytest.approx(1 / (scoring.healthy["image"].size + 1))
    assert len(boxes) == 1 and boxes[0].p_value is not None and boxes[0].p_value <= 0.05
    b = boxes[0]
    assert b.x <= 14 and b.x + b.width >= 20 and b.y <= 12 and b.y + b.height >= 18  # on the lesion


@pytest.fixture(scope="module")
def tiny(module_tmp: Callable[[str], Path]) -> Any:
    from cdiff_cli import load_model

    run = make_model_folder(module_tmp("verdict") / "run", tiny_recipe_dict())
    return load_model(run, device="cpu")


def _images(n: int) -> list[np.ndarray]:
    return [(_phantom(1, hw=40, seed=s)[0][0] * 255).astype(np.uint8) for s in range(n)]


def test_same_image_same_maps_alone_in_a_batch_and_at_any_batch_size(tiny: Any) -> None:
    imgs = np.stack(_images(5)).astype(np.float32)
    alone = tiny.anomaly_map(imgs[2])
    batch = tiny.anomaly_map(imgs, kind="image")
    # the same noise: equal up to the float rounding of a batched network pass
    assert np.allclose(alone.grid.anomaly[0], batch.grid.anomaly[2], atol=1e-5)
    assert alone.anomaly_score == pytest.approx(batch.slice_scores[2], rel=1e-4)
    one = tiny.anomaly_map(imgs, kind="image", batch_size=1)
    assert np.allclose(one.grid.anomaly, batch.grid.anomaly, atol=1e-5)
    vol = np.stack([_phantom(1, seed=s)[0][0] for s in range(8)])  # prepared slices of one volume
    a = tiny.anomaly_map(vol, kind="prepared", batch_size=1).grid.recon
    b = tiny.anomaly_map(vol, kind="prepared", batch_size=8).grid.recon
    assert np.allclose(a, b, atol=1e-5)
    assert np.allclose(tiny.anomaly_map(vol[:4], kind="prepared").grid.recon, b[:4], atol=1e-5)  # slices 0..3


def test_uncalibrated_model_says_so_and_boxes_as_before(tiny: Any) -> None:
    from cdiff_cli.infer.postprocess import boxes_from_map

    result = tiny.anomaly_map(_images(1)[0].astype(np.float32))
    assert tiny.loaded.scoring is None
    assert result.verdict.text.startswith("not calibrated: run cdiff evaluate") and result.verdict.anomalous is None
    assert tiny.boxes(result, threshold=0.01, top_k=3) == boxes_from_map(result.anomaly, 0.01, 3, 1, 4, "max")


def _with_scoring(run: Path, healthy: float, box: float) -> Any:
    """The tiny model with hand-made healthy statistics: every healthy score (and box score) ``healthy``."""
    from cdiff_cli import load_model
    from cdiff_cli.eval.verdict_calibration import fit_scoring

    doc = fit_scoring(_healthy_volumes(), threshold=0.03, median_size=3, erosion=1)
    doc["healthy"] = {k: [healthy] * 20 for k in ("volume", "slice", "image")}
    doc["boxes"] = {k: [box] * 20 for k in ("volume", "image")}
    (run / "diffusion" / "verdict.json").write_text(json.dumps(doc))
    return load_model(run, device="cpu")


def test_calibrated_model_boxes_only_anomalous_inputs(tiny: Any, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny.loaded.folder.parent, run)
    img = _images(1)[0].astype(np.float32)
    healthy = _with_scoring(run, healthy=1e9, box=1e9)  # nothing scores above healthy: nothing is anomalous
    r = healthy.anomaly_map(img)
    assert r.verdict.anomalous is False and r.verdict.p_value == 1.0
    assert "no anomaly found at the 5 % false-alarm level" in r.verdict.text
    assert healthy.boxes(r, threshold=0.01) == []
    candidates = healthy.boxes(r, threshold=0.01, all_candidates=True)
    assert candidates and all(b.p_value == 1.0 for b in candidates)
    sick = _with_scoring(run, healthy=-1e9, box=-1e9)  # everything scores above healthy
    r = sick.anomaly_map(img)
    assert r.verdict.anomalous and r.verdict.p_value == pytest.approx(1 / 21)
    assert r.verdict.text.startswith("anomalous: score") and "above all 20 healthy" in r.verdict.text
    boxes = sick.boxes(r, threshold=0.01)
    assert boxes and all(b.p_value == pytest.approx(1 / 21) for b in boxes)


def test_localize_same_boxes_alone_or_in_a_folder_and_as_the_api(tiny: Any, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    folder, alone = tmp_path / "five", tmp_path / "one"
    folder.mkdir()
    alone.mkdir()
    for i, im in enumerate(_images(5)):
        Image.fromarray(im).save(folder / f"img{i}.png")
    shutil.copy(folder / "img3.png", alone / "img3.png")
    model = str(tiny.loaded.folder.parent)
    docs = {}
    for name, src in (("five", folder), ("one", alone)):
        out = tmp_path / f"out-{name}"
        code, err = run_cli(["localize", str(src), "--model", model, "--out", str(out), "--threshold", "0.01",
                             "--device", "cpu"], capsys)
        assert code == 0, err
        assert "not calibrated" in err  # the verdict is in the summary
        docs[name] = json.loads((out / "boxes.json").read_text())
        loc = json.loads((out / "localize.json").read_text())
        assert all(v["verdict"]["text"].startswith("not calibrated") for v in loc["verdicts"])
        assert (out / "verdicts.md").is_file()

    def boxes_of(doc: dict[str, Any]) -> list[list[int]]:
        image = next(i["id"] for i in doc["images"] if i["file_name"] == "img3.png")
        return [a["bbox"] for a in doc["annotations"] if a["image_id"] == image]

    assert boxes_of(docs["five"]) == boxes_of(docs["one"])
    api = tiny.boxes(folder / "img3.png", threshold=0.01)
    assert boxes_of(docs["one"]) == [list(b.xywh()) for b in api]


def test_app_session_gives_the_apis_maps_and_verdict(tiny: Any, tmp_path: Path) -> None:
    from cdiff_cli.app.session import Session

    path = tmp_path / "slice.png"
    Image.fromarray(_images(1)[0]).save(path)
    analysis = Session(str(tiny.loaded.folder.parent), device="cpu").analyze(path)
    api = tiny.anomaly_map(path)
    assert np.allclose(analysis.recon[0], np.clip(api.recon, 0, 1), atol=1e-6)
    assert analysis.verdict is not None and analysis.verdict.score == api.verdict.score
    assert analysis.badge().startswith("### No verdict: this model is not calibrated")


def test_the_slice_gate_boxes_anomalous_slices_of_a_volume_judged_healthy(tiny: Any, tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """gate "volume" (the default): a volume the verdict finds healthy gets no box, whatever its slices;
    gate "slice": each slice is judged alone. The CLI's --gate checks its value in one line."""
    from cdiff_cli import load_model
    from cdiff_cli.eval.verdict_calibration import fit_scoring

    run = tmp_path / "run"
    shutil.copytree(tiny.loaded.folder.parent, run)
    doc = fit_scoring(_healthy_volumes(), threshold=0.03, median_size=3, erosion=1)
    doc["healthy"] = {"volume": [1e9] * 20, "slice": [-1e9] * 20, "image": [-1e9] * 20}  # healthy volume, odd slices
    doc["boxes"] = {k: [-1e9] * 20 for k in ("volume", "image")}
    (run / "diffusion" / "verdict.json").write_text(json.dumps(doc))
    model = load_model(run, device="cpu")
    img, mask = _phantom(6, hw=model.image_hw[0], seed=3)
    result = model.anomaly_map(img, kind="prepared", mask=mask)
    assert result.verdict.anomalous is False and all(v.anomalous for v in result.slice_verdicts)
    assert model.boxes(result, threshold=0.0001) == []
    per_slice = model.boxes(result, threshold=0.0001, gate="slice")
    assert per_slice and all(b.p_value == pytest.approx(1 / 21) for s in per_slice for b in s.boxes)
    with pytest.raises(Exception, match="gate 'both'"):
        model.boxes(result, threshold=0.0001, gate="both")  # type: ignore[arg-type]
    code, err = run_cli(["localize", str(tmp_path), "--model", str(run), "--gate", "both"], capsys)
    assert code == 2 and "--gate 'both': expected volume or slice" in err


def test_too_few_healthy_volumes_for_the_level_is_said(capsys: pytest.CaptureFixture[str]) -> None:
    from cdiff_cli.eval.verdict_calibration import fit_scoring

    vols = _healthy_volumes(4)  # p >= 1/5: nothing can be flagged at 5 %, all above the 4 at 50 %
    fit_scoring(vols, threshold=0.03, median_size=3, erosion=1, level=0.05)
    out = capsys.readouterr()
    assert "4 healthy validation volumes" in out.out + out.err
    assert "no volume can be flagged anomalous (use at least 19 of them)" in out.out + out.err
    fit_scoring(vols, threshold=0.03, median_size=3, erosion=1, level=0.5)
    out = capsys.readouterr()
    assert "no volume can be flagged" not in out.out + out.err
