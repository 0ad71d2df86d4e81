"""The ``federation`` section: rounds, client sampling, local epochs."""

from __future__ import annotations

from pydantic import Field, field_validator

from fedseg.config.base import StrictModel

__all__ = ["FederationConfig"]


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
