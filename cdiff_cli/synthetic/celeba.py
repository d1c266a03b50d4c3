"""A CelebA-layout fixture drawn by the project: cartoon faces with and without glasses.

``synthesize_celeba(out_dir)`` writes exactly the real aligned-CelebA formats, so the
``celeba`` reader, ``prepare`` and the contrastive-analysis protocol run without the real
data (which cannot be downloaded here)::

    img_align_celeba/000001.jpg ...   178 x 218 RGB JPEGs, faces roughly where aligned CelebA has them
    list_attr_celeba.txt              count line, the 40 attribute names, ``file  1 -1 ...`` rows
    list_eval_partition.txt           ``file 0|1|2`` (train/val/test)
    identity_CelebA.txt               ``file identity``
    synthesize.json                   seed, counts

An identity is a consistent set of drawing parameters (skin and hair colour, hair style, face
shape, eye spacing and colour, beard, lipstick); each image varies pose (shift, rotation,
scale), lighting (brightness, a left-right gradient), background, expression and noise.
About 30 % of the images wear glasses (two dark rims with tinted lenses, a bridge and
temples: the target), about 8 % a hat and 5 % earrings (accessories, so the exclusion rule
matters). Unlike the real CelebA, whose partitions separate identities, each identity's
images are spread over train/val/test, so the k-NN identity probe can train on train images
and test on test images of the same people. Same seed -> byte-identical files.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from cdiff_cli.errors import CdiffError
from cdiff_cli.fileio import write_bytes, write_json, write_text
from cdiff_cli.data.contrastive_attributes import CELEBA_ATTRIBUTES

FORMAT = "cdiff-synthetic-celeba-v1"
SIZE = (178, 218)  # (W, H) of aligned CelebA
SS = 2  # drawn at 2x, then downsampled: antialiased edges
PRESETS = {"celeba": (40, 12), "celeba-tiny": (10, 8)}  # identities, images per identity
P_GLASSES, P_HAT, P_EARRINGS = 0.3, 0.08, 0.05
_SKIN = [(255, 224, 196), (241, 194, 125), (224, 172, 105), (198, 134, 66), (141, 85, 36), (250, 208, 180)]
_HAIR = {"Black_Hair": (30, 25, 25), "Brown_Hair": (110, 70, 40), "Blond_Hair": (225, 195, 120),
         "Gray_Hair": (165, 165, 165)}
_IRIS = [(90, 60, 30), (60, 110, 160), (70, 120, 70), (50, 40, 30)]


def _identity(rng: np.random.Generator) -> dict[str, Any]:
    hair = str(rng.choice(list(_HAIR)))
    skin_i = int(rng.integers(len(_SKIN)))
    male = bool(rng.random() < 0.5)
    return {
        "skin": np.clip(np.array(_SKIN[skin_i]) + rng.integers(-12, 13, 3), 0, 255),
        "pale": skin_i in (0, 5),
        "hair": hair, "hair_rgb": np.clip(np.array(_HAIR[hair]) + rng.integers(-10, 11, 3), 0, 255),
        "style": str(rng.choice(["short", "long", "bald"], p=[0.5, 0.42, 0.08])),
        "face_w": float(rng.uniform(44, 54)), "face_h": float(rng.uniform(60, 70)),
        "eye_dx": float(rng.uniform(17, 22)), "eye_y": float(rng.uniform(108, 114)),
        "iris": _IRIS[int(rng.integers(len(_IRIS)))], "male": male,
        "beard": male and rng.random() < 0.35, "lipstick": (not male) and rng.random() < 0.6,
        "shirt": rng.integers(30, 220, 3), "other": rng.random(len(CELEBA_ATTRIBUTES)) < 0.2,
        "young": bool(rng.random() < 0.7),
    }


def _ellipse(d: ImageDraw.ImageDraw, cx: float, cy: float, rx: float, ry: float, **kw: Any) -> None:
    d.ellipse([SS * (cx - rx), SS * (cy - ry), SS * (cx + rx), SS * (cy + ry)], **kw)


def _face(ident: dict[str, Any], rng: np.random.Generator) -> tuple[Image.Image, dict[str, bool]]:
    """One image of ``ident`` and the per-image attributes."""
    glasses, hat, earrings = rng.random() < P_GLASSES, rng.random() < P_HAT, rng.random() < P_EARRINGS
    smiling, open_mouth = bool(rng.random() < 0.45), bool(rng.random() < 0.3)
    bg = tuple(int(v) for v in rng.integers(40, 230, 3))
    im = Image.new("RGB", (SIZE[0] * SS, SIZE[1] * SS), bg)
    d = ImageDraw.Draw(im, "RGBA")
    skin, hair = tuple(int(v) for v in ident["skin"]), tuple(int(v) for v in ident["hair_rgb"])
    cx, cy, fw, fh = 89.0, 128.0, ident["face_w"], ident["face_h"]
    if ident["style"] == "long":
        d.rectangle([SS * (cx - fw - 8), SS * (cy - fh + 10), SS * (cx + fw + 8), SS * (cy + fh + 20)], fill=hair)
    d.rectangle([SS * (cx - 20), SS * (cy + fh - 15), SS * (cx + 20), SS * 218], fill=skin)  # neck
    _ellipse(d, cx, 240, 80, 40, fill=tuple(int(v) for v in ident["shirt"]))  # shoulders
    for side in (-1, 1):  # ears
        _ellipse(d, cx + side * fw, ident["eye_y"] + 12, 7, 12, fill=skin)
    _ellipse(d, cx, cy, fw, fh, fill=skin)
    if ident["style"] != "bald":  # the top of the hair, with a fringe
        d.chord([SS * (cx - fw - 4), SS * (cy - fh - 10), SS * (cx + fw + 4), SS * (cy + fh * 0.25)], 180, 360,
                fill=hair)
    ey, edx = ident["eye_y"], ident["eye_dx"]
    for side in (-1, 1):
        ex = cx + side * edx
        d.line([SS * (ex - 9), SS * (ey - 10), SS * (ex + 9), SS * (ey - 11)], fill=hair if ident["style"] != "bald"
               else (60, 50, 40), width=SS * 3)  # eyebrow
        _ellipse(d, ex, ey, 8, 4.5, fill=(245, 245, 245))
        _ellipse(d, ex, ey, 4, 4, fill=ident["iris"])
        _ellipse(d, ex, ey, 1.8, 1.8, fill=(10, 10, 10))
    shade = tuple(int(v * 0.8) for v in skin)
    d.line([SS * cx, SS * (ey + 5), SS * (cx - 3), SS * (ey + 24), SS * (cx + 3), SS * (ey + 25)], fill=shade,
           width=SS * 2)  # nose
    if ident["beard"]:
        d.chord([SS * (cx - fw + 4), SS * (cy - 5), SS * (cx + fw - 4), SS * (cy + fh)], 20, 160,
                fill=hair + (200,))
    lips = (190, 30, 50) if ident["lipstick"] else (170, 90, 80)
    my = ey + 41
    if open_mouth:
        _ellipse(d, cx, my, 11, 5, fill=(90, 20, 20), outline=lips, width=SS * 2)
    elif smiling:
        d.arc([SS * (cx - 14), SS * (my - 10), SS * (cx + 14), SS * (my + 6)], 20, 160, fill=lips, width=SS * 3)
    else:
        d.line([SS * (cx - 12), SS * my, SS * (cx + 12), SS * my], fill=lips, width=SS * 3)
    if earrings:
        for side in (-1, 1):
            _ellipse(d, cx + side * (fw + 1), ey + 27, 3, 3, fill=(230, 190, 40))
    if glasses:
        frame = tuple(int(v) for v in rng.integers(0, 50, 3))
        tint = (20, 20, 30, int(rng.integers(70, 150)))
        for side in (-1, 1):
            ex = cx + side * edx
            _ellipse(d, ex, ey + 1, 13, 10, fill=tint, outline=frame, width=SS * 3)
            d.line([SS * (ex + side * 13), SS * (ey - 1), SS * (cx + side * fw), SS * (ey - 3)], fill=frame,
                   width=SS * 2)  # temple
        d.line([SS * (cx - edx + 13), SS * (ey - 1), SS * (cx + edx - 13), SS * (ey - 1)], fill=frame, width=SS * 3)
    if hat:
        color = tuple(int(v) for v in rng.integers(20, 200, 3))
        d.rectangle([SS * (cx - fw + 2), SS * (cy - fh - 32), SS * (cx + fw - 2), SS * (cy - fh + 18)], fill=color)
        d.rectangle([SS * (cx - fw - 14), SS * (cy - fh + 10), SS * (cx + fw + 14), SS * (cy - fh + 20)], fill=color)
    im = im.reduce(SS)  # box filter: antialiased edges, cheap
    im = im.rotate(float(rng.uniform(-6, 6)), resample=Image.Resampling.BILINEAR, center=(89, 120),
                   translate=(float(rng.uniform(-4, 4)), float(rng.uniform(-4, 4))), fillcolor=bg)
    x = np.asarray(im, dtype=np.float32)  # (H, W, 3)
    ramp = np.linspace(-1, 1, SIZE[0], dtype=np.float32)[None, :, None]
    gain = np.float32(rng.uniform(0.85, 1.15)) * (1 + np.float32(rng.uniform(-0.12, 0.12)) * ramp)  # (1, W, 1)
    x = x * gain + 2.0 * rng.standard_normal(x.shape, dtype=np.float32)
    out = Image.fromarray(np.clip(np.round(x), 0, 255).astype(np.uint8), "RGB")
    return out, {"Eyeglasses": bool(glasses), "Wearing_Hat": bool(hat), "Wearing_Earrings": bool(earrings),
                 "Smiling": smiling, "Mouth_Slightly_Open": open_mouth}


def _attributes(ident: dict[str, Any], per_image: dict[str, bool]) -> list[int]:
    on = {name: bool(flag) for name, flag in zip(CELEBA_ATTRIBUTES, ident["other"])}
    on.update({h: h == ident["hair"] and ident["style"] != "bald" for h in _HAIR})
    on.update(Bald=ident["style"] == "bald", Male=ident["male"], Pale_Skin=ident["pale"], Young=ident["young"],
              Wearing_Lipstick=ident["lipstick"], No_Beard=not ident["beard"], Goatee=ident["beard"],
              Wearing_Necklace=False, Wearing_Necktie=False, **per_image)
    return [1 if on[a] else -1 for a in CELEBA_ATTRIBUTES]


def synthesize_celeba(out_dir: str | Path, seed: int = 0, identities: int = 40, per_identity: int = 12,
                      quality: int = 90) -> dict[str, Any]:
    """Write the fixture into ``out_dir`` (empty, or a previous fixture) and return its summary."""
    t0 = time.perf_counter()
    out = Path(out_dir)
    if identities < 1 or per_identity < 3:
        raise CdiffError("the CelebA fixture needs at least 1 identity and 3 images per identity")
    if out.exists() and any(out.iterdir()):
        try:
            fmt = json.loads((out / "synthesize.json").read_text()).get("format")
        except (OSError, ValueError, AttributeError):
            fmt = None
        if fmt != FORMAT:
            raise CdiffError(f"{out} is not empty and is not a previous CelebA fixture: choose another folder")
    n = identities * per_identity
    order = np.random.default_rng([seed, 1]).permutation(n)  # file k holds image order[k]: identities interleave
    rows_attr, rows_part, rows_id = [], [], []
    counts = {"images": n, "identities": identities, "Eyeglasses": 0, "Wearing_Hat": 0, "Wearing_Earrings": 0}
    idents = [_identity(np.random.default_rng([seed, 0, i])) for i in range(identities)]
    splits = {}
    for i in range(identities):  # per identity: ~60 % train, ~15 % val, the rest test
        perm = np.random.default_rng([seed, 2, i]).permutation(per_identity)
        n_train, n_val = int(round(0.6 * per_identity)), max(1, int(round(0.15 * per_identity)))
        for rank, j in enumerate(perm):
            splits[i * per_identity + int(j)] = 0 if rank < n_train else 1 if rank < n_train + n_val else 2
    names = []
    for k, img_id in enumerate(order, start=1):
        ident_i, j = divmod(int(img_id), per_identity)
        face, per_image = _face(idents[ident_i], np.random.default_rng([seed, 3, ident_i, j]))
        name = f"{k:06d}.jpg"
        buf = io.BytesIO()
        face.save(buf, format="JPEG", quality=quality)
        write_bytes(out / "img_align_celeba" / name, buf.getvalue())
        names.append(name)
        values = _attributes(idents[ident_i], per_image)
        rows_attr.append(name + " " + " ".join(f"{v:2d}" for v in values))
        rows_part.append(f"{name} {splits[int(img_id)]}")
        rows_id.append(f"{name} {ident_i + 1}")
        for key in ("Eyeglasses", "Wearing_Hat", "Wearing_Earrings"):
            counts[key] += int(per_image[key])
    keep = set(names)
    for old in (out / "img_align_celeba").glob("*.jpg"):  # a previous, larger fixture
        if old.name not in keep:
            old.unlink()
    write_text(out / "list_attr_celeba.txt", f"{n}\n" + " ".join(CELEBA_ATTRIBUTES) + " \n" + "\n".join(rows_attr)
               + "\n")
    write_text(out / "list_eval_partition.txt", "\n".join(rows_part) + "\n")
    write_text(out / "identity_CelebA.txt", "\n".join(rows_id) + "\n")
    summary = {"format": FORMAT, "seed": seed, "counts": counts, "seconds": round(time.perf_counter() - t0, 2)}
    write_json(out / "synthesize.json", {k: v for k, v in summary.items() if k != "seconds"})
    return summary


def example_faces(folder: str | Path, model: Any = None) -> list[Path]:
    """Two example JPEGs for the app (written once): one identity without and with glasses."""
    folder = Path(folder)
    ident = _identity(np.random.default_rng([7, 0, 0]))
    paths = []
    for name, want in (("face_no_glasses.jpg", False), ("face_glasses.jpg", True)):
        path = folder / name
        if not path.is_file():
            for j in range(200):  # the first draw of this identity with (or without) glasses and no accessory
                face, flags = _face(ident, np.random.default_rng([7, 3, 0, j]))
                if flags["Eyeglasses"] == want and not flags["Wearing_Hat"] and not flags["Wearing_Earrings"]:
                    break
            buf = io.BytesIO()
            face.save(buf, format="JPEG", quality=92)
            write_bytes(path, buf.getvalue())
        paths.append(path)
    return paths
