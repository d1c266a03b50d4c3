"""The whole recipe: its sections, the cross-field checks, and the hashes that tie a checkpoint to
the settings it was trained with."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, field_validator, model_validator

from cdiff_cli.config.domains import DOMAINS, Domain, layout_domain
from cdiff_cli.config.methods import METHODS, method_spec
from cdiff_cli.config.sections import (
    AEConfig, AnoDDPMConfig, DataConfig, DataSource, DiffusionConfig, EncoderConfig, EvalConfig, InferConfig,
    LocalizeConfig, PatchConfig, Section, TrainConfig, UNetConfig, _encoder_train_defaults,
)


class Recipe(Section):
    name: str = Field("cdiff", pattern=r"^[A-Za-z0-9_.-]+$")
    method: str = "cdiff"  # a name of the registry, config/methods/
    seed: int = 0
    runs_dir: Path = Path("runs")
    data: DataConfig
    encoder: EncoderConfig = EncoderConfig()
    encoder_train: TrainConfig = Field(default_factory=_encoder_train_defaults)
    unet: UNetConfig = UNetConfig()
    diffusion: DiffusionConfig = DiffusionConfig()
    train: TrainConfig = TrainConfig()
    infer: InferConfig = InferConfig()
    eval: EvalConfig = EvalConfig()
    localize: LocalizeConfig = LocalizeConfig()
    pddpm: PatchConfig = PatchConfig()
    anoddpm: AnoDDPMConfig = AnoDDPMConfig()
    ae: AEConfig = AEConfig()

    @field_validator("method", mode="before")
    @classmethod
    def _known_method(cls, value: Any) -> Any:
        """A registered name, else the message a ``Literal`` of the names gives; read at validation
        time, so that a method registered after import is known."""
        if isinstance(value, str) and value in METHODS:
            return value
        names = [repr(n) for n in METHODS]
        listed = f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else names[0]
        raise ValueError(f"Input should be {listed}")

    @model_validator(mode="before")
    @classmethod
    def _method_defaults(cls, data: Any) -> Any:
        """Fill in the method's own defaults (``MethodSpec.defaults``) for fields the recipe leaves out."""
        method = data.get("method") if isinstance(data, dict) else None
        if not isinstance(method, str) or method not in METHODS or not METHODS[method].defaults:
            return data
        data = dict(data)
        for section, values in METHODS[method].defaults.items():
            given = data.get(section)
            if given is None or isinstance(given, dict):
                data[section] = {**values, **(given or {})}
        return data

    @model_validator(mode="after")
    def _check(self) -> Recipe:
        h, w = self.data.image_hw
        f = self.unet.downsample_factor
        spec = method_spec(self.method)
        if spec.network == "unet" and (h % f or w % f):  # the autoencoder has no U-Net
            raise ValueError(
                f"data.size slice {h}x{w} must be divisible by the U-Net's downsampling factor {f} "
                f"(2^(len(unet.channel_mult)-1))"
            )
        bad = [t for t in self.infer.timesteps if not 0 <= t < self.diffusion.timesteps]
        if (bad or not self.infer.timesteps) and spec.uses_timesteps:  # anoddpm and ae ignore them
            raise ValueError(f"infer.timesteps must be non-empty and within 0..{self.diffusion.timesteps - 1}")
        self._check_method()
        return self

    def _check_method(self) -> None:
        """Settings a method cannot run with, as one line each (METHOD.md section 7): the encoder and
        the U-Net's conditioning agree, then the method's own checks (its ``MethodSpec.check``)."""
        m, spec = self.method, method_spec(self.method)
        if spec.needs_encoder and self.unet.cond_mode == "none":
            raise ValueError(f"method {m!r} needs a conditioned U-Net: unet.cond_mode adagn or concat")
        if not spec.needs_encoder and spec.network == "unet" and self.unet.cond_mode != "none":
            raise ValueError(f"method {m!r} has no encoder: set unet.cond_mode=none")
        if spec.check is not None:
            spec.check(self)

    @property
    def run_dir(self) -> Path:
        return self.runs_dir / self.name

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def hash(self) -> str:
        """A short stable hash of the whole resolved recipe."""
        return _digest(self.to_dict())

    def model_hash(self) -> str:
        """Hash of what a checkpoint depends on (data grid, networks, diffusion, seed), so that a
        run can be resumed with other schedule settings (more steps, another log interval)."""
        d = self.to_dict()
        for *where, key, value in _ADDED_FIELDS:  # left out at their earlier behaviour: older checkpoints resume
            node = d
            for part in where:
                node = node[part]
            if node.get(key) == value:
                del node[key]
        grid = {k: d["data"][k] for k in ("crop", "size", "spacing", "percentiles", "channels", "fold")}
        crops = [s["center_crop"] for s in d["data"]["sources"] if s.get("center_crop")]
        if crops:  # natural images: the crop changes what the pixels are (absent: brain hashes unchanged)
            grid["center_crop"] = crops
        section = method_spec(d["method"]).section
        own = {section: d[section]} if section else {}  # the method's own section (pddpm:, anoddpm:, ae:)
        return _digest({"method": d["method"], "seed": d["seed"], "grid": grid,
                        **{k: d[k] for k in ("encoder", "unet", "diffusion")}, **own})


def trained_source(recipe: Recipe) -> DataSource | None:
    """The first healthy source of a domain that trains: what both stages learn from (None: none)."""
    return next((s for s in recipe.data.sources if s.role == "healthy" and layout_domain(s.layout).trains), None)


def domain_of(recipe: Recipe) -> Domain:
    """The recipe's domain, chosen here once: that of its trained source (``volumes`` without one,
    whose training data then says so); colour (``data.channels: 3``) only exists for contrastive
    image sets, so a colour recipe is one whatever its sources."""
    source = trained_source(recipe)
    domain = layout_domain(source.layout) if source is not None else DOMAINS["volumes"]
    return DOMAINS["contrastive"] if recipe.data.channels == 3 else domain


# Fields added after checkpoints were written, with the value that reproduces the behaviour from before them
_ADDED_FIELDS: tuple[tuple[Any, ...], ...] = (  # (section, ..., field, value)
    ("diffusion", "simplex", "dims", 3), ("encoder", "normalize_z", True), ("encoder", "spark_norm_pix", True),
    ("encoder", "spark_fill", 0.5), ("encoder", "views", "positive", "erase"),
    ("encoder", "head_in_diffusion", "stage1"), ("diffusion", "train_t_range", None),
    ("diffusion", "counterfactual", 0.0), ("diffusion", "aug_intensity", False),
)


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]
