"""The ``tracking`` section: optional experiment-tracker sinks fed with the metrics.jsonl records."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from fedseg.config.base import StrictModel

__all__ = ["TrackingConfig"]


class TrackingConfig(StrictModel):
    """Where the records of ``metrics.jsonl`` are also sent (:mod:`fedseg.engine.tracking`).

    ``tensorboard: true`` writes TensorBoard event files to ``RUN_DIR/tensorboard`` (or ``log_dir``);
    it needs the ``tensorboard`` package (fedseg's ``[tracking]`` extra). metrics.jsonl stays the
    record of the run: a tracker is a view of it.
    """

    tensorboard: bool = Field(False, description="write TensorBoard event files (needs the [tracking] extra)")
    log_dir: Path | None = Field(None, description="event file folder; default RUN_DIR/tensorboard")
