"""``summary.json``: a run's final figures, from its test records and its traffic records.

Keys are :class:`~fedseg.records.SummaryKey` members::

    {"algorithm": "fedbn", "rounds": 10, "judged_by": "personal",
     "selection": {"mode": "best_val", "round": 7, "per_client": {"siteA": 6, "siteB": 9}},
     "test":      {"global": {site: {dice, iou, hd95, precision, recall, n}}, "personal": {...}},
     "test_last": {...},
     "mean": {"global": {"dice": site mean, "dice_image": mean weighted by n}, ...},
     "bytes": {"up", "down", "total", "up_raw", "down_raw", "total_raw"},
     "failures": {"siteB": {"failure": 1, "rejected": 0}},
     "sample_privacy": {site: {"sample_epsilon", "sample_delta"}}}   (DP-SGD runs only)

``test`` holds the selected checkpoint's scores (``eval.select``), ``test_last`` the last round's
beside it; ``mean`` is computed on ``test``. ``selection.round`` is the global model's selected
round (None without a global model), ``per_client`` each personalised model's (methods judged by
personal models only). ``failures`` counts, per site with any, its ``failure`` lines (a client that
raised, timed out or disconnected, every attempt) and ``rejected`` lines (updates the server's
screening refused) over the whole run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fedseg.algorithms.base import Algorithm
from fedseg.config import RunConfig
from fedseg.engine.dpsgd import sample_privacy_summary
from fedseg.engine.privacy import privacy_summary
from fedseg.engine.traffic import bytes_totals
from fedseg.records import METRIC_KEYS, Field, Kind, ModelKind, Selection, SelectionKey, SummaryKey

__all__ = ["summarize", "site_means", "failure_counts"]


def summarize(
    records: Sequence[Mapping[str, Any]],
    algorithm: Algorithm,
    cfg: RunConfig,
    best: Mapping[str, Any] | None,
    metrics: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """The summary of a run.

    Args:
        records: the final test evaluation records (``selection`` and ``selected_round`` set).
        algorithm: the run's algorithm (name, ``judged_by``, ``has_global_model``).
        cfg: the run configuration (rounds, ``eval.select``).
        best: ``{"round", "dice"}`` of the best-validation global checkpoint, or None.
        metrics: every line of metrics.jsonl (its ``round`` and ``comm`` lines give the traffic).
    """
    mode = cfg.eval.select
    tables: dict[str, dict[str, dict[str, dict[str, Any]]]] = {mode: {}, Selection.LAST.value: {}}
    per_client: dict[str, int] = {}
    for r in records:
        selection = str(r.get(Field.SELECTION, Selection.LAST.value))
        scores = {k: r[k] for k in METRIC_KEYS if k in r}
        tables.setdefault(selection, {}).setdefault(str(r[Field.MODEL]), {})[str(r[Field.SITE])] = scores
        if selection == mode and r[Field.MODEL] == ModelKind.PERSONAL and Field.SELECTED_ROUND in r:
            per_client[str(r[Field.SITE])] = int(r[Field.SELECTED_ROUND])
    global_round = None
    if algorithm.has_global_model:
        use_best = mode == Selection.BEST_VAL.value and best is not None
        global_round = int(best[Field.ROUND]) if use_best and best is not None else cfg.federation.rounds
    judged = str(algorithm.judged_by)
    summary = {
        SummaryKey.ALGORITHM: algorithm.name,
        SummaryKey.ROUNDS: cfg.federation.rounds,
        SummaryKey.JUDGED_BY: judged,
        SummaryKey.SELECTION: {SelectionKey.MODE.value: mode, SelectionKey.ROUND.value: global_round,
                               SelectionKey.PER_CLIENT.value: per_client if judged == ModelKind.PERSONAL else {}},
        SummaryKey.TEST: tables[mode],
        SummaryKey.TEST_LAST: tables[Selection.LAST.value],
        SummaryKey.MEAN: {kind: site_means(sites) for kind, sites in tables[mode].items()},
        SummaryKey.BYTES: {str(k): v for k, v in bytes_totals(metrics).items()},
        SummaryKey.FAILURES: failure_counts(metrics),
        **({SummaryKey.PRIVACY: spent} if (spent := privacy_summary(metrics)) else {}),
    }
    if cfg.privacy.sample.enabled:  # DP-SGD: each client's epsilon over the run
        summary[SummaryKey.SAMPLE_PRIVACY] = sample_privacy_summary(metrics)
    return {str(k): v for k, v in summary.items()}


def site_means(sites: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """``dice``: the mean over sites; ``dice_image``: the mean over images (each site's Dice
    weighted by its ``n``). Sites without a finite Dice are left out of both."""
    rows = [(float(m[Field.DICE]), float(m.get(Field.N, 0))) for m in sites.values()
            if Field.DICE in m and not math.isnan(float(m[Field.DICE]))]
    weight = sum(n for _, n in rows)
    return {"dice": float(np.mean([d for d, _ in rows])) if rows else float("nan"),
            "dice_image": sum(d * n for d, n in rows) / weight if weight > 0 else float("nan")}


def failure_counts(metrics: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    """``{site: {"failure": n, "rejected": n}}`` over the ``failure`` and ``rejected`` lines (sites
    without any are left out)."""
    counts: dict[str, dict[str, int]] = {}
    for r in metrics:
        kind = r.get(Field.KIND)
        if kind in (Kind.FAILURE, Kind.REJECTED):
            site = counts.setdefault(str(r[Field.SITE]), {Kind.FAILURE.value: 0, Kind.REJECTED.value: 0})
            site[str(kind)] += 1
    return counts
