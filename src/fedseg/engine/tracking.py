"""Experiment-tracker sinks fed with the very records appended to ``metrics.jsonl``.

:meth:`fedseg.engine.rundir.RunDir.append_metrics` hands every batch of records it writes to the
sinks attached to the run directory, so a tracker shows exactly what ``metrics.jsonl`` holds and
never a second computation. ``tracking.tensorboard: true`` attaches :class:`TensorBoardSink`
(event files under ``RUN_DIR/tensorboard``); ``tensorboard`` is imported only then, and a missing
package fails the run before its first round, naming the ``[tracking]`` extra.

Scalars (step = the record's ``round``):

* ``eval/<split>/<model>/<metric>/<site>`` for every eval record, and ``.../<metric>/mean``, the
  mean over the sites of one evaluation (one append): ``eval/val/global/dice/mean`` is the
  per-round validation Dice the run selects its checkpoint by;
* ``train/loss/<site>``, ``train/seconds/<site>``;
* ``round/<key>`` (seconds, bytes_up, bytes_down...) from the server's round records;
* ``privacy/<key>`` from privacy records.
"""

from __future__ import annotations

import importlib.util
import logging
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

from fedseg.config import ConfigError, RunConfig
from fedseg.records import Field, Kind

__all__ = ["MetricsSink", "TensorBoardSink", "TrackingError", "EVAL_METRICS", "scalars", "open_sinks", "close_sinks"]

logger = logging.getLogger(__name__)

EVAL_METRICS = ("dice", "iou", "hd95", "precision", "recall")
"""Eval-record keys sent to trackers."""

_ROUND_KEYS = ("seconds", "overhead_seconds", "bytes_up", "bytes_down", "clients")


class TrackingError(ConfigError):
    """A configured tracker cannot start (its package is missing)."""


class MetricsSink(Protocol):
    """Receives each batch of records appended to ``metrics.jsonl``."""

    def write(self, records: Sequence[dict[str, Any]]) -> None: ...

    def close(self) -> None: ...


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(float(value)) else None


def scalars(records: Iterable[dict[str, Any]]) -> list[tuple[str, float, int]]:
    """``(tag, value, step)`` of a batch of metrics records (see the module docstring); NaN and
    non-numeric values are skipped."""
    out: list[tuple[str, float, int]] = []
    means: dict[tuple[str, int], list[float]] = defaultdict(list)
    for r in records:
        kind, step, site = r.get(Field.KIND.value), int(r.get(Field.ROUND.value, 0)), str(r.get(Field.SITE.value))
        if kind == Kind.EVAL:
            prefix = f"eval/{r.get(Field.SPLIT.value, '?')}/{r.get(Field.MODEL.value, 'global')}"
            for key in EVAL_METRICS:
                value = _number(r.get(key))
                if value is not None:
                    out.append((f"{prefix}/{key}/{site}", value, step))
                    means[(f"{prefix}/{key}/mean", step)].append(value)
        elif kind == Kind.TRAIN:
            for key in ("loss", "seconds"):
                value = _number(r.get(key))
                if value is not None:
                    out.append((f"train/{key}/{site}", value, step))
        elif kind in (Kind.ROUND, Kind.PRIVACY):
            keys = _ROUND_KEYS if kind == Kind.ROUND else [k for k in r if k not in (Field.KIND, Field.ROUND,
                                                                                     Field.SITE)]
            for key in keys:
                value = _number(r.get(key))
                if value is not None:
                    out.append((f"{kind}/{key}", value, step))
    out.extend((tag, sum(v) / len(v), step) for (tag, step), v in means.items())
    return out


class TensorBoardSink:
    """TensorBoard event files in ``log_dir`` (:class:`torch.utils.tensorboard.SummaryWriter`),
    flushed after every batch so a crashed run keeps what metrics.jsonl keeps."""

    def __init__(self, log_dir: Path) -> None:
        try:
            if importlib.util.find_spec("tensorboard") is None:  # torch's SummaryWriter needs the package
                raise ImportError("tensorboard")
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise TrackingError("tracking.tensorboard: true needs the tensorboard package: it comes with fedseg's "
                                "[tracking] extra (pip install 'fedseg[tracking]'), or set tracking.tensorboard: "
                                "false") from None
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir = log_dir
        self._writer = SummaryWriter(log_dir=str(log_dir))

    def write(self, records: Sequence[dict[str, Any]]) -> None:
        for tag, value, step in scalars(records):
            self._writer.add_scalar(tag, value, step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def open_sinks(cfg: RunConfig, run_root: Path) -> list[MetricsSink]:
    """The sinks ``cfg.tracking`` asks for (none by default).

    Raises:
        TrackingError: a tracker's package is missing (the message names the extra).
    """
    sinks: list[MetricsSink] = []
    if cfg.tracking.tensorboard:
        sinks.append(TensorBoardSink(cfg.tracking.log_dir or run_root / "tensorboard"))
        logger.info("tensorboard event files: %s", sinks[-1])
    return sinks


def close_sinks(run: Any) -> None:
    """Close and detach the sinks of a :class:`~fedseg.engine.rundir.RunDir` (the run finished)."""
    for sink in run.sinks:
        sink.close()
    run.sinks.clear()
