"""Run configuration: YAML validated by pydantic.

Every section rejects unknown keys; the error names the key and the allowed ones. Algorithm
hyperparameters are validated against the algorithm's own dataclass (see
:func:`fedseg.algorithms.build_algorithm`), so ``algorithm`` is a free mapping here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fedseg.registry import suggest

__all__ = [
    "StrictModel",
    "SplitConfig",
    "SyntheticDataConfig",
    "PreprocessConfig",
    "PartitionConfig",
    "DataConfig",
    "LabelCorruptionConfig",
    "WeakLabelConfig",
    "ModelConfig",
    "LossConfig",
    "AugmentConfig",
    "TrainConfig",
    "SlidingWindowConfig",
    "FederationConfig",
    "EvalConfig",
    "FlowerDPConfig",
    "FlowerConfig",
    "CodecConfig",
    "RunConfig",
    "ConfigError",
    "load_config",
    "apply_overrides",
    "config_from_dict",
]


class ConfigError(ValueError):
    """A configuration problem; the message names the key, the value and what is allowed."""


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SplitConfig(StrictModel):
    """Per-site train/val/test fractions (by group when the dataset has a group column)."""

    train: float = Field(0.7, gt=0, lt=1)
    val: float = Field(0.1, ge=0, lt=1)
    test: float = Field(0.2, ge=0, lt=1)

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitConfig:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"data.split fractions must sum to 1, got {total:.4f}")
        return self


class SyntheticDataConfig(StrictModel):
    """The embedded multi-site generator (the default dataset)."""

    num_sites: int = Field(3, ge=1)
    spatial_dims: Literal[2, 3] = 2
    size: int = Field(64, ge=8, description="side length in voxels of every image")
    samples_per_site: list[int] | None = Field(
        None, description="images per site; default is an imbalanced ramp (see data.synthetic)"
    )
    num_classes: int = Field(2, ge=2, le=4, description="background + foreground classes")


class PreprocessConfig(StrictModel):
    """How every case is brought onto one grid and intensity scale (see ``fedseg.data.preprocess``).

    Geometry, in this order: optional reorientation (NIfTI), resampling, centred crop/pad.

    * ``target_spacing`` only: resample to that spacing (every case must then share one shape).
    * ``target_spacing`` + ``target_shape``: resample to the spacing, then crop/pad to the shape.
    * ``target_shape`` only: resample every case to that shape (its spacing follows).
    * neither: keep the file grid (all files must share one shape).
    """

    target_spacing: list[float] | None = Field(None, description="mm per spatial axis to resample to")
    target_shape: list[int] | None = Field(
        None, description="final array shape; with target_spacing: crop/pad to it, else resample to it"
    )
    orientation: str | None = Field(
        None, description="reorient NIfTI volumes to these axis codes first (e.g. RAS); None keeps the file order"
    )
    normalize: Literal["zscore", "zscore_nonzero", "ct", "none"] = Field(
        "zscore", description="per-image z-score, z-score over non-zero voxels, CT window to [0, 1], or none"
    )
    ct_window: list[float] | None = Field(None, description="[low, high] intensities for normalize=ct")
    anti_aliasing: bool = Field(True, description="Gaussian smoothing before downsampling images (never masks)")

    @field_validator("target_spacing")
    @classmethod
    def _positive_spacing(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and (not value or min(value) <= 0):
            raise ValueError(f"data.preprocess.target_spacing must be positive mm values, got {value}")
        return value

    @field_validator("target_shape")
    @classmethod
    def _positive_shape(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (not value or min(value) < 1):
            raise ValueError(f"data.preprocess.target_shape must be positive ints, got {value}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> PreprocessConfig:
        if self.target_spacing is not None and self.target_shape is not None:
            if len(self.target_spacing) != len(self.target_shape):
                raise ValueError("data.preprocess.target_spacing and target_shape need one value per spatial axis")
        if self.normalize == "ct":
            if self.ct_window is None or len(self.ct_window) != 2 or self.ct_window[0] >= self.ct_window[1]:
                raise ValueError("data.preprocess.normalize=ct needs ct_window: [low, high] with low < high")
        if self.orientation is not None:
            codes = self.orientation.upper()
            axes = [{"L": 0, "R": 0, "P": 1, "A": 1, "I": 2, "S": 2}.get(c) for c in codes]
            if len(codes) != 3 or None in axes or len(set(axes)) != 3:
                raise ValueError(f"data.preprocess.orientation {self.orientation!r}: three axis codes, one of L/R, "
                                 "A/P, I/S each (e.g. RAS, LPS)")
            object.__setattr__(self, "orientation", codes)
        return self


class PartitionConfig(StrictModel):
    """Split one single-source dataset into simulated sites (whole groups, reproducibly).

    ``iid``: groups shuffled and dealt out evenly. ``dirichlet``: site shares of the groups drawn
    from Dirichlet(alpha) (quantity skew). ``foreground``: groups binned by foreground size
    (quantiles), each bin spread over the sites with Dirichlet(alpha) proportions (size skew; small
    alpha -> each site sees mostly one size range).
    """

    method: Literal["iid", "dirichlet", "foreground"] = "iid"
    num_sites: int = Field(3, ge=2)
    alpha: float = Field(0.5, gt=0, description="Dirichlet concentration (smaller = more skew)")
    bins: int | None = Field(None, ge=2, description="foreground-size bins; default num_sites")
    site_names: list[str] | None = Field(None, description="names of the simulated sites; default site0, site1...")
    min_groups: int = Field(1, ge=1, description="every site gets at least this many groups (3: train+val+test)")
    seed: int | None = Field(None, description="partition seed; default the run seed")

    @model_validator(mode="after")
    def _names(self) -> PartitionConfig:
        if self.site_names is not None and (len(self.site_names) != self.num_sites or len(set(self.site_names))
                                            != self.num_sites):
            raise ValueError(f"data.partition.site_names needs {self.num_sites} distinct names, got {self.site_names}")
        return self


class LabelCorruptionConfig(StrictModel):
    """An explicit experiment: deliberately corrupt one site's labels (see :mod:`fedseg.data.corrupt`).

    The test split is never corrupted, so test metrics stay measured against the true labels.
    """

    site: str = Field(description="the site whose labels are corrupted")
    mode: Literal["dilate", "erode", "shuffle"] = Field(
        "shuffle", description="dilate/erode every foreground class by `radius` voxels, or shuffle masks across images"
    )
    radius: int = Field(5, ge=1, description="dilate/erode radius in voxels")
    splits: list[Literal["train", "val"]] = Field(
        default_factory=lambda: ["train", "val"],  # type: ignore[arg-type]  # list of the Literals
        description="splits of the site to corrupt (never test)",
    )


class WeakLabelConfig(StrictModel):
    """Where the weak labels of box- and image-supervised sites come from (:mod:`fedseg.data.supervision`).

    ``derive``: computed once from the masks at data-preparation time (experiments: turn any
    pixel-labelled dataset into a mixed-supervision federation), then the training masks are
    dropped. ``files``: read from ``<root>/<site>/boxes.json`` or ``boxes.csv`` (box sites) and
    ``<root>/<site>/labels.csv`` (image sites); the training masks of those sites are never read.
    """

    source: Literal["derive", "files"] = "derive"
    root: Path | None = Field(None, description="files: folder holding <site>/boxes.json|csv, labels.csv; "
                                                "default data.root")
    box_margin: int | list[int] = Field(
        default_factory=lambda: [1, 10],
        description="derive: pixels added to each box side, fixed (int) or drawn per side from [lo, hi] (inclusive)",
    )
    seed: int | None = Field(None, description="derive: seed of the random box margins; default the run seed")

    @field_validator("box_margin")
    @classmethod
    def _margin(cls, value: int | list[int]) -> int | list[int]:
        if isinstance(value, int):
            if value < 0:
                raise ValueError(f"data.weak_labels.box_margin must be >= 0, got {value}")
        elif len(value) != 2 or not 0 <= value[0] <= value[1]:
            raise ValueError(f"data.weak_labels.box_margin must be an int >= 0 or [lo, hi] with 0 <= lo <= hi, "
                             f"got {value}")
        return value

    def margin_range(self) -> tuple[int, int]:
        """``(lo, hi)`` inclusive; a fixed margin ``m`` is ``(m, m)``."""
        if isinstance(self.box_margin, int):
            return self.box_margin, self.box_margin
        return self.box_margin[0], self.box_margin[1]


class DataConfig(StrictModel):
    """The dataset spec: where the sites are, what the files hold, and how they are preprocessed and split.

    Real data: ``<root>/<site>/{images,masks}/`` (PNG/JPG/BMP or NIfTI; multi-channel volumes as
    ``<case>_0000.nii.gz, <case>_0001.nii.gz ...`` with ``masks/<case>.nii.gz``) and an optional
    ``<root>/<site>/metadata.csv`` (column ``id`` = case id).
    """

    source: Literal["synthetic", "folder"] = "synthetic"
    synthetic: SyntheticDataConfig = Field(default_factory=SyntheticDataConfig)
    root: Path | None = Field(None, description="<root>/<site>/{images,masks}/ for source=folder")
    sites: list[str] | None = Field(None, description="site folder names; default: every site under root")
    spatial_dims: Literal[2, 3] | None = Field(None, description="2 or 3; default: from the file type (NIfTI = 3)")
    modality: str | None = Field(None, description="imaging modality (MR, CT, US, endoscopy...), informative")
    channels: int = Field(1, ge=1, description="input channels: 2D 1 = grey, 3 = RGB; 3D = files per case")
    channel_names: list[str] | None = Field(None, description="name of every input channel (e.g. FLAIR, T1c)")
    num_classes: int = Field(2, ge=2)
    label_names: list[str] | None = Field(None, description="name of every class, background first")
    label_map: dict[int, int] | None = Field(
        None, description="mask file value -> class index (e.g. BraTS 0-4 -> regions); default identity"
    )
    group_column: str | dict[str, str] | None = Field(
        None, description="metadata.csv column that groups images of one patient/video; or {site: column} "
        "(sites not named group by case)"
    )
    pixel_spacing: list[float] | None = Field(None, description="mm per pixel for PNG data (default 1.0)")
    image_size: list[int] | None = Field(
        None, description="resize every 2D image to this (H, W); shorthand for preprocess.target_shape"
    )
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    split_file: Path | None = Field(
        None, description="fixed splits {site: {train|val|test: [case ids]}} (e.g. a run's splits.json)"
    )
    partition: PartitionConfig | None = Field(None, description="split a single-source dataset into sites")
    cache: bool = Field(True, description="keep preprocessed arrays on disk so later loads do not decode files")
    cache_dir: Path | None = Field(None, description="default: $FEDSEG_CACHE_DIR or .fedseg_cache")
    corrupt_labels: LabelCorruptionConfig | None = Field(
        None, description="experiment option: corrupt one site's train/val labels (fedseg.data.corrupt)"
    )
    supervision: dict[str, Literal["pixel", "box", "image"]] = Field(
        default_factory=dict, description="site -> label kind of its training split: pixel (masks), box or image "
        "(image-level class labels); sites not named are pixel (fedseg.data.supervision)"
    )
    weak_labels: WeakLabelConfig = Field(default_factory=WeakLabelConfig)

    @model_validator(mode="after")
    def _root_for_folder(self) -> DataConfig:
        if self.source == "folder" and self.root is None:
            raise ValueError("data.root is required when data.source is 'folder'")
        if self.source != "folder" and (self.partition is not None or self.split_file is not None):
            raise ValueError("data.partition and data.split_file apply to data.source 'folder' only")
        if self.channel_names is not None and len(self.channel_names) != self.channels:
            raise ValueError(f"data.channel_names has {len(self.channel_names)} names for {self.channels} channel(s)")
        if self.label_names is not None and len(self.label_names) != self.num_classes:
            raise ValueError(f"data.label_names has {len(self.label_names)} names for num_classes={self.num_classes}")
        if self.label_map is not None:
            bad = sorted({v for v in self.label_map.values() if not 0 <= v < self.num_classes})
            if bad:
                raise ValueError(f"data.label_map targets {bad} are not class indices in [0, {self.num_classes})")
        if self.image_size is not None and self.preprocess.target_shape is not None:
            if list(self.image_size) != list(self.preprocess.target_shape):
                raise ValueError("data.image_size and data.preprocess.target_shape disagree; set only one")
        weak = sorted(site for site, kind in self.supervision.items() if kind != "pixel")
        if weak and self.weak_labels.source == "files":
            if self.source != "folder":
                raise ValueError("data.weak_labels.source 'files' needs data.source 'folder'; use 'derive' to make "
                                 "weak labels from the masks of synthetic data")
            if self.partition is not None:
                raise ValueError("data.weak_labels.source 'files' cannot be used with data.partition (simulated "
                                 "sites have no label files); use 'derive'")
        return self

    def group_column_of(self, site: str) -> str | None:
        """The group column of ``site`` (``None``: every case is its own group)."""
        if isinstance(self.group_column, dict):
            return self.group_column.get(site)
        return self.group_column

    def target_shape(self) -> list[int] | None:
        """``preprocess.target_shape``, or the legacy ``image_size``."""
        return self.preprocess.target_shape if self.preprocess.target_shape is not None else self.image_size


class ModelConfig(StrictModel):
    name: str = "unet"
    channels: list[int] = Field(default_factory=lambda: [16, 32, 64, 128])
    strides: list[int] = Field(default_factory=lambda: [2, 2, 2])
    num_res_units: int = Field(1, ge=0)
    norm: Literal["batch", "instance", "group", "none"] = "batch"
    dropout: float = Field(0.0, ge=0, lt=1)
    # transunet only (fedseg.models.transunet); the plain unet ignores them
    heads: int = Field(4, ge=1, description="transunet: attention heads; must divide channels[-1]")
    transformer_layers: int = Field(1, ge=0, description="transunet: transformer blocks at the bottleneck (0: none)")
    mlp_ratio: float = Field(2.0, gt=0, description="transunet: transformer MLP width / channels[-1]")
    pos_embed: Literal["learned", "sincos", "none"] = Field("learned", description="transunet: positional embedding")
    pos_grid: int = Field(8, ge=1, description="transunet: side of the learned position grid (resized to the bottleneck)")
    init_checkpoint: str | None = Field(
        None, description="initial weights from this file (a state dict, or a checkpoint holding one under "
        "'state_dict'/'model'), loaded with weights_only=True before round 1"
    )

    @model_validator(mode="after")
    def _strides_match(self) -> ModelConfig:
        if len(self.strides) != len(self.channels) - 1:
            raise ValueError(
                f"model.strides needs len(channels)-1 = {len(self.channels) - 1} entries, got {len(self.strides)}"
            )
        return self


class LossConfig(StrictModel):
    """Dice + cross-entropy: ``dice_weight * Dice + ce_weight * CE``."""

    dice_weight: float = Field(1.0, ge=0)
    ce_weight: float = Field(1.0, ge=0)


Range = tuple[float, float]


def _check_ranges(model: BaseModel, section: str) -> None:
    """Every ``(low, high)`` field of ``model`` must have ``low <= high``."""
    for name, value in model:
        if isinstance(value, tuple) and len(value) == 2 and value[0] > value[1]:
            raise ValueError(f"{section}.{name} must be (low, high) with low <= high, got {list(value)}")


class AugmentConfig(StrictModel):
    """On-the-fly augmentation of training batches (MONAI array transforms, :mod:`fedseg.data.augment`).

    Off by default. Each transform fires independently with its probability, per sample, in this
    order: rotation, scale/translate, elastic, flips, intensity scale, intensity shift, Gaussian
    noise, gamma. Evaluation and prediction never augment.
    """

    enabled: bool = False
    rotate_prob: float = Field(0.2, ge=0, le=1)
    rotate_deg: float = Field(15.0, ge=0, le=30, description="max |angle| in degrees about each axis (<= 30)")
    affine_prob: float = Field(0.2, ge=0, le=1, description="probability of a random scale + translation")
    scale: float = Field(0.15, ge=0, lt=1, description="zoom factor drawn from [1 - scale, 1 + scale] per axis")
    translate: float = Field(0.1, ge=0, lt=1, description="max shift per axis as a fraction of the patch size")
    elastic_prob: float = Field(0.1, ge=0, le=1)
    elastic_sigma: Range = Field((5.0, 8.0), description="3D: Rand3DElastic sigma_range (voxels)")
    elastic_magnitude: Range = Field((100.0, 200.0), description="3D: Rand3DElastic magnitude_range")
    elastic_spacing: int = Field(16, ge=2, description="2D: Rand2DElastic control-point spacing (pixels)")
    elastic_magnitude_2d: Range = Field((1.0, 2.0), description="2D: Rand2DElastic magnitude_range (pixels)")
    flip_prob: float = Field(0.5, ge=0, le=1, description="probability of a flip, per axis")
    flip_axes: list[int] | None = Field(None, description="spatial axes to flip (default: all)")
    intensity_scale_prob: float = Field(0.15, ge=0, le=1)
    intensity_scale: float = Field(0.1, ge=0, lt=1, description="image * (1 + f), f in [-scale, scale]")
    intensity_shift_prob: float = Field(0.15, ge=0, le=1)
    intensity_shift: float = Field(0.1, ge=0, description="image + s, s in [-shift, shift] (z-score units)")
    noise_prob: float = Field(0.15, ge=0, le=1)
    noise_std: float = Field(0.1, ge=0, description="Gaussian noise std (z-score units)")
    gamma_prob: float = Field(0.15, ge=0, le=1)
    gamma: Range = Field((0.7, 1.5), description="gamma range of RandAdjustContrast (stats retained)")

    @model_validator(mode="after")
    def _ranges(self) -> AugmentConfig:
        _check_ranges(self, "train.augment")
        if any(v <= 0 for v in (*self.elastic_sigma, *self.gamma)):
            raise ValueError(f"train.augment.elastic_sigma and gamma must be > 0, got {self.elastic_sigma}, {self.gamma}")
        return self


class TrainConfig(StrictModel):
    batch_size: int = Field(8, ge=1)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    optimizer_state: Literal["auto", "reset", "persist"] = Field(
        "auto",
        description="reset the optimizer every round, or keep it in client state; auto: the algorithm's own "
        "policy (ordinary training, i.e. persist, for local and centralized; reset for federated methods)",
    )
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    deterministic: bool = True
    patch_size: list[int] | None = Field(
        None, description="train on random patches of this size (one int per spatial axis, each divisible by "
        "the product of model.strides); default: whole images"
    )
    fg_oversample: float = Field(
        1 / 3, ge=0, le=1, description="fraction of each batch's patches centred on a foreground voxel (nnU-Net: 1/3)"
    )
    samples_per_volume: int = Field(1, ge=1, description="patches per case per epoch (with patch_size)")
    augment: AugmentConfig = Field(default_factory=AugmentConfig)

    @field_validator("patch_size")
    @classmethod
    def _patch_positive(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (len(value) not in (2, 3) or min(value) < 1):
            raise ValueError(f"train.patch_size needs 2 or 3 positive sizes, got {value}")
        return value


class FederationConfig(StrictModel):
    rounds: int = Field(10, ge=1)
    fraction: float = Field(1.0, gt=0, le=1, description="fraction of clients sampled per round")
    min_clients: int = Field(1, ge=1)
    local_epochs: int = Field(1, ge=1)
    train_sites: list[str] | None = Field(
        None, description="sites that train (are sampled for fit); default all. Every site is still evaluated"
    )
    state_spill_mb: float = Field(
        256.0, ge=0, description="client states beyond this total size are kept on disk"
    )

    @field_validator("train_sites")
    @classmethod
    def _train_sites(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and (not value or len(set(value)) != len(value)):
            raise ValueError(f"federation.train_sites must list at least one site, each once; got {value}")
        return value


class SlidingWindowConfig(StrictModel):
    """Whole-image prediction by MONAI's sliding-window inference (used when a ROI is known)."""

    roi_size: list[int] | None = Field(
        None, description="window size; default: train.patch_size. Without both, whole images go through the model"
    )
    overlap: float = Field(0.5, ge=0, lt=1)
    mode: Literal["gaussian", "constant"] = "gaussian"
    batch_size: int = Field(4, ge=1, description="windows per forward pass")


class EvalConfig(StrictModel):
    every: int = Field(1, ge=1, description="validate every k rounds (and always at the last)")
    batch_size: int = Field(16, ge=1)
    personalized: bool = True
    select: Literal["best_val", "last"] = Field(
        "best_val",
        description="checkpoint scored on test: the round with the best mean validation Dice (per client for "
        "personalised models), or the last round",
    )
    sliding_window: SlidingWindowConfig = Field(default_factory=SlidingWindowConfig)


class CodecConfig(StrictModel):
    """Compression of messages on the wire, applied by the engine for every algorithm (fedseg.codecs).

    A chain is a list of ``{name: ..., <hyperparameters>}``: e.g. ``up: [{name: topk, ratio: 0.01},
    {name: int8}]``. Empty lists send float32 as is. Codec names and keys are validated when the
    run is set up (``fedseg.codecs.build_wire_codecs``).
    """

    up: list[dict[str, Any]] = Field(
        default_factory=list, description="client->server chain on the update w_k - w (topk, randk, fp16, int8, int16, sign)"
    )
    down: list[dict[str, Any]] = Field(
        default_factory=list, description="server->client chain on the broadcast weights (fp16, int8, int16)"
    )
    error_feedback: bool = Field(True, description="keep what the up chain lost in client state; add it next round")


class FlowerDPConfig(StrictModel):
    """Central differential privacy on Flower: clients clip their update with Flower's
    ``fixedclipping_mod`` (train messages only), the server adds Gaussian noise to the aggregate
    with ``DifferentialPrivacyClientSideFixedClipping`` (std = noise_multiplier * clipping_norm / m)."""

    enabled: bool = False
    noise_multiplier: float = Field(1.0, ge=0)
    clipping_norm: float = Field(1.0, gt=0, description="L2 bound of each client's update (all shared tensors)")


class FlowerConfig(StrictModel):
    """The Flower engines (``--engine flower-sim`` and a SuperLink deployment); see docs/deployment.md."""

    sites: list[str] | None = Field(
        None, description="deployment: the site names the SuperNodes serve (default: data.sites, or synthetic names)"
    )
    connect_timeout: float = Field(300.0, gt=0, description="seconds to wait for every site's SuperNode")
    reply_timeout: float = Field(3600.0, gt=0, description="seconds to wait for the replies of one message round")
    poll_interval: float = Field(0.05, gt=0, le=5, description="seconds between the ServerApp's reply pulls")
    pack_arrays: bool = Field(
        True, description="one Flower Array per dtype (fast) instead of one per tensor (docs/deployment.md)"
    )
    sim_cpus_per_client: float = Field(1.0, gt=0, description="flower-sim: Ray CPUs per ClientApp")
    sim_num_cpus: int | None = Field(None, ge=1, description="flower-sim: CPUs Ray may use (default: all)")
    dp: FlowerDPConfig = Field(default_factory=FlowerDPConfig)
    secure_aggregation: bool = Field(False, description="not available on Flower 1.41: see docs/deployment.md")

    @field_validator("secure_aggregation")
    @classmethod
    def _no_secagg(cls, value: bool) -> bool:
        if value:
            raise ValueError(
                "flower.secure_aggregation: Flower 1.41 runs SecAgg+ only through its legacy API "
                "(SecAggPlusWorkflow + secaggplus_mod on legacy fit messages, plain weighted averaging); "
                "fedseg's Message-API apps cannot use it. Leave it false; see docs/deployment.md"
            )
        return value


class RunConfig(StrictModel):
    name: str = "run"
    seed: int = 0
    engine: Literal["inprocess", "flower-sim", "flower"] = Field(
        "inprocess", description="inprocess | flower-sim (Flower simulation) | flower (set by a deployed ServerApp)"
    )
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    federation: FederationConfig = Field(default_factory=FederationConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    flower: FlowerConfig = Field(default_factory=FlowerConfig)
    algorithm: dict[str, Any] = Field(default_factory=lambda: {"name": "fedavg"})
    codec: CodecConfig = Field(default_factory=CodecConfig)

    @field_validator("algorithm")
    @classmethod
    def _has_name(cls, value: dict[str, Any]) -> dict[str, Any]:
        if "name" not in value:
            raise ValueError("algorithm needs a 'name' (see `fedseg algorithms`)")
        return value

    @model_validator(mode="after")
    def _windows_fit_the_model(self) -> RunConfig:
        step = 1
        for s in self.model.strides:
            step *= s
        for key, size in (("train.patch_size", self.train.patch_size),
                          ("eval.sliding_window.roi_size", self.eval.sliding_window.roi_size)):
            if size is not None and any(n % step for n in size):
                raise ValueError(f"{key} {size}: every entry must be a multiple of {step} (the product of "
                                 f"model.strides {self.model.strides}), e.g. {[max(step, n // step * step) for n in size]}")
        return self


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Walk ``loc`` through nested pydantic models and return the allowed keys there."""
    current: Any = model
    for part in loc[:-1]:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        field = current.model_fields.get(str(part))
        if field is None:
            return []
        current = field.annotation
    if isinstance(current, type) and issubclass(current, BaseModel):
        return sorted(current.model_fields)
    return []


def _format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not isinstance(p, int) or True)
        key = ".".join(str(p) for p in loc) or "<root>"
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(RunConfig, loc)
            hint = suggest(str(loc[-1]), allowed)
            lines.append(f"unknown key '{key}'; allowed here: {', '.join(allowed)}.{hint}")
        else:
            value = e.get("input")
            lines.append(f"'{key}': {e['msg']} (got {value!r})")
    return "invalid config:\n  " + "\n  ".join(lines)


def config_from_dict(raw: dict[str, Any]) -> RunConfig:
    """Validate a plain mapping into a :class:`RunConfig` or raise :class:`ConfigError`."""
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_errors(err)) from None


def _parse_value(text: str) -> Any:
    """Parse a ``--set`` value with YAML rules (numbers, bools, lists)."""
    return yaml.safe_load(text) if text != "" else ""


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides to a raw config mapping (returns a new mapping)."""
    import copy

    out = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. federation.rounds=5")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = out
        for part in parts[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {key}: '{part}' is a value, not a section")
            node = nxt
        node[parts[-1]] = _parse_value(value)
    return out


def load_config(path: Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read YAML at ``path`` (or defaults when None), apply overrides, validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping, got {type(loaded).__name__}")
        raw = loaded
    raw = apply_overrides(raw, overrides or [])
    return config_from_dict(raw)
