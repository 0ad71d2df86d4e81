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
    "DataConfig",
    "ModelConfig",
    "LossConfig",
    "TrainConfig",
    "FederationConfig",
    "EvalConfig",
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


class DataConfig(StrictModel):
    source: Literal["synthetic", "folder"] = "synthetic"
    synthetic: SyntheticDataConfig = Field(default_factory=SyntheticDataConfig)
    root: Path | None = Field(None, description="<root>/<site>/{images,masks}/ for source=folder")
    sites: list[str] | None = Field(None, description="site folder names; default: every site under root")
    image_size: list[int] | None = Field(None, description="resize every 2D image to this (H, W)")
    channels: Literal[1, 3] = 1
    num_classes: int = Field(2, ge=2)
    group_column: str | None = Field(
        None, description="metadata.csv column that groups images of one patient/video"
    )
    pixel_spacing: list[float] | None = Field(None, description="mm per pixel for PNG data (default 1.0)")
    split: SplitConfig = Field(default_factory=SplitConfig)

    @model_validator(mode="after")
    def _root_for_folder(self) -> DataConfig:
        if self.source == "folder" and self.root is None:
            raise ValueError("data.root is required when data.source is 'folder'")
        return self


class ModelConfig(StrictModel):
    name: str = "unet"
    channels: list[int] = Field(default_factory=lambda: [16, 32, 64, 128])
    strides: list[int] = Field(default_factory=lambda: [2, 2, 2])
    num_res_units: int = Field(1, ge=0)
    norm: Literal["batch", "instance", "group", "none"] = "batch"
    dropout: float = Field(0.0, ge=0, lt=1)

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


class TrainConfig(StrictModel):
    batch_size: int = Field(8, ge=1)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    optimizer_state: Literal["reset", "persist"] = Field(
        "reset", description="reset the optimizer every round, or keep it in client state"
    )
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    deterministic: bool = True


class FederationConfig(StrictModel):
    rounds: int = Field(10, ge=1)
    fraction: float = Field(1.0, gt=0, le=1, description="fraction of clients sampled per round")
    min_clients: int = Field(1, ge=1)
    local_epochs: int = Field(1, ge=1)
    state_spill_mb: float = Field(
        256.0, ge=0, description="client states beyond this total size are kept on disk"
    )


class EvalConfig(StrictModel):
    every: int = Field(1, ge=1, description="validate every k rounds (and always at the last)")
    batch_size: int = Field(16, ge=1)
    personalized: bool = True


class RunConfig(StrictModel):
    name: str = "run"
    seed: int = 0
    engine: Literal["inprocess"] = "inprocess"
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    federation: FederationConfig = Field(default_factory=FederationConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    algorithm: dict[str, Any] = Field(default_factory=lambda: {"name": "fedavg"})

    @field_validator("algorithm")
    @classmethod
    def _has_name(cls, value: dict[str, Any]) -> dict[str, Any]:
        if "name" not in value:
            raise ValueError("algorithm needs a 'name' (see `fedseg algorithms`)")
        return value


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
