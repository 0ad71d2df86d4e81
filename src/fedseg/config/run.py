"""The whole run configuration: every section, plus the checks that span sections."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, SerializeAsAny, ValidatorFunctionWrapHandler, field_validator, model_validator

from fedseg.config.aggregation import AggregationConfig
from fedseg.config.attack import AttackConfig, check_attack_sites, known_site_names
from fedseg.config.base import StrictModel
from fedseg.config.codec import CodecConfig
from fedseg.config.data import DataConfig
from fedseg.config.eval import EvalConfig
from fedseg.config.federation import FederationConfig
from fedseg.config.flower import FlowerConfig
from fedseg.config.loss import LossConfig
from fedseg.config.privacy import PrivacyConfig, check_sample_dp_norm
from fedseg.config.model import ModelConfig, UNetConfig, typed_model_config
from fedseg.config.tracking import TrackingConfig
from fedseg.config.train import TrainConfig
from fedseg.config.plan import PlanConfig

__all__ = ["RunConfig", "SEED_LIMIT"]

SEED_LIMIT = 2**32
"""Seeds are below this (numpy's ``np.random.seed`` takes 32-bit unsigned integers)."""


class RunConfig(StrictModel):
    name: str = "run"
    seed: int = Field(0, ge=0, lt=SEED_LIMIT, description="run seed, 0 <= seed < 2**32 (the range numpy accepts)")
    engine: Literal["inprocess", "flower-sim", "flower"] = Field(
        "inprocess", description="inprocess | flower-sim (Flower simulation) | flower (set by a deployed ServerApp)"
    )
    data: DataConfig = Field(default_factory=DataConfig)
    model: SerializeAsAny[ModelConfig] = Field(
        default_factory=UNetConfig, description="model.name selects the typed config (MODEL_CONFIGS) its keys are "
        "validated against"
    )
    loss: LossConfig = Field(default_factory=LossConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    federation: FederationConfig = Field(default_factory=FederationConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    flower: FlowerConfig = Field(default_factory=FlowerConfig)
    algorithm: dict[str, Any] = Field(default_factory=lambda: {"name": "fedavg"})
    codec: CodecConfig = Field(default_factory=CodecConfig)
    aggregation: AggregationConfig = Field(default_factory=AggregationConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    attack: AttackConfig = Field(default_factory=AttackConfig)
    plan: PlanConfig = Field(default_factory=PlanConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        """The name becomes part of the default run directory (runs/<name>_<algorithm>_s<seed>)."""
        if not value.strip() or value in (".", "..") or "/" in value or "\\" in value:
            raise ValueError("the run name must be a non-empty plain name (no '/', '\\', '.' or '..'), e.g. "
                             "busbra_fedavg")
        return value

    @field_validator("algorithm")
    @classmethod
    def _has_name(cls, value: dict[str, Any]) -> dict[str, Any]:
        if "name" not in value:
            raise ValueError("algorithm needs a 'name' (see `fedseg algorithms`)")
        return value

    @field_validator("model", mode="wrap")
    @classmethod
    def _typed_model(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> ModelConfig:
        checked: ModelConfig = handler(typed_model_config(value))
        return checked

    @model_validator(mode="after")
    def _attack_sites_exist(self) -> RunConfig:
        check_attack_sites(self.attack, known_site_names(self.data))  # folder roots: checked once discovered
        return self

    @model_validator(mode="after")
    def _model_fits_the_patch(self) -> RunConfig:
        """A model that derives its layout from the patch (dynunet) gets it here, before the check below."""
        patch = self.train.patch_size if self.train.patch_size is not None else self.data.target_shape()
        resolved = self.model.for_patch(patch, self.data.preprocess.target_spacing or self.data.pixel_spacing)
        if resolved is not self.model:
            self.model = resolved
        return self

    @model_validator(mode="after")
    def _windows_fit_the_model(self) -> RunConfig:
        for key, size in (("train.patch_size", self.train.patch_size),
                          ("eval.sliding_window.roi_size", self.eval.sliding_window.roi_size)):
            steps = self.model.size_divisors(len(size)) if size is not None else []
            if size is not None and any(n % step for n, step in zip(size, steps, strict=True)):
                shown = steps[0] if len(set(steps)) == 1 else steps  # per axis only when they differ
                raise ValueError(f"{key} {size}: every entry must be a multiple of {shown} (the product of "
                                 f"model.strides {self.model.strides}), e.g. "
                                 f"{[max(step, n // step * step) for n, step in zip(size, steps, strict=True)]}")
        return self

    @model_validator(mode="after")
    def _sample_dp_without_batch_norm(self) -> RunConfig:
        check_sample_dp_norm(self.privacy.sample, self.model.norm)
        return self

    @model_validator(mode="after")
    def _sample_dp_with_plain_steps(self) -> RunConfig:
        # Opacus clips and noises per-sample gradients inside its optimizer's step: a global clip
        # before it would be overwritten, and a grad scaler would unscale the summed gradient only
        if self.privacy.sample.enabled and (self.train.grad_clip is not None or self.train.amp != "off"):
            key = "train.grad_clip" if self.train.grad_clip is not None else "train.amp"
            raise ValueError(f"{key} is refused with privacy.sample.enabled (DP-SGD): Opacus clips each sample's "
                             "gradient itself (privacy.sample.max_grad_norm) and runs in float32; unset "
                             "train.grad_clip and set train.amp: off")
        return self
