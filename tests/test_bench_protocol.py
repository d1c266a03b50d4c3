"""The fair protocol of ``cdiff benchmark`` (eval/bench_protocol.py): each method's own reference inference is
its spec's, the common setting really runs every method with the same timesteps and passes, every method
trains with the EMA warm-up, and steps and seconds are reported."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cdiff_cli.config.methods import METHODS
from cdiff_cli.errors import CdiffError
from cdiff_cli.eval.bench_protocol import CommonInference, common_recipe, parse_timesteps, training_cost
from cdiff_cli.eval.benchmark import method_recipe, plan_units


def test_own_inference_is_the_spec_and_the_common_one_is_the_same_for_all(tiny_prepared: Path,
                                                                          tmp_path: Path) -> None:
    common = CommonInference((100, 300), 2)
    for name, spec in METHODS.items():
        r = method_recipe(tiny_prepared, ["infer.noise_passes=3"], name, 0, 2, 2, tmp_path)
        c = common_recipe(r, common)
        if spec.reference_timesteps is None:
            assert not spec.uses_timesteps and c is None, name  # one setting: its own
            continue
        assert r.infer.timesteps == spec.reference_timesteps and r.infer.noise_passes == 1, name
        assert c is not None and c.infer.timesteps == (100, 300) and c.infer.noise_passes == 2, name
        assert c.to_dict() | {"infer": None} == r.to_dict() | {"infer": None}, name  # nothing else changes
    assert METHODS["ddpm"].reference_timesteps == (500,) and METHODS["cdiff"].reference_timesteps == (250, 500, 750)


def test_an_ablation_or_arm_still_sets_its_own_inference(tiny_prepared: Path, tmp_path: Path) -> None:
    assert method_recipe(tiny_prepared, [], "cdiff", 0, 2, 2, tmp_path, "t500").infer.timesteps == (500,)
    assert method_recipe(tiny_prepared, [], "cdiff", 0, 2, 2, tmp_path,
                         arm=["infer.timesteps=[750]"]).infer.timesteps == (750,)


def test_every_method_trains_with_the_ema_warmup(tiny_prepared: Path, tmp_path: Path) -> None:
    units = plan_units(tiny_prepared, [], list(METHODS), 1, 2, 2, tmp_path, [])
    assert all(u.recipe.train.ema_warmup for u in units)
    with pytest.raises(CdiffError, match="ema_warmup"):
        plan_units(tiny_prepared, ["train.ema_warmup=false"], ["ddpm"], 1, 2, 2, tmp_path, [])


def test_bad_common_settings_are_one_line_errors() -> None:
    assert parse_timesteps("250, 500") == (250, 500)
    for bad in ("", "a,b"):
        with pytest.raises(CdiffError, match="--common-timesteps"):
            parse_timesteps(bad)
    with pytest.raises(CdiffError, match="--common-passes"):
        CommonInference((500,), 0)


def test_training_cost_sums_trained_stages_only() -> None:
    cost = training_cost({"encoder": {"reused": "x"}, "diffusion": {"steps": 4, "seconds": 2.0}})
    assert cost["train_steps"] == 4 and cost["train_seconds"] == 2.0 and cost["diffusion_ms_per_step"] == 500.0
    both = training_cost({"encoder": {"steps": 3, "seconds": 1.0}, "diffusion": {"steps": 4, "seconds": 2.0}})
    assert both["train_steps"] == 7 and both["stage_steps"] == {"encoder": 3, "diffusion": 4}


@pytest.mark.slow
def test_the_common_setting_runs_every_method_with_the_same_timesteps_and_passes(
        tiny_prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny models of cdiff and ddpm, 1 step each: every reconstruction the benchmark asks for is recorded
    (method, timesteps the network sees, noise passes); the own ones are each spec's, the common ones equal."""
    import cdiff_cli.infer.reconstruct as R
    from cdiff_cli.eval.benchmark import run_benchmark

    calls: list[tuple[str, tuple[int, ...], int]] = []
    inner: list[tuple[int, ...]] = []
    original, one_pass = R.reconstruct_slices, R.RECONSTRUCTORS["one_pass"]

    def spy(model: Any, x: Any, timesteps: Any = None, seed: Any = None, batch_size: Any = None,
            passes: Any = None, indices: Any = None) -> Any:
        before = len(inner)
        out = original(model, x, timesteps, seed, batch_size, passes, indices)
        seen = set(inner[before:])
        assert len(seen) == 1, seen  # one set of noise levels per call
        n = passes or model.recipe.infer.noise_passes
        assert (len(inner) - before) % n == 0  # every chunk reconstructed n times
        calls.append((model.recipe.method, seen.pop(), n))
        return out

    def one_pass_spy(model: Any, chunk: Any, timesteps: Any, generator: Any, z: Any = None) -> Any:
        inner.append(tuple(timesteps))
        return one_pass(model, chunk, timesteps, generator, z)

    monkeypatch.setattr(R, "reconstruct_slices", spy)
    monkeypatch.setitem(R.RECONSTRUCTORS, "one_pass", one_pass_spy)
    out = tmp_path / "bench"
    common = CommonInference((300, 600), 2)
    run_benchmark(tiny_prepared, [], ["cdiff", "ddpm"], 1, 1, 1, out, None, "cpu", infer_slices=2, common=common,
                  invariance_slices=4, resamples=200)
    settings = {(m, t, n) for m, t, n in calls}
    assert ("cdiff", (250, 500, 750), 1) in settings and ("ddpm", (500,), 1) in settings  # own: the specs'
    assert ("cdiff", (300, 600), 2) in settings and ("ddpm", (300, 600), 2) in settings  # common: the same
    assert settings <= {("cdiff", (250, 500, 750), 1), ("ddpm", (500,), 1), ("cdiff", (300, 600), 2),
                        ("ddpm", (300, 600), 2)}
    doc = json.loads((out / "benchmark.json").read_text())
    assert doc["common_inference"] == {"timesteps": [300, 600], "noise_passes": 2}
    assert doc["inference"]["ddpm"]["timesteps"] == [500] and doc["inference"]["cdiff"]["timesteps"] == [250, 500, 750]
    for u in doc["units"]:
        assert u["common"]["timesteps"] == [300, 600] and u["common"]["noise_passes"] == 2 and u["common"]["cases"]
        assert u["train_steps"] == (2 if u["method"] == "cdiff" else 1) and u["train_seconds"] >= 0
    assert set(doc["table_common"]) == {"cdiff", "ddpm"} and "ddpm" in doc["paired"]["cdiff_vs_common"]
    assert doc["z_table"]["ddpm"]["applicable"] is False and doc["z_table"]["cdiff"]["applicable"] is True
    md = (out / "benchmark.md").read_text()
    assert "Under the common inference: t in [300, 600], 2 noise pass(es)" in md
    assert "| ddpm | 1 | not applicable (no encoder) |" in md
    assert (tmp_path / "bench" / "runs").is_dir()
    assert json.loads(next((out / "runs").glob("*cdiff*/eval/invariance.json")).read_text())["applicable"]
