"""The run directory: resolved config, command, metrics.jsonl, checkpoints, summary, report.

Layout::

    RUN_DIR/config.yaml        resolved configuration (every default filled in)
    RUN_DIR/command.txt        the exact command that produced the run
    RUN_DIR/run_info.json      algorithm, sites, flags the report needs
    RUN_DIR/metrics.jsonl      one JSON object per line (see below)
    RUN_DIR/checkpoints/last.pt + last.json    atomic, every round
    RUN_DIR/checkpoints/best.pt    eval.select best_val: the round with the best mean val Dice
    RUN_DIR/client_states/     spilled client states (large states only)
    RUN_DIR/summary.json       final test metrics per site, global and personalised
    RUN_DIR/report.md, plots/*.png

``metrics.jsonl`` lines carry ``round``, ``site`` and ``kind``:

* ``kind=train``: one per sampled client per round: ``loss``, ``n`` (training samples),
  ``bytes_up``, ``bytes_down``, ``seconds``;
* ``kind=round``: one per round (``site="__server__"``): ``clients``, ``bytes_up``, ``bytes_down``
  (sums), ``seconds`` (round wall time), ``overhead_seconds`` (serialise + aggregate + broadcast);
* ``kind=comm``: one per evaluation or personalize exchange (``site="__server__"``, ``phase``,
  ``split`` for evaluations): ``clients``, ``bytes_up``, ``bytes_down``. Train, round and comm
  lines also carry ``bytes_up_raw``/``bytes_down_raw``: the same messages without any codec;
* ``kind=eval``: ``split`` (val|test), ``model`` (global|personal|unseen), ``dice``, ``iou``,
  ``hd95``, ``precision``, ``recall``, ``n``; test lines also ``selection`` (best_val|last) and
  ``selected_round`` (the round of the scored model).

Key names are :class:`fedseg.records.Field` members.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["RunDir", "atomic_write_text", "read_metrics"]


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl (a torn last line from a killed run is skipped)."""
    records: list[dict[str, Any]] = []
    if not path.is_file():
        return records
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


class RunDir:
    """Paths and writers of one run directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.config = root / "config.yaml"
        self.command = root / "command.txt"
        self.info = root / "run_info.json"
        self.metrics = root / "metrics.jsonl"
        self.checkpoint = root / "checkpoints" / "last.pt"
        self.checkpoint_meta = root / "checkpoints" / "last.json"
        self.best_checkpoint = root / "checkpoints" / "best.pt"
        self.client_states = root / "client_states"
        self.summary = root / "summary.json"
        self.report = root / "report.md"
        self.plots = root / "plots"

    def create(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def append_metrics(self, records: Iterable[dict[str, Any]]) -> None:
        lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
        with open(self.metrics, "a", encoding="utf-8") as fh:
            fh.write(lines)
            fh.flush()
            os.fsync(fh.fileno())

    def truncate_metrics_after(self, rnd: int, *, keep_personalize: bool = False) -> None:
        """Drop records of rounds after ``rnd`` and the final test records (a resumed run
        re-does them), and the post-federation phase's unless it completed."""
        kept = [
            r
            for r in read_metrics(self.metrics)
            if int(r.get("round", 0)) <= rnd
            and r.get("split") != "test"
            and (keep_personalize or (r.get("kind") != "personalize" and r.get("phase") != "personalize"))
        ]
        atomic_write_text(self.metrics, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))

    def write_json(self, path: Path, obj: Any) -> None:
        atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")
