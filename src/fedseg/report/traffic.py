"""Bytes on the wire: training rounds plus every other exchange, sent vs. uncompressed.

Training traffic is read from the ``kind: round`` records (site ``__server__``), every other
exchange (evaluation broadcasts and replies, the personalize payload) from the ``kind: comm``
records, one per exchange. A run's total is the sum over both. Each record may carry
``bytes_up_raw``/``bytes_down_raw``, the length of the same message serialized without any codec
(float32); the compression ratio is raw / sent. Runs written before these fields existed have no
``comm`` lines and no raw sizes: their totals cover training only and their ratios are unknown.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fedseg.records import SERVER, Field, Kind
from fedseg.report.fmt import finite
from fedseg.report.runs import RunRecords

__all__ = ["RunTraffic", "Traffic", "run_traffic"]


@dataclass
class Traffic:
    """Bytes of a set of exchanges; a raw total is None when any exchange lacks its raw size."""

    up: float = 0.0
    down: float = 0.0
    up_raw: float | None = 0.0
    down_raw: float | None = 0.0
    exchanges: int = 0

    def add(self, record: Mapping[str, Any]) -> None:
        self.up += finite(record.get(Field.BYTES_UP)) or 0.0
        self.down += finite(record.get(Field.BYTES_DOWN)) or 0.0
        up_raw, down_raw = finite(record.get(Field.BYTES_UP_RAW)), finite(record.get(Field.BYTES_DOWN_RAW))
        self.up_raw = None if self.up_raw is None or up_raw is None else self.up_raw + up_raw
        self.down_raw = None if self.down_raw is None or down_raw is None else self.down_raw + down_raw
        self.exchanges += 1

    def __iadd__(self, other: Traffic) -> Traffic:
        self.up += other.up
        self.down += other.down
        self.up_raw = None if self.up_raw is None or other.up_raw is None else self.up_raw + other.up_raw
        self.down_raw = None if self.down_raw is None or other.down_raw is None else self.down_raw + other.down_raw
        self.exchanges += other.exchanges
        return self

    @property
    def total(self) -> float:
        return self.up + self.down

    @property
    def total_raw(self) -> float | None:
        return None if self.up_raw is None or self.down_raw is None else self.up_raw + self.down_raw

    def scaled(self, factor: float) -> Traffic:
        """This traffic times ``factor`` (e.g. 1 / rounds for a per-round figure)."""
        return Traffic(
            up=self.up * factor,
            down=self.down * factor,
            up_raw=None if self.up_raw is None else self.up_raw * factor,
            down_raw=None if self.down_raw is None else self.down_raw * factor,
            exchanges=self.exchanges,
        )

    def ratios(self) -> tuple[float | None, float | None, float | None]:
        """Uncompressed / sent, up, down and total (None when unknown or nothing was sent)."""
        return _ratio(self.up_raw, self.up), _ratio(self.down_raw, self.down), _ratio(self.total_raw, self.total)


def _ratio(raw: float | None, sent: float) -> float | None:
    return None if raw is None or sent <= 0 else raw / sent


@dataclass
class RunTraffic:
    """A run's traffic: training rounds, other exchanges by phase, and per round.

    Attributes:
        training: the ``round`` records (training exchange of every round).
        phases: ``{label: Traffic}`` of the ``comm`` records, by phase (and split for evaluation).
        per_round: ``{round: Traffic}`` of training plus the exchanges recorded under that round.
        rounds: the number of training rounds.
    """

    training: Traffic = field(default_factory=Traffic)
    phases: dict[str, Traffic] = field(default_factory=dict)
    per_round: dict[int, Traffic] = field(default_factory=dict)
    rounds: int = 0

    @property
    def total(self) -> Traffic:
        out = Traffic()
        out += self.training
        for traffic in self.phases.values():
            out += traffic
        return out

    @property
    def has_comm(self) -> bool:
        return bool(self.phases)


def _phase_label(record: Mapping[str, Any]) -> str:
    phase = str(record.get(Field.PHASE) or "?")
    split = record.get(Field.SPLIT)
    return f"{phase} ({split})" if split else phase


def run_traffic(run: RunRecords | Iterable[Mapping[str, Any]]) -> RunTraffic:
    """Sum a run's ``round`` and ``comm`` records (server records only)."""
    records = run.records if isinstance(run, RunRecords) else list(run)
    out = RunTraffic()
    for r in records:
        kind = r.get(Field.KIND)
        if kind not in (Kind.ROUND, Kind.COMM) or r.get(Field.SITE, SERVER) != SERVER:
            continue
        rnd = int(finite(r.get(Field.ROUND)) or 0)
        out.per_round.setdefault(rnd, Traffic()).add(r)
        if kind == Kind.ROUND:
            out.training.add(r)
            out.rounds += 1
        else:
            out.phases.setdefault(_phase_label(r), Traffic()).add(r)
    out.per_round = dict(sorted(out.per_round.items()))
    return out
