"""The ``aggregation`` section: robust aggregation rules for any algorithm, and update clipping."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from fedseg.config.base import StrictModel

__all__ = ["AggregationConfig"]


class AggregationConfig(StrictModel):
    """How the server combines the clients' shared tensors (``mean``: the algorithm's own weighted
    average; the others replace it, see docs/robustness.md and ``fedseg.algorithms.robust``).

    Which rules use the algorithm's weights (``n_k``...): ``mean`` and ``multi_krum``'s final
    average; ``median``, ``trimmed_mean``, ``krum`` and ``bulyan`` ignore them, as Flower's
    strategies do. ``num_malicious`` is read by the Krum family and Bulyan only.
    """

    rule: Literal["mean", "median", "trimmed_mean", "krum", "multi_krum", "bulyan"] = "mean"
    trim_fraction: float = Field(0.2, ge=0, lt=0.5, description="trimmed_mean: fraction cut at each end (beta)")
    num_malicious: int = Field(0, ge=0, description="krum / multi_krum / bulyan: f, the attackers tolerated")
    num_selected: int | None = Field(None, ge=1, description="multi_krum: m, the updates averaged (default K - f)")
    clip_norm: float | None = Field(None, gt=0, allow_inf_nan=False,
                                    description="clip each update w_k - w to this L2 norm before combining")

    @model_validator(mode="after")
    def _selected_for_multi_krum(self) -> AggregationConfig:
        if self.num_selected is not None and self.rule != "multi_krum":
            raise ValueError(f"aggregation.num_selected applies to rule multi_krum only (rule is {self.rule}); "
                             "remove it or set aggregation.rule: multi_krum")
        return self
