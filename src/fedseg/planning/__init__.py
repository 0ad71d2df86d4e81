"""Federated auto-configuration: site fingerprints, nnU-Net's planning rules, ``plans.yaml``.

See docs/planning.md. Sites compute :class:`~fedseg.planning.fingerprint.Fingerprint` s of their
training cases (:mod:`fedseg.planning.cases`), the server merges them and plans
(:mod:`fedseg.planning.planner`); :mod:`fedseg.planning.plans_file` writes and reads the plan.
"""

from __future__ import annotations

from fedseg.planning.federated import PlanResult, client_fingerprint, plan_inprocess, server_plan
from fedseg.planning.fingerprint import Fingerprint, PlanError, case_fingerprint, merge
from fedseg.planning.planner import Plan, PlanOptions, make_plan
from fedseg.planning.plans_file import load_planned_config, write_plans

__all__ = [
    "Fingerprint",
    "Plan",
    "PlanError",
    "PlanOptions",
    "PlanResult",
    "case_fingerprint",
    "client_fingerprint",
    "load_planned_config",
    "make_plan",
    "merge",
    "plan_inprocess",
    "server_plan",
    "write_plans",
]
