"""The ``privacy`` section: client-level differential privacy (clipped updates, noise on the
aggregate, an accountant) and sample-level DP-SGD for local training (Opacus), on both engines."""

from __future__ import annotations

from pydantic import Field, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from fedseg.config.base import StrictModel

__all__ = ["ClientDPConfig", "SampleDPConfig", "PrivacyConfig", "check_sample_dp_norm"]


class ClientDPConfig(StrictModel):
    """Client-level DP on every engine: each client clips its update ``w_k - w`` (all shared floating
    tensors together) to L2 norm ``clipping_norm``; the server clips again, averages the ``m``
    updates **uniformly** and adds Gaussian noise ``N(0, (z C / m)^2)`` to every aggregated floating
    tensor; an RDP accountant reports epsilon at ``delta`` every round (docs/privacy.md)."""

    enabled: bool = False
    noise_multiplier: float = Field(
        1.0, ge=0, allow_inf_nan=False,
        description="z: noise std on the sum of clipped updates in units of C (0: clipping only, epsilon = inf)")
    clipping_norm: float = Field(1.0, gt=0, allow_inf_nan=False,
                                 description="C: L2 bound of each client's update (all shared tensors)")
    delta: float | None = Field(
        None, gt=0, lt=1, description="delta of the reported epsilon (default min(1e-5, 1/K^1.1), K training sites)")


class SampleDPConfig(StrictModel):
    """Sample-level DP-SGD (Opacus) in each client's local training; per-client epsilon at ``delta``.

    Every local step draws a Poisson batch (each training case with probability
    ``q = train.batch_size / n_k``), clips each per-sample gradient to L2 norm ``max_grad_norm``,
    adds ``N(0, (noise_multiplier * max_grad_norm)^2)`` to their sum and divides by the expected
    batch size; an RDP accountant composes every step a client took (``fedseg.engine.dpsgd``,
    docs/privacy.md (sample-level DP-SGD)). Needs a model without BatchNorm (``model.norm: group``).
    """

    enabled: bool = False
    noise_multiplier: float = Field(1.0, ge=0, description="noise std in units of max_grad_norm (0: no privacy)")
    max_grad_norm: float = Field(1.0, gt=0, description="per-sample gradient L2 bound")
    delta: float | None = Field(
        None, gt=0, lt=1, description="delta of the reported epsilon (default 1/n_k^1.1, n_k the client's training cases)"
    )
    secure_rng: bool = Field(
        False, description="draw the Poisson batches and the noise from OS entropy instead of the run seed, which "
        "the server knows (a deployment needs this for the guarantee to hold against the server); runs are then "
        "not reproducible"
    )


def check_sample_dp_norm(sample: SampleDPConfig, norm: str) -> None:
    """Refuse DP-SGD with BatchNorm, whose statistics mix the samples of a batch (per-sample
    gradients then do not exist); the error sits at ``model.norm``.

    Raises:
        pydantic.ValidationError: ``sample.enabled`` and ``norm == "batch"``.
    """
    if sample.enabled and norm == "batch":
        detail = InitErrorDetails(
            type=PydanticCustomError(
                "dpsgd_batch_norm",
                "privacy.sample.enabled (DP-SGD) needs per-sample gradients, but BatchNorm normalises each sample "
                "with its batch's statistics; set model.norm: group (or instance, none)",
            ),
            loc=("model", "norm"),
            input=norm,
        )
        raise ValidationError.from_exception_data("RunConfig", [detail])


class PrivacyConfig(StrictModel):
    client: ClientDPConfig = Field(default_factory=ClientDPConfig)
    sample: SampleDPConfig = Field(default_factory=SampleDPConfig)
