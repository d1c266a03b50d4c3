"""z measures that compare across encoders (eval/zmeasures.py): exact on constructed codes, exact
identities on a tiny random-weight model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from cdiff_cli.eval.zmeasures import (displacement, measure_z, other_subject, position_slices, retrieval, summary,
                                      unit_invariance)
from conftest import make_model_folder


def _grid(subjects: int = 10, positions: int = 20, dim: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    subject = np.tile(np.arange(subjects), positions)
    position = np.repeat(np.arange(positions), subjects)
    return rng.normal(size=(subjects * positions, dim)), subject, position


def test_identical_codes_give_displacement_zero_and_full_retrieval() -> None:
    z, subject, position = _grid()
    d = displacement(z, z, subject, position)
    assert d["displacement"] == 0 and d["ratio"] == 0 and d["between_subjects"] > 0
    assert retrieval(z, z, position) == {"top1": 1.0, "chance": pytest.approx(0.1)}


def test_a_lesion_that_moves_z_as_far_as_another_subject_gives_ratio_one() -> None:
    z, subject, position = _grid()
    d = displacement(z, z[other_subject(subject, position)], subject, position)
    assert d["ratio"] == pytest.approx(d["displacement"] / d["between_subjects"])
    assert 0.8 < d["ratio"] < 1.2  # the distance to another subject's z, over the median of such distances
    assert retrieval(z, z[other_subject(subject, position)], position)["top1"] == 0.0  # always another brain


def test_shuffled_codes_retrieve_at_chance() -> None:
    z, subject, position = _grid(subjects=10, positions=200)
    rng = np.random.default_rng(1)
    shuffled = z.copy()
    for p in np.unique(position):
        idx = np.flatnonzero(position == p)
        shuffled[idx] = z[rng.permutation(idx)]
    r = retrieval(z, shuffled, position)
    assert r["chance"] == pytest.approx(0.1) and abs(r["top1"] - 0.1) < 0.03  # 2000 draws: sd 0.007


def test_constant_codes_are_misses_not_hits() -> None:
    z = np.ones((6, 4))
    assert retrieval(z, z, np.zeros(6, int))["top1"] == 0.0  # ties with every other subject


def test_other_subject_is_always_another_slice_at_the_same_position() -> None:
    _, subject, position = _grid(subjects=3, positions=4)
    other = other_subject(subject, position)
    assert np.array_equal(position[other], position) and np.all(subject[other] != subject)


def test_position_slices_form_a_grid_of_positions_and_subjects(tiny_prepared: Path) -> None:
    from cdiff_cli.config import load_recipe

    s = position_slices(load_recipe(tiny_prepared), 8)
    assert len(s["images"]) == len(s["brain"]) == len(s["subject"]) == len(s["position"]) > 0
    for p in np.unique(s["position"]):
        subjects = s["subject"][s["position"] == p]
        assert len(subjects) >= 2 and len(set(subjects)) == len(subjects)


def test_a_z_the_unet_ignores_changes_nothing_exactly(tiny_prepared: Path, tmp_path: Path) -> None:
    """An encoder whose z is the same for every slice: the lesion cannot move it (displacement 0), it
    retrieves nothing (ties), and the healthy-z gap and another subject's z change nothing, exactly."""
    from cdiff_cli.api import load_model
    from cdiff_cli.config import load_recipe
    from cdiff_cli.eval.invariance import FixedZ

    raw = yaml.safe_load(tiny_prepared.read_text())
    model = load_model(str(make_model_folder(tmp_path / "ours", raw)), device="cpu")
    slices = position_slices(load_recipe(tiny_prepared), 8)
    honest = measure_z(model, slices)
    assert honest["applicable"] and honest["segmentation"]["z_own"] != honest["segmentation"]["z_other"]
    z = model.loaded.encoder(torch.as_tensor(slices["images"][:1, None])).detach()

    class Constant(FixedZ):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.z.expand(len(x), -1)

    model.loaded.encoder = Constant(z)
    doc = measure_z(model, slices)
    assert doc["displacement"]["displacement"] == 0 and doc["retrieval"]["top1"] == 0.0
    assert doc["healthy_z_gap"] == {"dice": 0.0, "auprc": 0.0} and doc["other_z_change"] == {"dice": 0.0, "auprc": 0.0}
    assert doc["healthy_l1_other_z_change"] == 0.0


def test_a_method_without_encoder_is_not_applicable(tiny_prepared: Path, tmp_path: Path) -> None:
    import json

    from cdiff_cli.config import load_recipe

    recipe = load_recipe(tiny_prepared, ["method=ddpm", "unet.cond_mode=none"])
    assert unit_invariance(recipe, tmp_path, tmp_path, "cpu") == {"applicable": False}
    assert json.loads((tmp_path / "invariance.json").read_text())["applicable"] is False
    assert summary({"applicable": False}) == {"applicable": False}
