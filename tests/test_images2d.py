"""2-D images: safe loading, letterbox preprocessing and its inverse, the 2-D store."""

from __future__ import annotations

import csv
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cdiff_cli.config import DataConfig, DataSource
from cdiff_cli.data.images2d import (
    box_from_model_grid,
    box_to_model_grid,
    foreground_mask,
    from_model_grid,
    list_images,
    load_image_2d,
    to_model_grid,
    to_model_input,
)
from cdiff_cli.data.store2d import prepare_2d
from cdiff_cli.errors import DataError


def phantom(h: int, w: int, seed: int = 0, blob: tuple[float, float] | None = None) -> np.ndarray:
    """An ellipse 'head' with texture on a zero background, optionally a bright blob."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    inside = ((yy - h / 2) / (0.42 * h)) ** 2 + ((xx - w / 2) / (0.42 * w)) ** 2 <= 1
    img = np.where(inside, 0.4 + 0.1 * rng.standard_normal((h, w)), 0.0).astype(np.float32)
    if blob is not None:
        img += 0.8 * np.exp(-((yy - blob[0]) ** 2 + (xx - blob[1]) ** 2) / (2 * 4.0**2))
    return np.clip(img, 0, 1)


def save_png(path: Path, arr: np.ndarray, bits: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.round(arr * (255 if bits == 8 else 65535)).astype(np.uint8 if bits == 8 else np.uint16)
    Image.fromarray(a).save(path)
    return path


def png_header_only(path: Path, w: int, h: int) -> Path:
    """A PNG that claims w x h pixels (IHDR) with a tiny IDAT: a decompression-bomb shape."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
                     + chunk(b"IEND", b""))
    return path


def float16_tiff(path: Path) -> Path:
    """A 2x2 half-float TIFF holding a NaN (PIL cannot decode half floats)."""
    data = np.array([[0.5, np.nan], [0.25, 1.0]], dtype="<f2").tobytes()
    entries = [(256, 3, 2), (257, 3, 2), (258, 3, 16), (259, 3, 1), (262, 3, 1), (273, 4, None), (277, 3, 1),
               (278, 3, 2), (279, 4, len(data)), (339, 3, 3)]
    data_off = 8 + 2 + len(entries) * 12 + 4
    b = bytearray(b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(entries)))
    for tag, typ, val in entries:
        val = data_off if val is None else val
        b += struct.pack("<HHIHH", tag, typ, 1, val, 0) if typ == 3 else struct.pack("<HHII", tag, typ, 1, val)
    path.write_bytes(bytes(b + struct.pack("<I", 0) + data))
    return path


# --------------------------------------------------------------------------------------
# Loading


def test_load_grayscale_8_and_16_bit(tmp_path):
    img = phantom(40, 60)
    a8 = load_image_2d(save_png(tmp_path / "a.png", img))
    a16 = load_image_2d(save_png(tmp_path / "b.png", img, bits=16))
    assert a8.shape == a16.shape == (40, 60) and a8.dtype == a16.dtype == np.float32
    assert 0 <= a8.min() and a8.max() <= 1
    assert np.abs(a8 - img).max() <= 0.5 / 255 + 1e-6
    assert np.abs(a16 - img).max() <= 0.5 / 65535 + 1e-6
    three = load_image_2d(tmp_path / "a.png", channels=3)
    assert three.shape == (3, 40, 60) and np.array_equal(three[0], three[2])


def test_load_rgb_jpeg_bmp_tiff(tmp_path):
    rng = np.random.default_rng(1)
    rgb = (rng.random((20, 30, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    lum = load_image_2d(tmp_path / "c.png")
    expect = (rgb.astype(np.float32) / 255) @ np.array([0.299, 0.587, 0.114], np.float32)
    assert np.allclose(lum, expect, atol=1e-5)
    assert np.allclose(load_image_2d(tmp_path / "c.png", channels=3), rgb.transpose(2, 0, 1) / 255, atol=1e-6)
    Image.fromarray(rgb).save(tmp_path / "c.JPG", quality=95)
    Image.fromarray(rgb).save(tmp_path / "c.bmp")
    assert load_image_2d(tmp_path / "c.JPG").shape == (20, 30)
    assert np.allclose(load_image_2d(tmp_path / "c.bmp"), expect, atol=1e-5)
    f = (rng.random((8, 9)) * 1000).astype(np.float32)
    Image.fromarray(f).save(tmp_path / "f.tif")
    t = load_image_2d(tmp_path / "f.tif")
    assert t.min() == 0 and t.max() == 1 and np.allclose(t, (f - f.min()) / (f.max() - f.min()), atol=1e-6)


def _bad_inputs(tmp: Path) -> dict[str, tuple[Path, str]]:
    (tmp / "adir.png").mkdir()
    (tmp / "empty.png").write_bytes(b"")
    (tmp / "text.png").write_text("hello, not an image")
    good = save_png(tmp / "good.png", phantom(64, 64))
    (tmp / "trunc.png").write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    jpg = tmp / "j.jpg"
    Image.fromarray((phantom(64, 64) * 255).astype(np.uint8)).save(jpg)
    (tmp / "trunc.jpg").write_bytes(jpg.read_bytes()[:200])
    save_png(tmp / "const.png", np.full((10, 10), 0.5, np.float32))
    nan = np.ones((5, 6), np.float32)
    nan[2, 3] = np.nan
    Image.fromarray(nan).save(tmp / "nan.tif")
    frames = [Image.fromarray((phantom(8, 8, s) * 255).astype(np.uint8)) for s in range(3)]
    frames[0].save(tmp / "multi.tif", save_all=True, append_images=frames[1:])
    return {
        "missing": (tmp / "nope.png", "not found"),
        "directory": (tmp / "adir.png", "directory"),
        "empty": (tmp / "empty.png", "empty"),
        "not_image": (tmp / "text.png", "not a readable image"),
        "truncated_png": (tmp / "trunc.png", "truncated"),
        "truncated_jpg": (tmp / "trunc.jpg", "truncated"),
        "bomb": (png_header_only(tmp / "bomb.png", 20000, 20000), "too large"),
        "over_pixel_limit": (png_header_only(tmp / "big.png", 7000, 7000), "over the limit"),
        "over_side_limit": (png_header_only(tmp / "long.png", 10000, 4), "over the limit"),
        "constant": (tmp / "const.png", "constant"),
        "nan_float_tiff": (tmp / "nan.tif", "NaN"),
        "float16_tiff": (float16_tiff(tmp / "half.tif"), "16-bit float"),
        "multi_frame": (tmp / "multi.tif", "frames"),
    }


def test_every_bad_input_is_one_line_dataerror_naming_the_file(tmp_path):
    for case, (path, needle) in _bad_inputs(tmp_path).items():
        with pytest.raises(DataError) as e:
            load_image_2d(path)
        msg = str(e.value)
        assert str(path) in msg, case
        assert needle.lower() in msg.lower(), (case, msg)
        assert "\n" not in msg, case


def test_list_images(tmp_path):
    for rel in ["b.png", "a.PNG", "c.jpeg", ".hidden.png", "notes.txt", "sub/d.tif", ".cache/e.png", "sub/.x.bmp"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    assert [p.name for p in list_images(tmp_path)] == ["a.PNG", "b.png", "c.jpeg"]
    assert [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path, recursive=True)] == [
        "a.PNG", "b.png", "c.jpeg", "sub/d.tif"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        list_images(tmp_path / "empty")
    with pytest.raises(DataError, match="not found"):
        list_images(tmp_path / "missing")
    with pytest.raises(DataError, match="is a file, expected a folder"):
        list_images(tmp_path / "b.png")


# --------------------------------------------------------------------------------------
# Preprocessing


def test_foreground_mask_methods():
    img = phantom(50, 70)
    m, how = foreground_mask(img)
    assert how == "nonzero" and np.array_equal(m, img > 0)
    raw = img + 0.02  # no exact-zero background: a raw, not skull-stripped image
    raw[:3, :3] = 0.9  # a bright corner speck is not the largest component
    m2, how2 = foreground_mask(raw)
    assert how2 == "otsu" and not m2[:3, :3].any()
    inter = (m2 & (img > 0)).sum() / (m2 | (img > 0)).sum()
    assert inter > 0.9


def test_to_model_input_rescale_and_shape():
    img = phantom(60, 90) * 0.5
    x, meta = to_model_input(img, (32, 48))
    assert x.shape == (32, 48) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    assert meta["kind"] == "letterbox2d" and meta["foreground"] == "nonzero"
    assert meta["orig_hw"] == [60, 90] and meta["model_hw"] == [32, 48]
    lo, hi = np.percentile(img[img > 0], [1, 99])
    assert np.allclose(meta["intensity"], [lo, hi])
    assert x[0, 0] == 0  # background/padding
    json.dumps(meta)  # stored in subjects.json
    with pytest.raises(DataError, match="shape"):
        to_model_input(img, (32, 48), mask=np.ones((5, 5), bool))
    with pytest.raises(DataError, match="empty"):
        to_model_input(img, (32, 48), mask=np.zeros_like(img, bool))


@pytest.mark.parametrize("hw, size", [((150, 300), (96, 96)), ((300, 120), (96, 96)), ((123, 211), (64, 96))])
def test_letterbox_round_trip_keeps_blob_position(hw, size):
    h, w = hw
    blob = (0.3 * h, 0.7 * w)
    img = phantom(h, w, blob=blob)
    x, meta = to_model_input(img, size)
    th, tw = size
    (nh, nw), (top, left) = meta["resized_hw"], meta["pad"]
    assert (nh == th or nw == tw) and top + nh <= th and left + nw <= tw
    assert abs(nh / nw - h / w) < 0.05  # aspect ratio kept
    assert x[:top].max(initial=0) == 0 and x[:, :left].max(initial=0) == 0  # padding is zero
    back = from_model_grid(x, meta)
    assert back.shape == (h, w)
    r, c = np.unravel_index(np.argmax(back), back.shape)
    assert abs(r - blob[0]) <= 2 and abs(c - blob[1]) <= 2
    # a map made on the model grid lands where the box mapping says it should
    bx, by, _, _ = box_to_model_grid((blob[1], blob[0], 0, 0), meta)
    yy, xx = np.mgrid[0:th, 0:tw]
    amap = np.exp(-((yy - by + 0.5) ** 2 + (xx - bx + 0.5) ** 2) / (2 * 1.5**2)).astype(np.float32)
    up = from_model_grid(amap, meta)
    wts = up / up.sum()
    cy, cx = (wts * np.mgrid[0:h, 0:w][0]).sum(), (wts * np.mgrid[0:h, 0:w][1]).sum()
    assert abs(cy - (blob[0] - 0.5)) <= 2 and abs(cx - (blob[1] - 0.5)) <= 2
    # boxes round-trip exactly; batch maps keep their leading dims
    assert np.allclose(box_from_model_grid(box_to_model_grid((10, 20, 30, 5), meta), meta), (10, 20, 30, 5))
    assert from_model_grid(np.stack([x, x]), meta).shape == (2, h, w)
    with pytest.raises(ValueError):
        from_model_grid(np.zeros((5, 5)), meta)


def test_mask_to_model_grid_is_binary():
    img = phantom(80, 40)
    fg, _ = foreground_mask(img)
    _, meta = to_model_input(img, (32, 32))
    m = to_model_grid(fg.astype(np.float32), meta, binary=True)
    assert m.dtype == np.uint8 and set(np.unique(m)) <= {0, 1}
    assert abs(m.mean() - fg.mean() * (meta["resized_hw"][1] / 32)) < 0.05


# --------------------------------------------------------------------------------------
# The 2-D store


def _cfg(src: DataSource, **kw) -> DataConfig:
    return DataConfig(sources=[src], size=(48, 32, 1), **kw)  # image_hw = (32, 48)


def test_prepare_folder_store(tmp_path):
    root = tmp_path / "imgs"
    save_png(root / "b.png", phantom(50, 80, 1))
    save_png(root / "a.png", phantom(70, 40, 2), bits=16)
    save_png(root / "sub" / "c.png", phantom(30, 30, 3))
    src = DataSource(name="pngs", layout="folder", path=root)
    out = tmp_path / "prepared" / "pngs"
    summary = prepare_2d(src, _cfg(src), out)
    assert summary["images"] == 3 and summary["skipped"] == [] and summary["image_hw"] == [32, 48]
    vol, masks = np.load(out / "volumes.npy"), np.load(out / "masks.npy")
    assert vol.shape == (3, 1, 32, 48) and vol.dtype == np.float32 and 0 <= vol.min() and vol.max() <= 1
    assert masks.shape == (3, 1, 32, 48) and masks.dtype == np.uint8
    subj = json.loads((out / "subjects.json").read_text())
    assert [s["id"] for s in subj["subjects"]] == ["a.png", "b.png", "sub/c.png"]
    s0 = subj["subjects"][0]
    assert s0["orig_hw"] == [70, 40] and s0["meta"]["model_hw"] == [32, 48] and s0["meta"]["foreground"] == "nonzero"
    assert from_model_grid(vol[0, 0], s0["meta"]).shape == (70, 40)
    rows = list(csv.DictReader((out / "slices.csv").read_text().splitlines()))
    assert list(rows[0]) == ["volume", "subject", "slice", "brain_fraction", "lesion_fraction"]
    assert [r["subject"] for r in rows] == ["a.png", "b.png", "sub/c.png"] and {r["slice"] for r in rows} == {"0"}
    assert np.isclose(float(rows[1]["brain_fraction"]), masks[1].mean(), atol=1e-5)
    assert not list(out.parent.glob(".*tmp"))  # atomic: no temp dirs left


def test_prepare_on_error_fail_and_skip(tmp_path):
    root = tmp_path / "imgs"
    save_png(root / "good.png", phantom(40, 40))
    (root / "broken.png").write_text("junk")
    src = DataSource(name="x", layout="folder", path=root)
    out = tmp_path / "out"
    with pytest.raises(DataError, match="broken.png"):
        prepare_2d(src, _cfg(src), out)
    assert not out.exists()
    with pytest.warns(UserWarning, match="broken.png"):
        summary = prepare_2d(src, _cfg(src, on_error="skip"), out)
    assert summary["images"] == 1 and summary["skipped"][0]["file"] == "broken.png"
    assert json.loads((out / "subjects.json").read_text())["skipped"][0]["file"] == "broken.png"
    (root / "good.png").write_text("also junk")
    with pytest.raises(DataError, match="none of the 2 images"), pytest.warns(UserWarning):
        prepare_2d(src, _cfg(src, on_error="skip"), out)


def test_prepare_nova_store(tmp_path):
    root = tmp_path / "nova"
    save_png(root / "images" / "p1.png", phantom(60, 90, 1, blob=(20, 60)))
    save_png(root / "images" / "p2.png", phantom(90, 60, 2))
    save_png(root / "images" / "lonely.png", phantom(50, 50, 3))
    box = pa.struct([("x", pa.float64()), ("y", pa.float64()), ("width", pa.float64()), ("height", pa.float64()),
                     ("source", pa.string())])
    table = pa.table({
        "filename": ["p2.png", "p1.png", "ghost.png"],
        "case_id": ["2", "1", "9"], "scan_id": ["a", "b", "c"],
        "caption_text": ["FLAIR only", "Axial T2 shows a mass", "T2"],
        "image_path": ["images/p2.png", "images/p1.png", "images/ghost.png"],
        "meta": ["{}", "{}", "{}"],
        "bboxes": pa.array([[], [{"x": 50.0, "y": 10.0, "width": 20.0, "height": 20.0, "source": "gold"},
                                  {"x": 48.0, "y": 9.0, "width": 22.0, "height": 22.0, "source": "r1"}], []],
                           type=pa.list_(box)),
    })
    (root / "data").mkdir()
    pq.write_table(table, root / "data" / "nova-v1.parquet")
    src = DataSource(name="nova", layout="nova", path=root, role="lesion")
    out = tmp_path / "prepared" / "nova"
    with pytest.warns(UserWarning):
        summary = prepare_2d(src, _cfg(src), out)
    assert summary["images"] == 2 and summary["t2_images"] == 1 and summary["gold_boxes"] == 1
    assert summary["unmatched_images"] == ["images/lonely.png"] and summary["unmatched_records"] == ["ghost.png"]
    subj = json.loads((out / "subjects.json").read_text())["subjects"]
    assert [s["id"] for s in subj] == ["images/p1.png", "images/p2.png"]
    assert subj[0]["gold_boxes"] == [[50.0, 10.0, 20.0, 20.0]] and subj[0]["is_t2"] is True
    assert subj[0]["other_boxes"] == {"r1": [[48.0, 9.0, 22.0, 22.0]]} and subj[0]["case_id"] == "1"
    assert subj[1]["gold_boxes"] == [] and subj[1]["is_t2"] is False
    rows = list(csv.DictReader((out / "slices.csv").read_text().splitlines()))
    assert float(rows[0]["lesion_fraction"]) > 0 and float(rows[1]["lesion_fraction"]) == 0
    assert np.load(out / "volumes.npy").shape == (2, 1, 32, 48)


def test_prepare_nova_without_annotations_or_matches(tmp_path):
    root = tmp_path / "nova"
    save_png(root / "x.png", phantom(30, 30))
    src = DataSource(name="nova", layout="nova", path=root)
    with pytest.raises(DataError, match="no NOVA annotations"):
        prepare_2d(src, _cfg(src), tmp_path / "out")
    (root / "ann.csv").write_text("filename,caption_text,bbox_gold\ny.png,T2,\n")
    with pytest.raises(DataError, match="match none of the 1 images"):
        prepare_2d(src, _cfg(src), tmp_path / "out")
