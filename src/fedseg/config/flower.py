"""The ``flower`` section: the Flower engines and their timeouts (differential privacy: ``privacy.client``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from fedseg.config.base import StrictModel

__all__ = ["FlowerDPConfig", "FlowerConfig"]


class FlowerDPConfig(StrictModel):
    """Replaced by ``privacy.client`` (both engines, uniform aggregation, an accountant): only
    ``enabled: false`` is accepted, so old configs still load; ``true`` is refused with the keys to use.

    The old Flower-only mechanism added noise sized for a uniform average (``z C / m``) to the
    algorithm's ``n_k``-weighted average, so the largest site got a fraction of the stated protection.
    """

    enabled: bool = False
    noise_multiplier: float = Field(1.0, ge=0)
    clipping_norm: float = Field(1.0, gt=0)

    @field_validator("enabled")
    @classmethod
    def _replaced(cls, value: bool) -> bool:
        if value:
            raise ValueError(
                "flower.dp was replaced by privacy.client (client-level DP on both engines: uniform aggregation of "
                "clipped updates, noise z*C/m, epsilon reported by an accountant; docs/privacy.md). Remove flower.dp "
                "and set privacy: {client: {enabled: true, noise_multiplier: Z, clipping_norm: C}}"
            )
        return value


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
    version_policy: Literal["exact", "minor", "off"] = Field(
        "minor", description="refuse sites on other versions than the server: minor (fedseg, flwr identical; torch, "
        "MONAI same major.minor), exact (all identical) or off (docs/deployment.md, Versions)"
    )
    sim_cpus_per_client: float = Field(1.0, gt=0, description="flower-sim: Ray CPUs per ClientApp")
    sim_num_cpus: int | None = Field(None, ge=1, description="flower-sim: CPUs Ray may use (default: all)")
    dp: FlowerDPConfig = Field(default_factory=FlowerDPConfig, description="replaced by privacy.client")
    secure_aggregation: bool = Field(False, description="not available on Flower 1.42: see docs/deployment.md")

    @field_validator("secure_aggregation")
    @classmethod
    def _no_secagg(cls, value: bool) -> bool:
        if value:
            raise ValueError(
                "flower.secure_aggregation: Flower 1.42 runs SecAgg+ only through its legacy API "
                "(SecAggPlusWorkflow + secaggplus_mod on legacy fit messages, plain weighted averaging); "
                "fedseg's Message-API apps cannot use it. Leave it false; see docs/deployment.md"
            )
        return value
