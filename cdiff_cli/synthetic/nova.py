"""NOVA-style 2-D images for the synthetic benchmark, and the preview grid.

NOVA (METHOD.md sec. 6): 8-bit PNG axial slices of about 480 px, NOT skull-stripped, from
subjects never seen in training; ``data/nova-v1.parquet`` (filename, case_id, scan_id,
caption_text, image_path, meta, bboxes = list of {x, y, width, height, source}) and the older
``data/nova-v1.csv`` with a ``bbox_gold`` dict string. Boxes are top-left x, y and width,
height in pixels, counting pixels (a one-pixel lesion is 1 x 1); the gold box of a lesion is
the bounding box of one 8-connected component of its mask in the slice.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable

import numpy as np

from cdiff_cli.synthetic import anatomy as anat
from cdiff_cli.synthetic import lesions as les

MIN_BOX_PIXELS = 8  # smaller slivers of a lesion cut at its pole get no gold box
TILE = 192
KINDS = ("tumour", "ms", "healthy")


def _to_uint8(img: np.ndarray, pct: float = 99.5, top: float = 235.0) -> np.ndarray:
    vals = img[img > 0]
    scale = np.percentile(vals, pct) if vals.size else 1.0
    return np.clip(img / max(float(scale), 1e-6) * top, 0, 255).round().astype(np.uint8)


def gold_boxes(mask: np.ndarray) -> list[dict]:
    """Bounding boxes (x, y, width, height) of the 8-connected components of a (rows, cols) mask."""
    from scipy import ndimage

    lab, _ = ndimage.label(mask, structure=np.ones((3, 3), bool))
    boxes = []
    for i, sl in enumerate(ndimage.find_objects(lab), start=1):
        if sl is None or int((lab[sl] == i).sum()) < MIN_BOX_PIXELS:
            continue
        boxes.append({"x": sl[1].start, "y": sl[0].start, "width": sl[1].stop - sl[1].start,
                      "height": sl[0].stop - sl[0].start, "source": "gold"})
    return boxes


def _slice_geometry(rng: np.random.Generator, height_mm: float) -> anat.Geometry:
    """A radiological axial slice: columns run patient right -> left, rows anterior -> posterior."""
    rows = int(rng.integers(448, 513))
    cols = rows if rng.random() < 0.6 else int(rng.integers(448, 513))
    spacing = rng.uniform(215.0, 245.0) / max(rows, cols)
    shape = (cols, rows, 1)
    a = np.eye(4)
    a[:3, :3] = np.diag([-spacing, -spacing, spacing])
    centre = np.array([*rng.uniform(-8, 8, 2), height_mm])
    a[:3, 3] = centre - a[:3, :3] @ ((np.array(shape) - 1) / 2.0)
    return anat.Geometry(shape, a, anchor=np.zeros(3))


_EXTRA = {"wmh": "scattered white matter hyperintensities of presumed small-vessel origin",
          "haemorrhage": "a hypointense focus compatible with blood products",
          "lacune": "a small CSF-isointense lacune"}


def _caption(rng: np.random.Generator, kind: str, flair: bool, where: tuple[str, str] | None,
             core: str, extra: list[str]) -> str:
    seq = "FLAIR" if flair else str(rng.choice(["T2-weighted", "T2"]))
    also = "".join(f"; also {_EXTRA[k]}" for k in extra)
    if kind == "tumour":
        side, lobe = where or ("left", "frontal")
        word = {"necrotic": "centrally necrotic ", "cystic": "cystic ", "haemorrhagic": "haemorrhagic "}.get(core, "")
        return (f"Axial {seq} image: heterogeneous {word}mass in the {side} {lobe} lobe "
                f"with surrounding vasogenic oedema{also}.")
    if kind == "ms":
        return (f"Axial {seq} image: multiple ovoid periventricular white matter "
                f"hyperintensities, compatible with demyelinating disease{also}.")
    return f"Axial {seq} image of the brain without focal abnormality."


def _extras(rng: np.random.Generator, tpl, points: np.ndarray) -> list:
    """A second pathology now and then (NOVA images often show several)."""
    if rng.random() >= 0.4:
        return []
    kind = str(rng.choice(["wmh", "haemorrhage", "lacune"]))
    if kind == "wmh":
        return les.place_wmh(rng, tpl, int(rng.integers(1, 4)), points)
    return les.place_focal(rng, tpl, kind, points)


def nova_image(seed_rng: Callable[[int, int], np.random.Generator], idx: int, anatomy: str = "mni152") -> dict:
    """One NOVA record: 8-bit image (rows, cols), lesion mask, exact brain mask, boxes, caption and meta."""
    rng = seed_rng(idx, 0)
    kind = KINDS[idx % 3]
    flair = idx % 7 == 3
    warp = anat.random_warp(rng, anatomy=anatomy)
    tpl = anat.template(anatomy)
    con = anat.random_contrast(rng, skull=True, level=rng.uniform(0.9, 1.1), real=tuple(sorted(tpl.real or ())))
    for _attempt in range(6):
        lo, hi = {"tumour": (-10, 35), "ms": (2, 24), "healthy": (-25, 45)}[kind]
        geom = _slice_geometry(rng, rng.uniform(lo, hi))
        lesions: list = []
        if kind != "healthy":
            cols, rows = geom.shape[:2]
            pix = np.stack(np.meshgrid(np.arange(0, cols, 4), np.arange(0, rows, 4), [0], indexing="ij"), -1)
            points = anat.map_points(warp, geom, pix.reshape(-1, 3).astype(np.float64)).numpy()
            try:
                if kind == "tumour":
                    lesions = [les.place_tumour(rng, tpl, points)]
                else:
                    lesions = les.place_ms(rng, tpl, int(rng.integers(3, 13)), points)
            except ValueError:
                continue
            lesions += _extras(rng, tpl, points)
            for lesion in lesions:  # cut the lesion off its equator now and then
                lesion.centre[2] += rng.uniform(-0.35, 0.35) * float(lesion.radii.mean())
        r = anat.render(geom, warp, con, seed_rng(idx, 1 + _attempt), lesions=lesions)
        image = _to_uint8(r.image[:, :, 0].T)
        mask = (r.labels[:, :, 0].T > 0) if r.labels is not None else np.zeros(image.shape, bool)
        brain = r.brain[:, :, 0].T
        boxes = gold_boxes(mask)
        if kind == "healthy" or boxes:
            break
    else:  # no lesion showed in six slices: keep the last slice, without lesions
        kind, lesions, boxes, mask = "healthy", [], [], np.zeros(image.shape, bool)
        r = anat.render(geom, warp, con, seed_rng(idx, 7))
        image, brain = _to_uint8(r.image[:, :, 0].T), r.brain[:, :, 0].T
    all_boxes = list(boxes)
    if boxes and rng.random() < 0.5:  # a second rater, a few pixels off
        for b in boxes:
            j = rng.integers(-3, 4, 4)
            x, y = max(0, b["x"] + int(j[0])), max(0, b["y"] + int(j[1]))
            all_boxes.append({"x": x, "y": y, "width": int(min(max(1, b["width"] + j[2]), image.shape[1] - x)),
                              "height": int(min(max(1, b["height"] + j[3]), image.shape[0] - y)),
                              "source": "rater1"})
    where = les.describe(lesions[0].centre + tpl.origin) if kind == "tumour" else None
    core = lesions[0].core_kind if kind == "tumour" and lesions[0].core > 0 else "none"
    extra = sorted({x.kind for x in lesions if getattr(x, "kind", "ms") != "ms"})
    case = f"case{idx + 1:04d}"
    meta = {"synthetic": True, "kind": kind, "sequence": "FLAIR" if flair else "T2", "anatomy": anatomy,
            "contrast": con.real or "synthetic", "pathologies": [kind, *extra] if kind != "healthy" else [],
            "age": int(rng.integers(18, 80)), "sex": str(rng.choice(["F", "M"])),
            "pixel_spacing_mm": round(float(abs(geom.affine[0, 0])), 4)}
    return {"filename": f"syn{idx + 1:04d}.png", "case_id": case, "scan_id": f"{case}_ax",
            "caption_text": _caption(rng, kind, flair, where, core, extra), "meta": json.dumps(meta, sort_keys=True),
            "bboxes": all_boxes, "image": image, "mask": mask, "brain": np.ascontiguousarray(brain), "kind": kind}


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def parquet_bytes(records: list[dict]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    box = pa.struct([("x", pa.int64()), ("y", pa.int64()), ("width", pa.int64()), ("height", pa.int64()),
                     ("source", pa.string())])
    cols = ("filename", "case_id", "scan_id", "caption_text", "image_path", "meta")
    schema = pa.schema([(c, pa.string()) for c in cols] + [("bboxes", pa.list_(box))])
    table = pa.Table.from_pylist([{k: r[k] for k in (*cols, "bboxes")} for r in records], schema=schema)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def csv_bytes(records: list[dict]) -> bytes:
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\n")
    out.writerow(["filename", "case_id", "scan_id", "caption_text", "image_path", "bbox_gold"])
    for r in records:
        gold = [b for b in r["bboxes"] if b["source"] == "gold"]
        d = {k: [b[k] for b in gold] for k in ("x", "y", "width", "height")}
        out.writerow([r["filename"], r["case_id"], r["scan_id"], r["caption_text"], r["image_path"], repr(d)])
    return buf.getvalue().encode("utf-8")


def write_image(writer, seed_rng: Callable[[int, int], np.random.Generator], i: int, anatomy: str,
                tiles: list) -> tuple[dict, dict]:
    """Write image ``i``; returns its annotation record and its summary."""
    rec = nova_image(seed_rng, i, anatomy)
    image, mask, kind = rec.pop("image"), rec.pop("mask"), rec.pop("kind")
    rec.pop("brain")
    rec["image_path"] = f"images/{rec['filename']}"
    writer.put(f"NOVA/{rec['image_path']}", lambda im=image: png_bytes(im))
    if len(tiles) < 3 and kind != "healthy":
        tiles.append((image / 255.0, mask, [b for b in rec["bboxes"] if b["source"] == "gold"]))
    meta = json.loads(rec["meta"])
    info = {"filename": rec["filename"], "kind": kind, "anatomy": anatomy, "pathologies": meta["pathologies"],
            "gold_boxes": sum(b["source"] == "gold" for b in rec["bboxes"]),
            "t2_caption": "T2" in rec["caption_text"]}
    return rec, info


def write_annotations(writer, records: list[dict]) -> None:
    """The parquet and CSV annotations of all images (in file order)."""
    writer.put("NOVA/data/nova-v1.parquet", lambda: parquet_bytes(records))
    writer.put("NOVA/data/nova-v1.csv", lambda: csv_bytes(records))


# ----------------------------------------------------------------------------- preview
def display_slice(r: anat.Rendered, geom: anat.Geometry) -> tuple[np.ndarray, np.ndarray, list]:
    """A radiological axial slice (anterior up, patient right on the left) of a rendered volume:
    (image scaled to [0, 1], lesion mask, no boxes); the slice with the most lesion, else mid-brain."""
    from nibabel.orientations import apply_orientation, io_orientation

    ornt = io_orientation(geom.affine)
    img = apply_orientation(r.image, ornt)
    brain = apply_orientation(r.brain, ornt)
    lab = apply_orientation(r.labels, ornt) > 0 if r.labels is not None else np.zeros(img.shape, bool)
    per = lab.sum((0, 1))
    if per.max() > 0:
        k = int(np.argmax(per))
    else:
        zs = np.nonzero(brain.any((0, 1)))[0]
        k = int(zs[0] + 0.6 * (zs[-1] - zs[0])) if zs.size else img.shape[2] // 2
    view = lambda a: np.ascontiguousarray(a[::-1, ::-1, k].T)  # noqa: E731
    return _to_uint8(view(img)) / 255.0, view(lab), []


def _tile(image: np.ndarray, mask: np.ndarray, boxes: list):
    from PIL import Image, ImageDraw

    h, w = image.shape
    side = max(h, w)
    scale = TILE / side
    canvas = np.zeros((side, side), np.float64)
    m = np.zeros((side, side), bool)
    oy, ox = (side - h) // 2, (side - w) // 2
    canvas[oy:oy + h, ox:ox + w] = image
    m[oy:oy + h, ox:ox + w] = mask
    gray = Image.fromarray((canvas * 255).astype(np.uint8)).resize((TILE, TILE), Image.BILINEAR)
    small = np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize((TILE, TILE), Image.NEAREST)) > 0
    inner = small.copy()
    inner[1:-1, 1:-1] = small[1:-1, 1:-1] & small[:-2, 1:-1] & small[2:, 1:-1] & small[1:-1, :-2] & small[1:-1, 2:]
    rgb = np.repeat(np.asarray(gray)[..., None], 3, axis=2)
    rgb[small & ~inner] = (255, 40, 40)
    tile = Image.fromarray(rgb)
    draw = ImageDraw.Draw(tile)
    for b in boxes:
        x0, y0 = (b["x"] + ox) * scale, (b["y"] + oy) * scale
        draw.rectangle([x0, y0, x0 + b["width"] * scale, y0 + b["height"] * scale], outline=(255, 220, 0))
    return tile


def preview_png(tiles: dict[str, list]) -> bytes:
    """A grid: one row per kind (healthy IXI, BraTS tumour, MSLUB MS, NOVA), lesions outlined."""
    from PIL import Image, ImageDraw

    names = {"healthy": "IXI healthy", "tumour": "BraTS tumour", "ms": "MSLUB MS", "nova": "NOVA"}
    rows = [k for k in names if tiles.get(k)]
    pad, label = 4, 14
    width = 3 * TILE + 4 * pad
    sheet = Image.new("RGB", (width, max(1, len(rows)) * (TILE + label + pad) + pad), (0, 0, 0))
    draw = ImageDraw.Draw(sheet)
    for r, key in enumerate(rows):
        y = pad + r * (TILE + label + pad)
        draw.text((pad, y), names[key], fill=(230, 230, 230))
        for c, (image, mask, boxes) in enumerate(tiles[key][:3]):
            sheet.paste(_tile(image, mask, boxes), (pad + c * (TILE + pad), y + label))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return buf.getvalue()


def anatomy_png(per_anatomy: dict[str, list]) -> bytes:
    """One labelled tile per anatomy (its first subject), four to a row."""
    from PIL import Image, ImageDraw

    names = list(per_anatomy)
    pad, label, cols = 4, 14, 4
    rows = max(1, -(-len(names) // cols))
    sheet = Image.new("RGB", (cols * (TILE + pad) + pad, rows * (TILE + label + pad) + pad), (0, 0, 0))
    draw = ImageDraw.Draw(sheet)
    for k, name in enumerate(names):
        x, y = pad + (k % cols) * (TILE + pad), pad + (k // cols) * (TILE + label + pad)
        draw.text((x, y), name, fill=(230, 230, 230))
        sheet.paste(_tile(*per_anatomy[name][0]), (x, y + label))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return buf.getvalue()
