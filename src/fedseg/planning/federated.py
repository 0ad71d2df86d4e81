"""Federated planning as two halves: what a site sends (client) and what the server makes of it.

The in-process engine (``fedseg plan``) calls :func:`client_fingerprint` once per site, each with
only that site's cases, and :func:`server_plan` on the list of what came back; the Flower round
(:mod:`fedseg.runtime.flower.plan_round`) calls the same two functions on either side of a
message. The message is :func:`fingerprint_to_json`: a site's summed statistics, nothing per case.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedseg.config import RunConfig
from fedseg.data.layout import CaseFiles
from fedseg.planning.cases import site_fingerprint, training_cases
from fedseg.planning.fingerprint import Fingerprint, PlanError, merge
from fedseg.planning.planner import Plan, PlanOptions, make_plan

__all__ = ["PlanResult", "client_fingerprint", "server_plan", "plan_inprocess", "fingerprint_to_json",
           "fingerprint_from_json", "plan_options"]


@dataclass
class PlanResult:
    """The plan, the merged fingerprint it was made from, and the sites that contributed."""

    plan: Plan
    fingerprint: Fingerprint
    sites: list[str]


def _noise_rng(cfg: RunConfig, site: str) -> np.random.Generator | None:
    seed = cfg.plan.noise_seed
    return None if seed is None else np.random.default_rng([seed, zlib.crc32(site.encode())])


def client_fingerprint(cfg: RunConfig, site: str, cases: Sequence[CaseFiles]) -> Fingerprint:
    """A site's fingerprint of its own training cases, noised when ``plan.dp_epsilon`` is set."""
    return site_fingerprint(cfg.data, site, cases, epsilon=cfg.plan.dp_epsilon, rng=_noise_rng(cfg, site))


def plan_options(cfg: RunConfig) -> PlanOptions:
    """What the server plans for, from the config (memory budget, modality, channel names)."""
    names = tuple(cfg.data.channel_names) if cfg.data.channel_names else None
    return PlanOptions(gpu_memory_gb=cfg.plan.gpu_memory_gb, cpu_memory_gb=cfg.plan.cpu_memory_gb,
                       modality=cfg.data.modality, channel_names=names)


def server_plan(cfg: RunConfig, fingerprints: Sequence[Fingerprint], sites: Sequence[str]) -> PlanResult:
    """Merge the sites' fingerprints (a sum) and plan from the result.

    Raises:
        PlanError: no fingerprint, fingerprints that disagree, or one without cases.
    """
    if not fingerprints:
        raise PlanError("no site sent a fingerprint")
    try:
        merged = merge(fingerprints)
        return PlanResult(make_plan(merged, plan_options(cfg)), merged, list(sites))
    except PlanError:
        raise
    except ValueError as exc:
        raise PlanError(str(exc)) from None


def plan_inprocess(cfg: RunConfig) -> PlanResult:
    """``fedseg plan`` on the in-process engine: each site fingerprints its own cases, the server plans."""
    cases = training_cases(cfg.data, cfg.seed)
    sites = list(cases)
    return server_plan(cfg, [client_fingerprint(cfg, s, cases[s]) for s in sites], sites)


def fingerprint_to_json(fp: Fingerprint) -> str:
    """The message a site sends: its fingerprint as compact JSON."""
    return json.dumps(fp.to_dict(), separators=(",", ":"))


def fingerprint_from_json(text: str) -> Fingerprint:
    """Inverse of :func:`fingerprint_to_json`.

    Raises:
        PlanError: not JSON, or not a fingerprint (names the missing key).
    """
    try:
        return Fingerprint.from_dict(json.loads(text))
    except json.JSONDecodeError as exc:
        raise PlanError(f"fingerprint message is not JSON ({exc})") from None
    except ValueError as exc:
        raise PlanError(str(exc)) from None
