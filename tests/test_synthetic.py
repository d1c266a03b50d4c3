"""The embedded synthetic benchmark: determinism, real raw layouts, lesion/contrast sanity."""

from __future__ import annotations

import ast
import hashlib
import io
import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from cdiff_cli.synthetic import benchmark as syn
from cdiff_cli.synthetic import anatomy as anat
from cdiff_cli.synthetic import lesions as les
from cdiff_cli.synthetic import nova
from cdiff_cli.synthetic import template as tmpl
from cdiff_cli.synthetic import sources
from cdiff_cli.errors import CdiffError


def _digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def first(module_tmp):
    """One tiny run, with the progress calls it made."""
    calls: list[tuple[str, int, int]] = []
    a = module_tmp("synA") / "bench"
    res_a = syn.synthesize(a, seed=0, preset="tiny", progress=lambda *c: calls.append(c))
    return a, res_a, calls


@pytest.fixture(scope="module")
def runs(first, module_tmp):
    """A second tiny run with the same seed into another folder (determinism)."""
    a, res_a, calls = first
    b = module_tmp("synB") / "bench"
    res_b = syn.synthesize(b, seed=0, preset="tiny")
    return a, b, res_a, res_b, calls


@pytest.fixture(scope="module")
def out(first) -> Path:
    return first[0]


def _load(path: Path) -> tuple[np.ndarray, nib.Nifti1Image]:
    img = nib.load(path)
    return np.asarray(img.dataobj), img


# ----------------------------------------------------------------------------- determinism
@pytest.mark.slow  # synthesizes the benchmark a second time
def test_same_seed_gives_identical_bytes(runs):
    a, b, *_ = runs
    da, db = _digests(a), _digests(b)
    assert len(da) > 20
    assert da == db


def test_different_seed_gives_different_subjects():
    w0, w1 = (anat.random_warp(syn.subject_rng(seed, "ixi", 0)) for seed in (0, 1))
    assert not np.allclose(w0.matrix, w1.matrix)
    assert np.allclose(w0.matrix, anat.random_warp(syn.subject_rng(0, "ixi", 0)).matrix)
    img0 = nova.nova_image(lambda i, k: syn.subject_rng(0, "nova", i, k), 0)["image"]
    img1 = nova.nova_image(lambda i, k: syn.subject_rng(1, "nova", i, k), 0)["image"]
    assert img0.shape != img1.shape or not np.array_equal(img0, img1)


def test_summary_progress_and_timing(first):
    a, res, calls = first
    summary = json.loads((a / "synthesize.json").read_text())
    assert summary["status"] == "complete" and summary["seed"] == 0 and summary["preset"] == "tiny"
    assert summary["counts"] == {"IXI": 4, "BraTS2021": 2, "MSLUB": 2, "NOVA": 4}
    assert set(summary["files"]) == set(_digests(a))  # every file recorded, nothing else there
    assert res["seconds"] > 0 and res["out_dir"] == str(a)
    for stage, n in (("IXI", 4), ("BraTS2021", 2), ("MSLUB", 2), ("NOVA", 4)):
        assert (stage, n, n) in calls
    # recorded lesion volumes agree with the label files
    for entry in summary["subjects"]["BraTS2021"]:
        seg, _ = _load(a / "BraTS2021" / entry["name"] / f"{entry['name']}_seg.nii.gz")
        assert int((seg == 2).sum()) == entry["oedema"] and int((seg == 4).sum()) == entry["enhancing"]
    for entry in summary["subjects"]["MSLUB"]:
        gt, _ = _load(a / "MSLUB" / entry["name"] / "consensus_gt.nii.gz")
        assert int(gt.sum()) == entry["lesion_voxels"] > 0


# ----------------------------------------------------------------------------- layouts
def test_layout_is_exactly_the_real_raw_one(out):
    files = set(_digests(out))
    ixi = sorted(f for f in files if re.fullmatch(r"IXI/IXI\d{3}-(Guys|HH|IOP)-\d{4}-T2\.nii\.gz", f))
    assert len(ixi) == 4
    masks = {f"IXI/masks/{Path(f).name[:-len('.nii.gz')]}_mask.nii.gz" for f in ixi}
    brats = {f for f in files if f.startswith("BraTS2021/")}
    ids = {re.fullmatch(r"BraTS2021/(BraTS2021_\d{5})/\1_(t2|seg)\.nii\.gz", f).group(1) for f in brats}
    assert len(ids) == 2 and len(brats) == 4
    mslub = {f"MSLUB/patient{i:02d}/{n}.nii.gz" for i in (1, 2) for n in ("T2W", "consensus_gt", "brainmask")}
    pngs = {f for f in files if re.fullmatch(r"NOVA/images/[\w-]+\.png", f)}
    assert len(pngs) == 4
    rest = {"NOVA/data/nova-v1.parquet", "NOVA/data/nova-v1.csv", "preview.png", "anatomies.png",
            "subjects.json", "synthesize.json"}
    assert files == set(ixi) | masks | brats | mslub | pngs | rest


def test_ixi_geometry_is_anisotropic_non_ras_and_upright(out):
    path = sorted((out / "IXI").glob("*.nii.gz"))[0]
    data, img = _load(path)
    mask, mimg = _load(out / "IXI" / "masks" / path.name.replace(".nii.gz", "_mask.nii.gz"))
    assert data.shape == (256, 256, 130) and data.dtype == np.int16
    assert np.allclose(img.header.get_zooms(), (0.9375, 0.9375, 1.2))
    assert nib.aff2axcodes(img.affine) != ("R", "A", "S")
    assert np.allclose(mimg.affine, img.affine) and set(np.unique(mask)) == {0, 1}
    # reoriented to RAS the brain is wider front-to-back than left-to-right, and the scalp
    # (not skull-stripped) surrounds the brain
    can = nib.as_closest_canonical(nib.Nifti1Image(mask, img.affine))
    pts = np.argwhere(np.asarray(can.dataobj) > 0) * np.array(can.header.get_zooms())
    extent = pts.max(0) - pts.min(0)
    assert extent[1] > extent[0] and 110 < extent[0] < 175 and 140 < extent[1] < 210
    assert (data[mask == 0] > 0).sum() > 100_000
    assert data[mask == 0].max() > 0 and (data > 0).sum() < data.size  # background exists


def test_brats_and_mslub_headers(out):
    t2, img = _load(next((out / "BraTS2021").glob("*/*_t2.nii.gz")))
    assert t2.shape == (240, 240, 155) and np.allclose(img.affine, syn.BRATS_AFFINE)
    assert np.allclose(img.header.get_zooms(), 1.0) and t2.min() == 0
    for case in sorted((out / "MSLUB").iterdir()):
        t2w, img = _load(case / "T2W.nii.gz")
        assert np.allclose(img.header.get_zooms(), 1.0) and t2w.shape == syn.MSLUB.shape


# ----------------------------------------------------------------------------- lesions
def test_lesions_lie_inside_the_brain(out):
    for case in sorted((out / "BraTS2021").iterdir()):
        t2, _ = _load(case / f"{case.name}_t2.nii.gz")
        seg, _ = _load(case / f"{case.name}_seg.nii.gz")
        brain = t2 > 0  # BraTS convention: skull-stripped, background exactly 0
        assert set(np.unique(seg)) <= {0, 1, 2, 4} and {2, 4} <= set(np.unique(seg))
        assert not (seg[~brain] > 0).any()
        assert t2[seg == 2].mean() > t2[brain & (seg == 0)].mean()  # oedema is bright in T2
    kinds = {e["name"]: e["lesion_kinds"] for e in json.loads((out / "synthesize.json").read_text())["subjects"]["MSLUB"]}
    for case in sorted((out / "MSLUB").iterdir()):
        gt, _ = _load(case / "consensus_gt.nii.gz")
        bm, _ = _load(case / "brainmask.nii.gz")
        t2w, _ = _load(case / "T2W.nii.gz")
        assert set(np.unique(gt)) == {0, 1} and not (gt > bm).any()
        if "haemorrhage" not in kinds[case.name]:  # T2-dark lesions would pull the mean down
            assert t2w[gt > 0].mean() > t2w[(bm > 0) & (gt == 0)].mean()


def test_tumour_and_ms_sizes(out):
    for case in sorted((out / "BraTS2021").iterdir()):
        seg, _ = _load(case / f"{case.name}_seg.nii.gz")
        diameter = (6 * (seg > 0).sum() / np.pi) ** (1 / 3)
        assert 8 <= diameter <= 62
        assert ndimage.label(seg > 0)[1] <= 3  # one tumour (a clipped sliver at most)
    tpl = anat.template()
    rng = np.random.default_rng(7)
    outer = [2 * np.prod(t.radii) ** (1 / 3) * t.oedema for t in (les.place_tumour(rng, tpl) for _ in range(40))]
    assert 10 - 1e-6 <= min(outer) and max(outer) <= 60 + 1e-6
    for case in sorted((out / "MSLUB").iterdir()):
        gt, _ = _load(case / "consensus_gt.nii.gz")
        lab, n = ndimage.label(gt)
        sizes = ndimage.sum(gt, lab, range(1, n + 1))
        diam = (6 * sizes / np.pi) ** (1 / 3)
        assert 2 <= n <= 18 and np.median(diam) <= 15 and diam.max() <= 27  # MS, WMH, bleeds, lacunes
    ms = les.place_ms(rng, tpl, 40)
    d = [2 * np.prod(m.radii) ** (1 / 3) for m in ms]
    assert len(ms) == 40 and 3 - 1e-6 <= min(d) and max(d) <= 15 + 1e-6
    assert all(tpl.lookup2(tpl.wm2, m.centre[None])[0] > 0.6 for m in ms)  # centred in white matter
    assert all(tpl.lookup2(tpl.ventdist2, m.centre[None])[0] <= 16 for m in ms)  # periventricular


def test_contrast_order_csf_gm_wm(out):
    sub = syn.make_subject("ixi", 0, 0, tissue=True)
    data, _ = _load(out / "IXI" / f"{sub.name}.nii.gz")
    assert np.array_equal(data, syn._int16(sub.rendered.image))  # the helper reproduces the file
    means = {k: data[sub.rendered.tissue[k] > 0.9].mean() for k in ("csf", "gm", "wm")}
    assert means["csf"] > means["gm"] > means["wm"] > 0


# ----------------------------------------------------------------------------- NOVA
def test_nova_annotations(out):
    import pyarrow.parquet as pq

    table = pq.read_table(out / "NOVA" / "data" / "nova-v1.parquet")
    assert table.column_names == ["filename", "case_id", "scan_id", "caption_text", "image_path", "meta", "bboxes"]
    rows = table.to_pylist()
    csv_rows = {r["filename"]: r for r in __import__("csv").DictReader(io.StringIO(
        (out / "NOVA" / "data" / "nova-v1.csv").read_text()))}
    n_gold = 0
    for row in rows:
        png = Image.open(out / "NOVA" / row["image_path"])
        assert png.mode == "L" and 448 <= png.width <= 512 and 448 <= png.height <= 512
        arr = np.asarray(png)
        assert arr[0].max() == 0 and arr[arr.shape[0] // 2].max() > 100  # background, then a head
        kind = json.loads(row["meta"])["kind"]
        gold = [b for b in row["bboxes"] if b["source"] == "gold"]
        assert (len(gold) > 0) == (kind != "healthy")
        n_gold += len(gold)
        for b in row["bboxes"]:
            assert b["x"] >= 0 and b["y"] >= 0 and b["width"] >= 1 and b["height"] >= 1
            assert b["x"] + b["width"] <= png.width and b["y"] + b["height"] <= png.height
        for b in gold if "haemorrhage" not in json.loads(row["meta"])["pathologies"] else []:
            patch = arr[b["y"]:b["y"] + b["height"], b["x"]:b["x"] + b["width"]]
            assert patch.max() > arr[arr > 0].mean()  # a bright lesion is brighter than the head on average
        old = ast.literal_eval(csv_rows[row["filename"]]["bbox_gold"])
        assert old == {k: [b[k] for b in gold] for k in ("x", "y", "width", "height")}
    assert n_gold >= 2
    captions = [r["caption_text"] for r in rows]
    assert sum("T2" in c for c in captions) >= len(captions) // 2
    assert any("FLAIR" in c and "T2" not in c for c in captions)


def test_gold_boxes_are_component_bounding_boxes():
    mask = np.zeros((20, 30), bool)
    mask[2:5, 3:9] = True  # 3 x 6 component
    mask[10:15, 20:22] = True
    mask[18, 0] = True  # a one-pixel sliver: no box
    boxes = nova.gold_boxes(mask)
    assert [(b["x"], b["y"], b["width"], b["height"]) for b in boxes] == [(3, 2, 6, 3), (20, 10, 2, 5)]


def test_preview_shows_outlined_lesions(out):
    img = np.asarray(Image.open(out / "preview.png").convert("RGB")).astype(int)
    red = (img[..., 0] > 200) & (img[..., 1] < 80) & (img[..., 2] < 80)
    assert img.shape[0] > 400 and red.sum() > 50


# ----------------------------------------------------------------------------- errors and template
def test_non_empty_foreign_folder_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(CdiffError) as err:
        syn.synthesize(tmp_path, preset="tiny")
    assert "\n" not in str(err.value) and "not empty" in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # untouched
    with pytest.raises(CdiffError):
        syn.synthesize(tmp_path / "notes.txt", preset="tiny")
    with pytest.raises(CdiffError):
        syn.synthesize(tmp_path / "new", preset="huge")  # type: ignore[arg-type]


def test_interrupted_run_leaves_no_partial_files_and_can_be_rerun(tmp_path, monkeypatch):
    real = syn.make_subject

    def failing(kind, seed, idx, **kw):
        if idx == 1:
            raise KeyboardInterrupt
        return real(kind, seed, idx, **kw)

    monkeypatch.setattr(syn, "make_subject", failing)
    with pytest.raises(KeyboardInterrupt):
        syn.synthesize(tmp_path, preset="tiny")
    names = [p.name for p in tmp_path.rglob("*") if p.is_file()]
    assert not [n for n in names if n.endswith(".tmp")]
    assert json.loads((tmp_path / "synthesize.json").read_text())["status"] == "incomplete"
    assert syn._check_out_dir(tmp_path) == []  # recognised as ours: a rerun is allowed


def test_rerun_removes_only_our_stale_files(tmp_path):
    keep = ["synthesize.json", "notes.txt", "IXI/IXI002-HH-0001-T2.nii.gz", "IXI/readme.md"]
    stale = ["IXI/IXI099-Guys-0042-T2.nii.gz", "IXI/masks/IXI099-Guys-0042-T2_mask.nii.gz",
             "BraTS2021/BraTS2021_00100/BraTS2021_00100_seg.nii.gz", "NOVA/images/syn0099.png",
             "recorded/by/old/run.txt"]
    for rel in keep + stale:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    syn._remove_stale(tmp_path, old=["recorded/by/old/run.txt", "../outside.txt"], new=keep[:1] + keep[2:3])
    left = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert left == sorted(keep)
    assert not (tmp_path / "BraTS2021" / "BraTS2021_00100").exists()  # emptied case folder removed


def test_template_fast_path_matches_nilearn(monkeypatch):
    """The bundled files read with nibabel == nilearn's load_mni152_*(resolution=1) functions."""
    fast = sources.load_mni152()
    monkeypatch.setattr(sources, "_template_files", lambda: None)  # force the nilearn functions
    slow = sources.load_mni152()
    for a, b in zip(fast, slow):
        assert a.shape == b.shape and np.allclose(a, b, atol=1e-6)
    t1, gm, wm, mask, _ = fast
    assert t1.shape == (197, 233, 189) and 0.2 < mask.mean() < 0.5 and gm.max() == wm.max() == 1
