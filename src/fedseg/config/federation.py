"""The ``federation`` section: rounds, client sampling, local epochs, and how a round survives
clients that fail or send unusable updates (quorum, deadline, retries, update screening)."""

from __future__ import annotations

from pydantic import Field, field_validator

from fedseg.config.base import StrictModel

__all__ = ["FederationConfig"]


class FederationConfig(StrictModel):
    rounds: int = Field(10, ge=1)
    fraction: float = Field(1.0, gt=0, le=1, description="fraction of clients sampled per round")
    min_clients: int = Field(
        1, ge=1,
        description="clients sampled per round at least, and the quorum: a round needs this many usable updates "
        "(after failures and rejections; all sampled clients when fewer train)",
    )
    local_epochs: int = Field(1, ge=1)
    train_sites: list[str] | None = Field(
        None, description="sites that train (are sampled for fit); default all. Every site is still evaluated"
    )
    state_spill_mb: float = Field(
        256.0, ge=0, description="client states beyond this total size are kept on disk"
    )
    round_timeout: float | None = Field(
        None, gt=0,
        description="seconds a client may take to answer (train, evaluate, personalize); a later answer is a "
        "failure. None: no deadline. In-process each client's own wall time is measured",
    )
    quorum_retries: int = Field(
        1, ge=0, description="a round short of its quorum asks the clients that failed again this many times, "
        "then the run stops",
    )
    max_norm_ratio: float | None = Field(
        10.0, gt=1,
        description="reject an update whose norm ||w_k - w|| exceeds this times the round's median update norm "
        "(with 3 or more updates); None: no norm screening",
    )

    @field_validator("train_sites")
    @classmethod
    def _train_sites(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and (not value or len(set(value)) != len(value)):
            raise ValueError(f"federation.train_sites must list at least one site, each once; got {value}")
        return value
