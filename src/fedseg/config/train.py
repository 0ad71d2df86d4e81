"""The ``train`` section: optimizer, patches and augmentation of local training."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from fedseg.config.base import StrictModel

__all__ = ["AugmentConfig", "TrainConfig"]


Range = tuple[float, float]


def _check_ranges(model: BaseModel, section: str) -> None:
    """Every ``(low, high)`` field of ``model`` must have ``low <= high``."""
    for name, value in model:
        if isinstance(value, tuple) and len(value) == 2 and value[0] > value[1]:
            raise ValueError(f"{section}.{name} must be (low, high) with low <= high, got {list(value)}")


class AugmentConfig(StrictModel):
    """On-the-fly augmentation of training batches, batched on the training device (:mod:`fedseg.data.augment`).

    Off by default. Each transform fires independently with its probability, per sample, in this
    order: rotation, scale/translate, elastic, flips, intensity scale, intensity shift, Gaussian
    noise, gamma; each parameter means what it means for the MONAI transform named in its
    description. Evaluation and prediction never augment.
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
    amp: Literal["off", "bf16", "fp16"] = Field(
        "off", description="mixed precision: autocast the forward pass to bfloat16 (CPU or CUDA) or float16 "
        "(CUDA only, with a grad scaler kept beside the optimizer state); off keeps float32 bit for bit"
    )
    lr_schedule: Literal["constant", "poly", "cosine"] = Field(
        "constant", description="learning rate over the local steps of the whole run: constant, poly "
        "(nnU-Net: lr (1 - t/T)^0.9) or cosine; a pure function of (round, step), so resume replays it"
    )
    lr_warmup: float = Field(
        0.0, ge=0, lt=1, description="fraction of the run's local steps with a linear warm-up from ~0 to lr"
    )
    grad_clip: float | None = Field(
        None, gt=0, description="max global L2 norm of the gradients per step (after AMP unscaling); None: off"
    )
    num_workers: int | Literal["auto"] = Field(
        "auto", description="processes reading training cases streamed from disk (DataLoader workers; 0: the "
        "training process itself; unused for data held in memory); auto: 0 on CPU, min(4, cpu_count - 1) on "
        "CUDA. Batches are the same with any value"
    )

    @field_validator("patch_size")
    @classmethod
    def _patch_positive(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (len(value) not in (2, 3) or min(value) < 1):
            raise ValueError(f"train.patch_size needs 2 or 3 positive sizes, got {value}")
        return value
