"""The ``attack`` section: simulated malicious sites, for robustness benchmarks only."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from fedseg.config.base import StrictModel
from fedseg.config.data import DataConfig
from fedseg.registry import suggest

__all__ = ["AttackConfig", "UPDATE_ATTACKS", "known_site_names", "check_attack_sites"]

UPDATE_ATTACKS = ("scale", "sign_flip", "gaussian")
"""Attacks on the update a site sends (the others act on its training data)."""

_DEFAULT_SCALE = {"scale": 100.0, "sign_flip": 1.0}


class AttackConfig(StrictModel):
    """Sites in ``sites`` send a corrupted update or train on corrupted masks (see docs/robustness.md):

    * ``scale``: ``w + s (w_k - w)`` (``scale`` s, default 100);
    * ``sign_flip``: ``w - s (w_k - w)`` (``scale`` s, default 1);
    * ``gaussian``: ``w_k + N(0, noise_std^2)`` on every floating tensor;
    * ``label_flip``: the site trains on flipped training masks (``label_mode``: ``invert`` maps
      class c to C-1-c, i.e. foreground <-> background with two classes; ``permute`` maps c to
      (c+1) mod C). Its validation and test masks stay true.

    Off when ``kind`` is ``none``; then ``sites`` must be empty.
    """

    kind: Literal["none", "scale", "sign_flip", "gaussian", "label_flip"] = "none"
    sites: list[str] = Field(default_factory=list)
    scale: float | None = Field(None, description="scale / sign_flip: the factor s on the update w_k - w "
                                                   "(default 100 for scale, 1 for sign_flip)")
    noise_std: float = Field(1.0, ge=0, allow_inf_nan=False, description="gaussian: std of the noise added to w_k")
    label_mode: Literal["invert", "permute"] = Field("invert", description="label_flip: how classes are remapped")

    @model_validator(mode="after")
    def _consistent(self) -> AttackConfig:
        if self.kind == "none" and self.sites:
            raise ValueError(f"attack.sites {self.sites} is set but attack.kind is none; set attack.kind "
                             "(scale, sign_flip, gaussian, label_flip) or remove attack.sites")
        if self.kind != "none" and not self.sites:
            raise ValueError(f"attack.kind {self.kind} needs attack.sites: the site name(s) that attack")
        if len(set(self.sites)) != len(self.sites):
            raise ValueError(f"attack.sites lists a site twice: {self.sites}")
        if self.scale is not None:
            if self.kind not in _DEFAULT_SCALE:
                raise ValueError(f"attack.scale applies to kind scale or sign_flip, not {self.kind}")
            if not math.isfinite(self.scale) or self.scale == 0 or (self.kind == "sign_flip" and self.scale < 0):
                raise ValueError(f"attack.scale must be finite and non-zero (> 0 for sign_flip), got {self.scale}")
        return self

    @property
    def factor(self) -> float:
        """The resolved ``scale`` of a scale / sign_flip attack (its default when unset)."""
        return self.scale if self.scale is not None else _DEFAULT_SCALE.get(self.kind, 1.0)


def known_site_names(data: DataConfig) -> list[str] | None:
    """The site names the ``data`` section fixes without reading any file, or None (a folder root
    whose sites are discovered on disk)."""
    if data.source == "synthetic":
        return [f"site{i}" for i in range(data.synthetic.num_sites)]
    if data.partition is not None:
        p = data.partition
        return list(p.site_names) if p.site_names is not None else [f"site{i}" for i in range(p.num_sites)]
    return list(data.sites) if data.sites is not None else None


def check_attack_sites(attack: AttackConfig, sites: list[str] | None) -> None:
    """Refuse attack sites that are not among ``sites`` (None: not known yet, nothing checked).

    Raises:
        ValueError: the unknown names, with the sites and a did-you-mean.
    """
    if sites is None:
        return
    unknown = [s for s in attack.sites if s not in sites]
    if unknown:
        raise ValueError(f"attack.sites names unknown site(s) {', '.join(map(repr, unknown))}; sites: "
                         f"{', '.join(sites)}.{''.join(suggest(n, sites) for n in unknown)}")
