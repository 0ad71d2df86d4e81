"""The ``privacy`` section: client-level differential privacy (clipped updates, noise on the
aggregate, an accountant) and sample-level DP-SGD for local training (Opacus), on both engines."""

from __future__ import annotations

from pydantic import Field

from fedseg.config.base import StrictModel

__all__ = ["ClientDPConfig", "SampleDPConfig", "PrivacyConfig"]


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
    """Sample-level DP-SGD (Opacus) in each client's local training; per-client epsilon at ``delta``."""

    enabled: bool = False
    noise_multiplier: float = Field(1.0, ge=0, description="noise std in units of max_grad_norm")
    max_grad_norm: float = Field(1.0, gt=0, description="per-sample gradient L2 bound")
    delta: float | None = Field(None, gt=0, lt=1, description="delta of the reported epsilon (default 1/n^1.1)")


class PrivacyConfig(StrictModel):
    client: ClientDPConfig = Field(default_factory=ClientDPConfig)
    sample: SampleDPConfig = Field(default_factory=SampleDPConfig)
