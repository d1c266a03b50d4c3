"""benchmarks/study27.py: arms x seeds, a ledger and per-unit results as it goes, resumed after a stop
without training anything twice, and the paired table of every arm against the others."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

pytestmark = pytest.mark.slow  # four tiny trainings


def test_the_study_resumes_from_its_ledger_and_pairs_every_arm(tiny_prepared: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from study27 import main

    arms = tmp_path / "arms.yaml"
    arms.write_text(yaml.safe_dump({"recipe": str(tiny_prepared), "arms": {
        "cdiff": {"method": "cdiff"}, "ddpm": {"method": "ddpm"},
        "later": {"method": "cdiff", "overrides": ["encoder.eps=1"], "todo": "not ready"}}}))
    out = tmp_path / "study"
    args = [str(arms), "--seeds", "2", "--budget", "1", "--encoder-budget", "1", "--invariance-slices", "4",
            "--infer-slices", "2", "--resamples", "200", "--device", "cpu", "--out", str(out),
            "--runs", str(tmp_path / "runs"), "--against", "cdiff,ddpm"]
    first = main([*args, "--max-units", "3"])  # stopped after three units, as a killed run
    assert first == {"units": 4, "done": 3, "trained": 3, "complete": False}
    ledger = json.loads((out / "ledger.json").read_text())
    assert {k: v["status"] for k, v in ledger["units"].items()} == {"cdiff-s0": "done", "cdiff-s1": "done",
                                                                   "ddpm-s0": "done"}
    assert not (out / "study.md").exists()
    second = main(args)
    assert second == {"units": 4, "done": 4, "trained": 1, "complete": True}

    def no_training(*a: object, **k: object) -> None:
        raise AssertionError("a finished unit was trained again")

    monkeypatch.setattr("cdiff_cli.train.run.train_stage", no_training)
    monkeypatch.setattr("cdiff_cli.eval.protocol.evaluate", no_training)
    doc = json.loads((out / "study.json").read_text())
    assert main(args)["trained"] == 0
    assert json.loads((out / "study.json").read_text()) == doc  # the same table from the same results
    assert doc["arms"] == ["cdiff", "ddpm"] and set(doc["paired"]) == {"cdiff", "ddpm"}
    c = doc["paired"]["ddpm"]["cdiff"]["brats_dice"]  # cdiff - ddpm over (seed, volume)
    assert c["seeds"] == 2 and c["ci"][0] <= c["diff"] <= c["ci"][1]
    assert doc["paired"]["cdiff"]["ddpm"]["brats_dice"]["diff"] == pytest.approx(-c["diff"])
    assert "## Each arm against ddpm (common inference)" in (out / "study.md").read_text()
    # the choice of BEST: the candidates (not ddpm, a baseline) by mean BraTS-like AUPRC over the seeds
    mine = [json.loads((out / "results" / f"cdiff-s{s}.json").read_text())["common"]["brats_auprc"] for s in (0, 1)]
    assert [c["arm"] for c in doc["choice"]] == ["cdiff"] and doc["choice"][0]["seeds"] == 2
    assert doc["choice"][0]["brats_auprc"] == pytest.approx(sum(mine) / 2)
    assert "BEST = cdiff" in (out / "study.md").read_text()
    assert json.loads((out / "benchmark.json").read_text())["common_inference"]["timesteps"] == [250, 500, 750]
    for f in (out / "results").iterdir():  # small files only: results, no weights
        assert f.suffix == ".json" and f.stat().st_size < 100_000
    # a later study reuses the units done here (same recipe and options), trains nothing, gives the same table
    final = tmp_path / "final"
    fargs = [a if a != str(out) else str(final) for a in args]
    assert main([*fargs, "--reuse", str(out)]) == {"units": 4, "done": 4, "trained": 0, "complete": True}
    reused = json.loads((final / "ledger.json").read_text())["units"]
    assert {v["reused_from"] for v in reused.values()} == {str(out)}
    assert json.loads((final / "study.json").read_text()) == doc
    # other options (a larger budget) are other units: nothing is reused, so training is asked for
    with pytest.raises(AssertionError, match="trained again"):
        main([*[a if a != str(out) else str(tmp_path / "other") for a in args[:3]], "--budget", "2",
              *[a if a != str(out) else str(tmp_path / "other") for a in args[5:]], "--reuse", str(out)])


def test_a_changed_arm_and_a_todo_arm_are_refused(tiny_prepared: Path, tmp_path: Path) -> None:
    from study27 import main

    arms = tmp_path / "arms.yaml"
    arms.write_text(yaml.safe_dump({"recipe": str(tiny_prepared), "arms": {
        "ddpm": {"method": "ddpm"}, "later": {"method": "cdiff", "todo": "not ready"}}}))
    base = [str(arms), "--seeds", "1", "--budget", "1", "--out", str(tmp_path / "s"), "--runs", str(tmp_path / "r")]
    with pytest.raises(SystemExit, match="not ready"):
        main([*base, "--arms", "later"])
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "ledger.json").write_text(json.dumps({"units": {"ddpm-s0": {
        "status": "done", "fingerprint": "0" * 16, "result": "results/ddpm-s0.json"}}}))
    with pytest.raises(SystemExit, match="recipe changed"):
        main(base)
