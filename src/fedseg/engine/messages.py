"""The server -> client broadcast as bytes, built and read the same way by every path.

The server's rounds and evaluations, the client runtime, and ``fedseg eval``/``fedseg predict``
(which rebuild the broadcast a client would have received from a checkpoint) all go through
these two functions, so the model a client evaluates is exactly the decoded broadcast, ``codec.down``
round trip included.
"""

from __future__ import annotations

from collections.abc import Mapping

from fedseg.algorithms.base import Algorithm
from fedseg.codecs import BroadcastCodec
from fedseg.engine import wire
from fedseg.types import Broadcast, Params, Scalar, ServerState

__all__ = ["encode_broadcast", "decode_broadcast"]


def encode_broadcast(
    algorithm: Algorithm,
    down: BroadcastCodec,
    template: Params,
    rnd: int,
    params: Params,
    server_state: ServerState,
    config: Mapping[str, Scalar] | None = None,
) -> tuple[bytes, int]:
    """``algorithm.broadcast(rnd, params, server_state)`` with ``config`` added to its config, its
    parameters encoded by the down chain against ``template`` (the seeded initial model), as wire
    bytes; and the serialized length of the same broadcast without the down codec
    (``bytes_down_raw``)."""
    broadcast = algorithm.broadcast(rnd, params, server_state)
    broadcast.config.update(config or {})
    raw = wire.encoded_size(broadcast)
    broadcast.params = down.encode(broadcast.params, template)
    return wire.encode(broadcast), raw


def decode_broadcast(payload: bytes, down: BroadcastCodec, template: Params, who: str = "client") -> Broadcast:
    """The broadcast a client reads from ``payload``: wire format, then the down chain against
    ``template``.

    Raises:
        TypeError: the payload is not a Broadcast (``who`` names the receiver).
    """
    broadcast = wire.decode(payload)
    if not isinstance(broadcast, Broadcast):
        raise TypeError(f"{who}: the server payload did not decode to a Broadcast")
    broadcast.params = down.decode(broadcast.params, template)
    return broadcast
