"""The ``codec`` section: compression chains on the wire (validated by :mod:`fedseg.codecs`)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from fedseg.config.base import StrictModel

__all__ = ["CodecConfig"]


class CodecConfig(StrictModel):
    """Compression of messages on the wire, applied by the engine for every algorithm (fedseg.codecs).

    A chain is a list of ``{name: ..., <hyperparameters>}``: e.g. ``up: [{name: topk, ratio: 0.01},
    {name: int8}]``. Empty lists send float32 as is. Codec names and keys are validated when the
    run is set up (``fedseg.codecs.build_wire_codecs``).
    """

    up: list[dict[str, Any]] = Field(
        default_factory=list, description="client->server chain on the update w_k - w (topk, randk, fp16, int8, int16, sign)"
    )
    down: list[dict[str, Any]] = Field(
        default_factory=list, description="server->client chain on the broadcast weights (fp16, int8, int16)"
    )
    error_feedback: bool = Field(True, description="keep what the up chain lost in client state; add it next round")
