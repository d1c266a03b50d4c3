"""``cdiff push``: the upload folder, the model card, loading it back (folder and offline Hub cache),
and the upload itself with ``HfApi`` mocked. Never touches the network (HF_HUB_OFFLINE=1)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
import yaml

from cdiff_cli.errors import CdiffError, CheckpointError
from cdiff_cli.hub import card, push
from conftest import make_model_folder

REPO = "alice/cdiff-tiny"
TOKEN = "hf_SuperSecretToken0123456789abcdef"
EXPECTED = {
    "README.md", "recipe.yaml", "metrics.json",
    "encoder/model.safetensors", "encoder/config.json",
    "diffusion/model.safetensors", "diffusion/config.json", "diffusion/calibration.json",
}
EVAL = {"method": "cdiff", "threshold_search": "exact", "models": ["/home/me/secret/runs/tiny"],
        "sets": {"brats": {"dice": [0.5097, 0.012], "auprc": [0.5611, None], "auroc": [0.9, None],
                           "fpr": [0.01, None], "n": 6}},
        "healthy": {"name": "ixi", "l1": [0.00992, None], "n": 4}, "folds": [{"fold": 0}]}
LOCALIZE = {"reference": {"mAP30": 18.57, "mAP50": 9.41, "mAP50-95": 3.33, "ACC50": 9.29, "TP30": 71, "FP30": 1492},
            "coco": {"AP": 2.5}, "threshold": 0.12, "threshold_kind": "calibrated", "n_scored_images": 10}


@pytest.fixture(scope="module")
def run_dir(module_tmp: Callable[[str], Path]) -> Path:
    """A tiny run with calibration and both metrics files, as evaluate/localize leave it."""
    run = make_model_folder(module_tmp("runs") / "tiny")
    (run / "diffusion" / "calibration.json").write_text(json.dumps({"threshold": 0.123, "fpr": 0.01}))
    (run / "eval").mkdir()
    (run / "eval" / "metrics.json").write_text(json.dumps(EVAL))
    (run / "localize").mkdir()
    (run / "localize" / "metrics.json").write_text(json.dumps(LOCALIZE))
    return run


@pytest.fixture(scope="module")
def dry(run_dir: Path, module_tmp: Callable[[str], Path]) -> Path:
    out = module_tmp("dry") / "upload"
    push.dry_run(run_dir, REPO, out)
    return out


def _front_matter(text: str) -> dict[str, Any]:
    assert text.startswith("---\n")
    head, _, _ = text[4:].partition("\n---\n")
    return yaml.safe_load(head)


def test_dry_run_writes_the_complete_folder(run_dir: Path, dry: Path) -> None:
    files = dict(push.listing(dry))
    assert set(files) == EXPECTED
    for rel in ("diffusion/model.safetensors", "encoder/model.safetensors", "recipe.yaml"):
        assert (dry / rel).read_bytes() == (run_dir / rel).read_bytes()
        assert files[rel] == (run_dir / rel).stat().st_size
    metrics = json.loads((dry / "metrics.json").read_text())
    assert metrics["eval"]["sets"]["brats"]["dice"] == [0.5097, 0.012]
    assert metrics["localize"]["reference"]["TP30"] == 71
    assert "models" not in metrics["eval"]  # local paths stay home
    assert not [p for p in dry.parent.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_card_front_matter_and_sections(dry: Path) -> None:
    text = (dry / "README.md").read_text()
    meta = _front_matter(text)
    assert meta["license"] == "apache-2.0"
    assert meta["library_name"] == "cdiff"
    assert meta["pipeline_tag"] == "image-segmentation"
    assert set(card.TAGS) <= set(meta["tags"])
    assert meta["datasets"] == ["cdiff-synthetic-benchmark"]  # the tiny recipe reads data/synthetic
    (index,) = meta["model-index"]
    assert index["name"] == "cdiff-tiny"
    by_task = {r["dataset"]["name"]: {m["type"]: m["value"] for m in r["metrics"]} for r in index["results"]}
    assert by_task["brats"]["dice"] == pytest.approx(50.97)
    assert by_task["brats"]["auprc"] == pytest.approx(56.11)
    assert by_task["ixi (healthy)"]["l1"] == pytest.approx(0.00992)
    assert by_task["NOVA"]["map30"] == pytest.approx(18.57)
    for needle in ("## Model description", "## Intended use", "## Training data", "## Evaluation results",
                   "## Limitations", "NOT FOR CLINICAL USE", f"cdiff reconstruct scan.nii.gz --model {REPO}",
                   "Pattern Recognition Letters", "Patr", "| brats | 6 | 50.97 ± 1.20 | 56.11 |",
                   "0.1230", "4 steps, batch 4"):
        assert needle in text, needle
    assert "{{" not in text and "}}" not in text
    assert "/home/me/secret" not in text


def test_card_without_metrics_has_no_model_index(tiny_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "up"
    push.dry_run(tiny_run, REPO, out)
    assert {p for p, _ in push.listing(out)} == EXPECTED - {"metrics.json", "diffusion/calibration.json"}
    text = (out / "README.md").read_text()
    assert "model-index" not in _front_matter(text)
    assert "No evaluation results were stored" in text
    assert "No calibrated threshold is stored" in text


def test_template_slots_are_checked() -> None:
    assert card.render("a {{ x }} b {{y}}", {"x": "1", "y": "2"}) == "a 1 b 2"
    with pytest.raises(CdiffError, match="unknown slot"):
        card.render("{{ nope }}", {"x": "1"})
    # the shipped template only uses slots the code fills
    used = {m.group(1) for m in card.SLOT.finditer(card.TEMPLATE.read_text())}
    assert used and used <= {"front_matter", "title", "repo_id", "run_name", "method", "summary", "grid",
                             "training_data", "training", "results", "calibration", "timesteps", "usage",
                             "citation", "license"}


def test_dry_run_folder_reconstructs_identically(run_dir: Path, dry: Path) -> None:
    from cdiff_cli.infer.model import load_model
    from cdiff_cli.infer.reconstruct import reconstruct_slices

    cpu = torch.device("cpu")
    a, b = load_model(run_dir, cpu), load_model(dry, cpu)
    assert b.calibration["threshold"] == pytest.approx(0.123)
    x = np.random.default_rng(0).random((3, 1, *a.image_hw), dtype=np.float32)
    ra = reconstruct_slices(a, x, seed=7)
    rb = reconstruct_slices(b, x, seed=7)
    assert np.array_equal(ra, rb)


def _hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dry: Path | None) -> Path:
    """A hand-made Hugging Face cache holding REPO at a fake commit (plain files, no blobs)."""
    import huggingface_hub.constants as constants

    hub = tmp_path / "hf" / "hub"
    if dry is not None:
        repo = hub / ("models--" + REPO.replace("/", "--"))
        commit = "0123456789abcdef0123456789abcdef01234567"
        shutil.copytree(dry, repo / "snapshots" / commit)
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text(commit)
    hub.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))  # read at import time by huggingface_hub
    monkeypatch.chdir(tmp_path)  # "alice/..." must not resolve as a local path
    return hub


def test_load_by_repo_id_from_offline_cache(run_dir: Path, dry: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from cdiff_cli.infer.model import load_model, resolve_model_dir
    from cdiff_cli.infer.reconstruct import reconstruct_slices

    hub = _hub_cache(tmp_path, monkeypatch, dry)
    folder = resolve_model_dir(REPO)
    assert hub in folder.parents
    assert resolve_model_dir(f"{REPO}@main") == folder
    cpu = torch.device("cpu")
    m = load_model(REPO, cpu)
    x = np.random.default_rng(1).random((2, 1, *m.image_hw), dtype=np.float32)
    assert np.array_equal(reconstruct_slices(m, x, seed=3), reconstruct_slices(load_model(run_dir, cpu), x, seed=3))


def test_missing_repo_offline_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cdiff_cli.infer.model import load_model

    _hub_cache(tmp_path, monkeypatch, None)
    with pytest.raises(CheckpointError, match="not in the local Hugging Face cache") as info:
        load_model("alice/not-there", torch.device("cpu"))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("bad", ["noslash", "a/b/c", "/abs/path", "alice/", "alice/na me", "alice/x--y",
                                 "alice/..x", "-alice/x", "alice/" + "x" * 100])
def test_repo_id_format(bad: str) -> None:
    with pytest.raises(CdiffError, match="expected USER/NAME"):
        push.check_repo_id(bad)
    assert push.check_repo_id(" alice/cdiff-ixi_v1.2 ") == "alice/cdiff-ixi_v1.2"


def test_incomplete_run_dirs(tmp_path: Path, tiny_run: Path) -> None:
    with pytest.raises(CheckpointError, match="no diffusion/ folder"):
        push.collect(tmp_path, REPO)
    with pytest.raises(CheckpointError, match="run directory not found"):
        push.collect(tmp_path / "nope", REPO)
    (tiny_run / "encoder" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing encoder/model.safetensors") as info:
        push.collect(tiny_run, REPO)
    assert "\n" not in str(info.value)
    (tiny_run / "diffusion" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError):
        push.collect(tiny_run, REPO)


def test_dry_run_refuses_to_replace_an_unrelated_folder(run_dir: Path, tmp_path: Path) -> None:
    precious = tmp_path / "mine"
    precious.mkdir()
    (precious / "thesis.tex").write_text("keep me")
    with pytest.raises(CdiffError, match="not a previous dry run"):
        push.dry_run(run_dir, REPO, precious)
    assert (precious / "thesis.tex").read_text() == "keep me"
    push.dry_run(run_dir, REPO, tmp_path / "again")
    push.dry_run(run_dir, REPO, tmp_path / "again")  # a previous dry run is replaced


class FakeApi:
    calls: list[tuple[str, dict[str, Any]]] = []
    fail_with: str | None = None

    def __init__(self, token: str | None = None) -> None:
        FakeApi.calls.append(("init", {"token": token}))

    def create_repo(self, repo_id: str, **kw: Any) -> str:
        FakeApi.calls.append(("create_repo", {"repo_id": repo_id, **kw}))
        return f"https://huggingface.co/{repo_id}"

    def create_branch(self, repo_id: str, **kw: Any) -> None:
        FakeApi.calls.append(("create_branch", {"repo_id": repo_id, **kw}))

    def upload_folder(self, **kw: Any) -> Any:
        if FakeApi.fail_with:
            raise RuntimeError(FakeApi.fail_with)
        folder = Path(kw["folder_path"])
        files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        readme = (folder / "README.md").read_text()
        FakeApi.calls.append(("upload_folder", {**kw, "files": files, "readme": readme}))

        class Info:
            commit_url = f"https://huggingface.co/{kw['repo_id']}/commit/abc123"

        return Info()


def _run_cli(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    from cdiff_cli.cli.main import main

    monkeypatch.setattr(sys, "argv", ["cdiff", *args])
    try:
        main()
    except SystemExit as e:
        return int(e.code or 0)
    return 0


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> type[FakeApi]:
    import huggingface_hub

    FakeApi.calls = []
    FakeApi.fail_with = None
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    return FakeApi


def test_push_uploads_the_folder_and_never_prints_the_token(run_dir: Path, fake_hub: type[FakeApi],
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    code = _run_cli(monkeypatch, "push", str(run_dir), "--repo-id", REPO, "--private", "--revision", "v1",
                    "--message", "first upload")
    out = capsys.readouterr()
    assert code == 0, out.err
    names = [name for name, _ in fake_hub.calls]
    assert names == ["init", "create_repo", "create_branch", "upload_folder"]
    calls = dict(fake_hub.calls)
    assert calls["init"]["token"] == TOKEN  # handed to the client, not to the terminal
    assert calls["create_repo"] == {"repo_id": REPO, "private": True, "exist_ok": True, "repo_type": "model"}
    assert calls["create_branch"]["branch"] == "v1"
    up = calls["upload_folder"]
    assert up["repo_id"] == REPO and up["revision"] == "v1" and up["commit_message"] == "first upload"
    assert set(up["files"]) == EXPECTED
    assert "model-index" in _front_matter(up["readme"])
    assert not Path(up["folder_path"]).exists()  # the temporary folder is cleaned up
    assert TOKEN not in out.out + out.err
    assert "diffusion/model.safetensors" in out.err and REPO in out.err


def test_push_failure_scrubs_the_token(run_dir: Path, fake_hub: type[FakeApi], monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    fake_hub.fail_with = f"401 Unauthorized for token {TOKEN} (also hf_AnotherTokenLookingThing99)"
    monkeypatch.delenv("CDIFF_DEBUG", raising=False)
    code = _run_cli(monkeypatch, "push", str(run_dir), "--repo-id", REPO)
    out = capsys.readouterr()
    assert code == 2
    assert "upload to alice/cdiff-tiny failed" in out.err
    assert TOKEN not in out.out + out.err and "hf_AnotherToken" not in out.err
    assert len(out.err.strip().splitlines()) == 1


def test_push_without_token_says_how_to_log_in(run_dir: Path, fake_hub: type[FakeApi],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(CdiffError, match="no Hugging Face token"):
        push.push(run_dir, REPO)
    assert fake_hub.calls == []


def test_cli_dry_run_lists_files(run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    code = _run_cli(monkeypatch, "push", str(run_dir), "--repo-id", REPO, "--dry-run", str(tmp_path / "out"))
    err = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    assert code == 0, err
    assert "nothing uploaded" in err and "README.md" in err and " MB" in err
    assert _run_cli(monkeypatch, "push", str(tmp_path / "missing"), "--repo-id", REPO, "--dry-run",
                    str(tmp_path / "o2")) == 2
    assert "run directory not found" in " ".join(capsys.readouterr().err.split())


def test_ddpm_run_has_no_encoder_folder(tmp_path: Path) -> None:
    from conftest import tiny_recipe_dict

    raw = tiny_recipe_dict(method="ddpm")
    raw["unet"] = {**raw["unet"], "cond_mode": "none"}
    run = make_model_folder(tmp_path / "runs" / "ddpm", raw)
    out = tmp_path / "up"
    files = {p for p, _ in push.dry_run(run, "bob/ddpm-tiny", out)}
    assert files == {"README.md", "recipe.yaml", "diffusion/model.safetensors", "diffusion/config.json"}
    assert "DDPM baseline" in (out / "README.md").read_text()


@pytest.mark.parametrize("failure", ["proxy", "timeout", "refused", "http503", "http404"])
def test_every_network_or_hub_failure_is_one_line(failure: str, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever the network does while a Hub id is resolved (a proxy's error page, a timeout, a refused
    connection, an HTTP error), the user gets one line that says what happened and what to do."""
    import httpx
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    from cdiff_cli.infer.model import load_model

    _hub_cache(tmp_path, monkeypatch, None)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    request = httpx.Request("GET", "https://huggingface.co/api/models/alice/model")
    errors = {
        "proxy": httpx.ProxyError("502 Bad Gateway from proxy\n<html>... a long page ...</html>", request=request),
        "timeout": httpx.ConnectTimeout("timed out", request=request),
        "refused": httpx.ConnectError("[Errno 111] Connection refused", request=request),
        "http503": HfHubHTTPError("503 Service Unavailable\nmore", response=httpx.Response(503, request=request)),
        "http404": HfHubHTTPError("404 Repository Not Found\nmore", response=httpx.Response(404, request=request)),
    }

    def fake_download(repo_id: str, **kw: object) -> str:
        if kw.get("local_files_only"):
            raise LocalEntryNotFoundError("not cached")
        raise errors[failure]

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    with pytest.raises(CheckpointError, match="could not fetch alice/model from the Hugging Face Hub") as info:
        load_model("alice/model", torch.device("cpu"))
    message = str(info.value)
    assert "\n" not in message and len(message) < 400
    assert ("HTTP 404" in message and "check the id" in message) if failure == "http404" else "connection" in message
