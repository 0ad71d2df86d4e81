"""The ``data`` section: where the sites are, what the files hold, how they are preprocessed and split."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from fedseg.config.base import StrictModel
from fedseg.config.site import check_site_specs, site_entries_to_specs

__all__ = [
    "SplitConfig",
    "SyntheticDataConfig",
    "PreprocessConfig",
    "PartitionConfig",
    "LabelCorruptionConfig",
    "WeakLabelConfig",
    "SiteSpec",
    "DataConfig",
    "NnUNetConfig",
]


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
    seed: int | None = Field(None, ge=0, lt=2**32, description="partition seed (0 <= seed < 2**32); default the run seed")

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
    seed: int | None = Field(None, ge=0, lt=2**32, description="derive: seed of the random box margins (0 <= seed < "
                             "2**32); default the run seed")

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


class SiteSpec(StrictModel):
    """One site's overrides of the ``data`` section (an entry of ``data.sites``; see
    :mod:`fedseg.config.site` for the rules and :mod:`fedseg.data.site_spec` for how they are read).

    Every site must still feed the model ``data.channels`` input channels and reach the classes
    ``0..data.num_classes-1``: both are checked when the config is validated.
    """

    path: Path | None = Field(None, description="the site's folder (relative: to data.root); default <root>/<name>")
    channels: list[int] | Literal["grey"] | None = Field(
        None, description="which channels feed the model: indices of the channel files (3D: _0000, _0001...) or "
        "of the colour channels (2D RGB: [0] = red), or grey (luminance of an RGB image)"
    )
    label_map: dict[int, int] | None = Field(None, description="mask file value -> class index for this site")
    preprocess: PreprocessConfig | None = Field(
        None, description="replaces data.preprocess for this site (target_shape, when unset, stays the federation's)"
    )
    group_column: str | None = Field(None, description="metadata.csv column grouping this site's cases")
    modality: str | None = Field(None, description="imaging modality of this site (MR, US, dermoscopy...), informative")
    spatial_dims: Literal[2, 3] | None = Field(None, description="2 or 3: the site's files; default from the file type")
    slice_axis: Literal[0, 1, 2] | None = Field(None, description="feed this site's 3D volumes to a 2D model as "
                                                                  "slices along this array axis")
    slice_keep_empty: float | None = Field(None, ge=0, le=1, description="with slice_axis: keep every slice with "
                                           "foreground and this fraction of the empty ones (seeded); default all")


class NnUNetConfig(StrictModel):
    """nnU-Net raw datasets as sites (``data.source: nnunet``; see :mod:`fedseg.data.nnunet`).

    ``data.root`` is either a folder of ``DatasetXXX_Name/`` folders (each one site, named by its
    folder; ``data.sites`` picks some) or one dataset folder (it holds ``dataset.json``): one site,
    or several when ``site_file`` maps its cases to sites. ``dataset.json`` sets ``data.channels``,
    ``channel_names``, ``num_classes``, ``label_names`` (and ``label_map`` for label values that
    are not 0..n-1).
    """

    site_file: Path | None = Field(
        None, description="one dataset split into sites: a CSV (columns id_column, site_column, more columns for "
        "data.group_column) or a JSON {case id: site} or {site: [case ids]}; relative paths: to data.root"
    )
    id_column: str = Field("id", description="site_file CSV column holding the nnU-Net case identifier")
    site_column: str = Field("site", description="site_file CSV column holding the site name")
    use_test: bool = Field(False, description="also read imagesTs/ cases that have a label in labelsTs/ (split "
                           "like the others; fix their split with data.split_file)")


class DataConfig(StrictModel):
    """The dataset spec: where the sites are, what the files hold, and how they are preprocessed and split.

    Real data: ``<root>/<site>/{images,masks}/`` (PNG/JPG/BMP or NIfTI; multi-channel volumes as
    ``<case>_0000.nii.gz, <case>_0001.nii.gz ...`` with ``masks/<case>.nii.gz``) and an optional
    ``<root>/<site>/metadata.csv`` (column ``id`` = case id).
    """

    source: Literal["synthetic", "folder", "nnunet"] = "synthetic"
    synthetic: SyntheticDataConfig = Field(default_factory=SyntheticDataConfig)
    root: Path | None = Field(None, description="<root>/<site>/{images,masks}/ for source=folder")
    sites: list[str] | None = Field(None, description="site folder names; default: every site under root. An entry "
                                    "may be {name: ..., <SiteSpec keys>}: it moves to data.site_specs")
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
    cache_dir: Path | None = Field(None, description="default: $FEDSEG_CACHE_DIR, else <run dir>/cache for a run, "
                                      "else ~/.cache/fedseg (never the current directory)")
    corrupt_labels: LabelCorruptionConfig | None = Field(
        None, description="experiment option: corrupt one site's train/val labels (fedseg.data.corrupt)"
    )
    supervision: dict[str, Literal["pixel", "box", "image"]] = Field(
        default_factory=dict, description="site -> label kind of its training split: pixel (masks), box or image "
        "(image-level class labels); sites not named are pixel (fedseg.data.supervision)"
    )
    weak_labels: WeakLabelConfig = Field(default_factory=WeakLabelConfig)
    site_specs: dict[str, SiteSpec] = Field(
        default_factory=dict, description="site -> its overrides (channels, label_map, preprocess, group_column, "
        "modality, spatial_dims, slice_axis, path); entries of data.sites are stored here"
    )
    slice_axis: Literal[0, 1, 2] | None = Field(
        None, description="feed every 3D site to a 2D model as slices along this array axis (a site entry overrides)"
    )
    slice_keep_empty: float | None = Field(
        None, ge=0, le=1, description="with slicing: keep every slice with foreground and this fraction of the "
        "empty ones (seeded per volume); default every slice"
    )

    @model_validator(mode="before")
    @classmethod
    def _site_entries(cls, raw: Any) -> Any:
        return site_entries_to_specs(raw)
    nnunet: NnUNetConfig = Field(default_factory=NnUNetConfig, description="source=nnunet: nnU-Net raw datasets")

    @field_validator("sites")
    @classmethod
    def _plain_site_names(cls, value: list[str] | None) -> list[str] | None:
        """Site names are folder names directly under ``data.root``: not empty, not repeated, and
        no path separators or ``..`` (a site must not point outside the root)."""
        if value is None:
            return value
        if not value:
            raise ValueError("data.sites is empty; list the site folders to use, or leave it unset for all of them")
        bad = [s for s in value if not s.strip() or s in (".", "..") or "/" in s or "\\" in s]
        if bad:
            raise ValueError(f"data.sites: {bad} are not folder names directly under data.root (no '/', '\\', "
                             "'..' or empty names)")
        repeated = sorted({s for s in value if value.count(s) > 1})
        if repeated:
            raise ValueError(f"data.sites names {repeated} more than once")
        return value

    @model_validator(mode="after")
    def _root_for_folder(self) -> DataConfig:
        if self.source in ("folder", "nnunet") and self.root is None:
            raise ValueError(f"data.root is required when data.source is {self.source!r}")
        if self.source == "synthetic" and (self.partition is not None or self.split_file is not None):
            raise ValueError("data.partition and data.split_file apply to data.source 'folder' only (or 'nnunet'), not to "
                             "synthetic data")
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
        check_site_specs(self)
        return self

    def site_spec(self, site: str) -> SiteSpec | None:
        """The overrides of ``site`` (``None``: it follows the ``data`` section)."""
        return self.site_specs.get(site)

    def group_column_of(self, site: str) -> str | None:
        """The group column of ``site`` (``None``: every case is its own group)."""
        spec = self.site_specs.get(site)
        if spec is not None and spec.group_column is not None:
            return spec.group_column
        if isinstance(self.group_column, dict):
            return self.group_column.get(site)
        return self.group_column

    def target_shape(self) -> list[int] | None:
        """``preprocess.target_shape``, or the legacy ``image_size``."""
        return self.preprocess.target_shape if self.preprocess.target_shape is not None else self.image_size
