"""Bytes on the wire: the server's ``comm`` records and the run's byte totals.

Every message that crosses the wire is counted as the serialized length of that message
(``len`` of the bytes sent), in both directions, on both engines: training broadcasts and updates
(``kind: train`` and ``kind: round`` lines), evaluation broadcasts and replies and the personalize
exchange (``kind: comm`` lines). ``bytes_*_raw`` is the length of the same message serialized
without any codec, so a report can give compression ratios up, down and in total.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from fedseg.records import SERVER, BytesKey, Field, Kind, Phase

__all__ = ["comm_record", "bytes_totals"]


def comm_record(
    rnd: int,
    phase: Phase,
    *,
    down: int,
    down_raw: int,
    replies: Mapping[str, bytes],
    split: str | None = None,
) -> dict[str, Any]:
    """The ``comm`` line of one non-training exchange with ``len(replies)`` clients.

    Args:
        rnd: the round the exchange belongs to.
        phase: ``eval`` or ``personalize``.
        down: serialized length of the broadcast each client received (the same payload to all).
        down_raw: the same broadcast serialized without the down codec.
        replies: client -> the reply bytes it sent (records carry no codec: raw = sent).
        split: evaluation only: the split evaluated.
    """
    n = len(replies)
    up = sum(len(data) for data in replies.values())
    record: dict[str, Any] = {
        Field.ROUND: rnd,
        Field.SITE: SERVER,
        Field.KIND: Kind.COMM,
        Field.PHASE: phase,
        Field.CLIENTS: n,
        Field.BYTES_UP: up,
        Field.BYTES_DOWN: down * n,
        Field.BYTES_UP_RAW: up,
        Field.BYTES_DOWN_RAW: down_raw * n,
    }
    if split is not None:
        record[Field.SPLIT] = split
    return record


def bytes_totals(records: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Total traffic of a run: sums over its ``round`` and ``comm`` lines (``summary["bytes"]``).

    A line without the ``*_raw`` fields (a run written before they existed) counts its coded bytes
    as raw.
    """
    up = down = up_raw = down_raw = 0
    for r in records:
        if r.get(Field.KIND) not in (Kind.ROUND, Kind.COMM):
            continue
        up += int(r.get(Field.BYTES_UP, 0))
        down += int(r.get(Field.BYTES_DOWN, 0))
        up_raw += int(r.get(Field.BYTES_UP_RAW, r.get(Field.BYTES_UP, 0)))
        down_raw += int(r.get(Field.BYTES_DOWN_RAW, r.get(Field.BYTES_DOWN, 0)))
    return {
        BytesKey.UP: up,
        BytesKey.DOWN: down,
        BytesKey.TOTAL: up + down,
        BytesKey.UP_RAW: up_raw,
        BytesKey.DOWN_RAW: down_raw,
        BytesKey.TOTAL_RAW: up_raw + down_raw,
    }
