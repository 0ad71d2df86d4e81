"""What every config section shares: the strict pydantic base and the error type."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["ConfigError", "StrictModel"]


class ConfigError(ValueError):
    """A configuration problem; the message names the key, the value and what is allowed."""


class StrictModel(BaseModel):
    """A config section: unknown keys are errors, assignments are validated too, and every float
    must be finite (NaN or inf reach no setting meaningfully; a setting that can be off takes null)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)
