"""The fast PNG encoder (``data/png.py``): any reader gets the pixels and text back."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from cdiff_cli.data.png import encode_png


@pytest.mark.parametrize("shape", [(37, 53, 3), (40, 1), (1, 29), (64, 64, 3)])
def test_pixels_round_trip_through_pillow(shape: tuple[int, ...]) -> None:
    pixels = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    im = Image.open(io.BytesIO(encode_png(pixels, {"Title": "slice 3\nanomalous: p = 0.048"})))
    im.load()
    assert im.mode == ("RGB" if len(shape) == 3 else "L") and im.size == (shape[1], shape[0])
    assert np.array_equal(np.asarray(im), pixels)
    assert im.text == {"Title": "slice 3\nanomalous: p = 0.048"}


def test_text_outside_latin1_is_kept_as_utf8() -> None:
    im = Image.open(io.BytesIO(encode_png(np.zeros((4, 4), np.uint8), {"Title": "Gehirn ≤ 5 % — 脑"})))
    im.load()
    assert im.text["Title"] == "Gehirn ≤ 5 % — 脑"


@pytest.mark.parametrize("bad", [np.zeros((4, 4), np.float32), np.zeros((4, 4, 4), np.uint8),
                                 np.zeros((0, 4), np.uint8), np.zeros(4, np.uint8)])
def test_anything_but_an_8_bit_gray_or_rgb_picture_is_refused(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="uint8"):
        encode_png(bad)
