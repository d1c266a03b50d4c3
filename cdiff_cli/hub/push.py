"""``cdiff push``: a run directory -> a Hugging Face Hub model repo (or a local folder, dry run).

The upload folder mirrors the run directory, so ``load_model`` reads it (or its Hub cache
snapshot) exactly like ``runs/NAME``::

    README.md                    model card (model_card.md + measured facts, Hub front matter)
    recipe.yaml                  the resolved recipe
    metrics.json                 {"eval": ..., "localize": ...} when the run was evaluated
    encoder/model.safetensors    stage-1 encoder (cdiff only) + config.json
    diffusion/model.safetensors  U-Net (unet.*) and encoder (encoder.*) + config.json
    diffusion/calibration.json   calibrated threshold, when present
    diffusion/verdict.json       the verdict's healthy statistics, when present

The token comes from ``HF_TOKEN`` or the stored Hub login and never reaches the output:
every message that leaves this module passes through :func:`scrub`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from safetensors import SafetensorError, safe_open

from cdiff_cli.config.methods import method_spec
from cdiff_cli.errors import CdiffError, CheckpointError, first_line
from cdiff_cli.fileio import atomic_dir, read_json, require_dir
from cdiff_cli.hub.card import render_card
from cdiff_cli.infer.model import read_config

REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+$")
_TOKEN_LIKE = re.compile(r"hf_[A-Za-z0-9]{8,}")
_DROP_EVAL_KEYS = ("models", "plots")  # local paths of the machine that evaluated
_OURS = {"README.md", "recipe.yaml", "metrics.json", "encoder", "diffusion"}  # top level of an upload folder


@dataclass
class UploadFolder:
    """What will be uploaded: (path in repo, source file) pairs plus generated files."""

    repo_id: str
    copies: list[tuple[str, Path]] = field(default_factory=list)
    generated: dict[str, str] = field(default_factory=dict)  # path in repo -> text

    def write(self, dest: Path) -> None:
        for rel, src in self.copies:
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, target)
        for rel, text in self.generated.items():
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")


def check_repo_id(repo_id: str, flag: str = "--repo-id") -> str:
    """``USER/NAME`` with the Hub's characters; one clear line (naming ``flag``) otherwise."""
    rid = (repo_id or "").strip()
    bad = (not REPO_ID.match(rid) or len(rid) > 96 or "--" in rid or ".." in rid
           or rid.endswith((".git", ".")) or rid.split("/")[1].startswith((".", "-")))
    if bad:
        raise CdiffError(f"{flag} {repo_id!r}: expected USER/NAME (letters, digits, '-', '_', '.'; no '--' or "
                         "'..'; at most 96 characters), e.g. alice/cdiff-ixi")
    return rid


def _check_weights(path: Path, prefixes: tuple[str, ...]) -> None:
    """Header-only check: a readable safetensors file whose tensors carry the expected prefixes."""
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({first_line(e)[:100]})") from None
    for prefix in prefixes:
        if not any(k.startswith(prefix + ".") for k in keys):
            raise CheckpointError(f"{path} holds no '{prefix}.*' tensors; is it a cdiff model file?")


def collect(run_dir: Path, repo_id: str) -> UploadFolder:
    """Validate ``run_dir`` and list the files of the upload (nothing is written)."""
    run_dir = Path(run_dir)
    require_dir(run_dir, "run directory", CheckpointError)
    diffusion = run_dir / "diffusion"
    if not diffusion.is_dir():
        raise CheckpointError(f"{run_dir} has no diffusion/ folder: train one with `cdiff train-diffusion RECIPE` "
                              "before pushing")
    recipe = read_config(diffusion)  # CheckpointError when config.json is missing or invalid
    required = [("diffusion/model.safetensors", diffusion / "model.safetensors"),
                ("diffusion/config.json", diffusion / "config.json"),
                ("recipe.yaml", run_dir / "recipe.yaml")]
    spec = method_spec(recipe.method)
    if spec.needs_encoder:
        required += [("encoder/model.safetensors", run_dir / "encoder" / "model.safetensors"),
                     ("encoder/config.json", run_dir / "encoder" / "config.json")]
    missing = [rel for rel, src in required if not src.is_file()]
    if missing:
        raise CheckpointError(f"{run_dir} is incomplete: missing {', '.join(missing)}")
    # a frozen encoder may be stored once, as the stage-1 file (infer/model.py): the bundled reference does
    shared = spec.needs_encoder and not recipe.encoder.trainable_in_diffusion
    _check_weights(diffusion / "model.safetensors",
                   (spec.network, "encoder") if spec.needs_encoder and not shared else (spec.network,))
    if spec.needs_encoder:
        _check_weights(run_dir / "encoder" / "model.safetensors", ())  # readable safetensors, never a pickle
    try:
        yaml.safe_load((run_dir / "recipe.yaml").read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{run_dir / 'recipe.yaml'} is not valid YAML ({first_line(e)})") from None

    folder = UploadFolder(repo_id=repo_id, copies=list(required))
    calibration = None
    cal = diffusion / "calibration.json"
    if cal.is_file():
        calibration = read_json(cal, "calibration", error=CheckpointError)
        folder.copies.append(("diffusion/calibration.json", cal))
    if (diffusion / "verdict.json").is_file():  # the verdict's healthy statistics travel with the model
        folder.copies.append(("diffusion/verdict.json", diffusion / "verdict.json"))
    metrics: dict[str, Any] = {}
    for key in ("eval", "localize"):
        path = run_dir / key / "metrics.json"
        if path.is_file():
            doc = read_json(path, f"{key} metrics", error=CheckpointError)
            metrics[key] = {k: v for k, v in doc.items() if k not in _DROP_EVAL_KEYS}
    if metrics:
        folder.generated["metrics.json"] = json.dumps(metrics, indent=2) + "\n"
    folder.generated["README.md"] = render_card(repo_id, recipe, metrics.get("eval"), metrics.get("localize"),
                                                calibration)
    return folder


def listing(folder: Path) -> list[tuple[str, int]]:
    """(relative path, bytes) of every file under ``folder``, sorted."""
    return sorted((p.relative_to(folder).as_posix(), p.stat().st_size) for p in folder.rglob("*") if p.is_file())


def check_dry_run_dir(out: Path, ours: set[str]) -> Path:
    """``out`` may be replaced as a whole: absent, empty, or a previous dry run (top-level names in ``ours``)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CdiffError(f"--dry-run {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not {p.name for p in out.iterdir()} <= ours:
        raise CdiffError(f"--dry-run {out} is a non-empty folder that is not a previous dry run; "
                         "choose a new or empty folder (it is replaced as a whole)")
    return out


def dry_run(run_dir: Path, repo_id: str, out: Path) -> list[tuple[str, int]]:
    """Write the upload folder to ``out`` (atomically: complete or absent) without any network."""
    repo_id = check_repo_id(repo_id)
    upload = collect(run_dir, repo_id)
    out = check_dry_run_dir(out, _OURS)
    if out.resolve() == Path(run_dir).resolve() or Path(run_dir).resolve() in out.resolve().parents:
        raise CdiffError(f"--dry-run {out}: choose a folder outside the run directory")
    with atomic_dir(out) as tmp:
        upload.write(tmp)
    return listing(out)


def scrub(text: str, token: str | None = None) -> str:
    """``text`` without the token (and without anything shaped like a Hub token)."""
    if token:
        text = text.replace(token, "***")
    return _TOKEN_LIKE.sub("hf_***", text)


def hub_token() -> str:
    """``HF_TOKEN``, else the stored Hub login (``hf auth login``); never written anywhere."""
    from huggingface_hub import get_token

    token = os.environ.get("HF_TOKEN") or get_token()
    if not token:
        raise CdiffError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (or use --dry-run OUT)")
    return token


def hub_failure(what: str, error: BaseException, token: str | None) -> CheckpointError:
    """Any Hub/network failure of ``what`` as one line, the token removed."""
    return CheckpointError(f"{what} failed: {type(error).__name__}: {scrub(first_line(error), token)[:300]}")


def push(run_dir: Path, repo_id: str, private: bool = False, revision: str | None = None,
         message: str | None = None) -> dict[str, Any]:
    """Create (or reuse) the model repo and upload the folder in one commit."""
    from huggingface_hub import HfApi

    repo_id = check_repo_id(repo_id)
    upload = collect(run_dir, repo_id)
    token = hub_token()
    message = message or f"Upload cdiff model from run {Path(run_dir).name}"
    with tempfile.TemporaryDirectory(prefix="cdiff-push-") as tmp:
        folder = Path(tmp) / "upload"
        folder.mkdir()
        upload.write(folder)
        files = listing(folder)
        try:
            api = HfApi(token=token)
            repo_url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            if revision and revision != "main":
                api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
            commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder), revision=revision,
                                       commit_message=message, repo_type="model")
        except Exception as e:  # any Hub/network failure: one line, token removed
            raise hub_failure(f"upload to {repo_id}", e, token) from None
    return {"repo_id": repo_id, "url": scrub(str(repo_url), token),
            "commit": scrub(str(getattr(commit, "commit_url", commit)), token), "files": files,
            "revision": revision or "main", "private": private}


__all__ = ["UploadFolder", "check_dry_run_dir", "check_repo_id", "collect", "dry_run", "hub_failure", "hub_token",
           "listing", "push", "scrub"]
