"""Chains of codecs and their application to whole messages (:data:`~fedseg.types.Params`).

A :class:`CodecChain` applies its stages in order to one tensor: stage ``i+1`` encodes every
*floating* part produced by stage ``i`` (``topk -> int8`` quantises top-k's values and leaves its
integer indices alone). A chain holds at most one sparsifier (first) and at most one quantiser
(last).

On a message the chain runs key by key, and the parts of all keys are packed into **one flat
tensor per dtype** (``__codec__.int8``, ``__codec__.int32``, ``__codec__.float32`` ...) plus a
key-presence mask ``__codec__.mask`` over the sorted keys of a *template* both sides know (the
model's state dict on the receiving side). Because every codec's part shapes follow from the
template shapes alone, the receiver cuts the blobs back without per-tensor framing; so the bytes
counted on the wire are values + indices + ranges + a few header entries, not one JSON header
entry per part. Keys that are not in the template (or differ from it in shape or dtype) travel
unchanged under their own names.

* :class:`UpdateCodec` (client -> server) encodes the update ``Delta = w_k - w`` against the
  broadcast the client received, with error feedback: the residual ``e`` (what the codec lost)
  is kept in client state and added to the next round's ``Delta``. The chain runs **once** per
  tensor and the residual is computed by unpacking the packed message itself, so it describes
  exactly what was sent, also for randomised codecs (``randk`` draws its seed per call). Integer
  buffers (``num_batches_tracked``) are packed raw, so they pass exactly.
* :class:`BroadcastCodec` (server -> client) encodes the absolute weights, so it accepts only
  quantisers (top-k of absolute weights would zero most of the model).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from fedseg.codecs.base import Codec, CodecError, TensorSpec, build_codec
from fedseg.config import CodecConfig, ConfigError
from fedseg.types import ClientState, Params

__all__ = [
    "CodecChain",
    "PACK_PREFIX",
    "RESIDUAL_KEY",
    "pack",
    "unpack",
    "UpdateCodec",
    "BroadcastCodec",
    "WireCodecs",
    "build_chain",
    "build_wire_codecs",
    "check_codec_config",
]

PACK_PREFIX = "__codec__"
"""Message keys of packed blobs start with this; no parameter name may."""

RESIDUAL_KEY = "codec_residual"
"""Client-state key of the error-feedback residual (``{param name: float tensor}``)."""

_MASK = f"{PACK_PREFIX}.mask"


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class CodecChain:
    """Codec stages applied in order to one tensor (see the module docstring).

    Args:
        stages: at most one sparsifier, first; at most one quantiser, last. Empty: identity.
    """

    stages: tuple[Codec, ...] = ()

    def __post_init__(self) -> None:
        roles = [s.role for s in self.stages]
        names = [s.name for s in self.stages]
        if roles.count("sparsifier") > 1 or roles.count("quantizer") > 1:
            raise CodecError(f"a codec chain holds at most one sparsifier and one quantiser; got {names}")
        if "sparsifier" in roles and roles[0] != "sparsifier":
            raise CodecError(f"the sparsifier must come first in a codec chain (e.g. [topk, int8]); got {names}")

    @property
    def active(self) -> bool:
        return bool(self.stages)

    @property
    def sparse(self) -> bool:
        return any(s.role == "sparsifier" for s in self.stages)

    def parts(self, spec: TensorSpec) -> dict[str, TensorSpec]:
        """Specs of the final parts of a tensor of ``spec``, in packing order."""
        out: dict[str, TensorSpec] = {}
        self._parts(0, spec, "", out)
        return out

    def _parts(self, level: int, spec: TensorSpec, prefix: str, out: dict[str, TensorSpec]) -> None:
        if level == len(self.stages) or not spec.dtype.is_floating_point:
            out[prefix] = spec
            return
        for name, sub in self.stages[level].parts(spec).items():
            self._parts(level + 1, sub, _join(prefix, name), out)

    def encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Final parts of floating ``x`` (names as in :meth:`parts`)."""
        out: dict[str, torch.Tensor] = {}
        self._encode(0, x, "", out)
        return out

    def _encode(self, level: int, x: torch.Tensor, prefix: str, out: dict[str, torch.Tensor]) -> None:
        if level == len(self.stages) or not x.is_floating_point():
            out[prefix] = x
            return
        for name, sub in self.stages[level].encode(x).items():
            self._encode(level + 1, sub, _join(prefix, name), out)

    def decode(self, parts: Mapping[str, torch.Tensor], spec: TensorSpec) -> torch.Tensor:
        """Rebuild a tensor of ``spec`` from its final parts."""
        return self._decode(0, parts, spec, "")

    def _decode(self, level: int, parts: Mapping[str, torch.Tensor], spec: TensorSpec, prefix: str) -> torch.Tensor:
        if level == len(self.stages) or not spec.dtype.is_floating_point:
            return parts[prefix]
        stage = self.stages[level]
        sub = {name: self._decode(level + 1, parts, s, _join(prefix, name)) for name, s in stage.parts(spec).items()}
        return stage.decode(sub, spec)

    def roundtrip(self, x: torch.Tensor) -> torch.Tensor:
        """``decode(encode(x))``: what the receiver will reconstruct."""
        return self.decode(self.encode(x), TensorSpec.of(x))


def _packable(value: torch.Tensor, spec: TensorSpec) -> bool:
    return tuple(value.shape) == spec.shape and value.dtype == spec.dtype


def pack(chain: CodecChain, values: Params, template: Mapping[str, TensorSpec]) -> Params:
    """Encode ``values`` key by key and pack the parts into one flat tensor per dtype.

    Args:
        chain: applied to floating tensors; integer and bool tensors are packed raw.
        values: the tensors to send. Keys in ``template`` with the template's shape and dtype are
            packed; the others are returned unchanged under their own names.
        template: shapes and dtypes the receiver knows (the same mapping is given to :func:`unpack`).

    Returns:
        ``{"__codec__.<dtype>": 1-D blob, ..., "__codec__.mask": (len(template),) bool}`` plus
        the unpacked keys.

    Raises:
        CodecError: a key of ``values`` starts with ``"__codec__"``.
    """
    keys = sorted(template)
    mask = torch.zeros(len(keys), dtype=torch.bool)
    blobs: dict[torch.dtype, list[torch.Tensor]] = {}
    out: Params = {}
    for i, key in enumerate(keys):
        value = values.get(key)
        if value is None or not _packable(value, template[key]):
            continue
        mask[i] = True
        if not value.is_floating_point():
            blobs.setdefault(value.dtype, []).append(value.detach().reshape(-1).cpu())
            continue
        parts = chain.encode(value)
        for name, spec in chain.parts(template[key]).items():  # the order unpack reads them in
            part = parts[name]
            if TensorSpec.of(part) != spec:
                raise CodecError(f"{key}: codec part {name!r} is {TensorSpec.of(part)}, its spec says {spec}")
            blobs.setdefault(part.dtype, []).append(part.detach().reshape(-1).cpu())
    for key, value in values.items():
        if key.startswith(PACK_PREFIX):
            raise CodecError(f"parameter name {key!r} starts with the reserved prefix {PACK_PREFIX!r}")
        if key not in template or not _packable(value, template[key]):
            out[key] = value
    for dtype, chunks in blobs.items():
        out[f"{PACK_PREFIX}.{_dtype_name(dtype)}"] = torch.cat(chunks)
    if keys:
        out[_MASK] = mask
    return out


def unpack(chain: CodecChain, message: Params, template: Mapping[str, TensorSpec]) -> Params:
    """Inverse of :func:`pack`: decoded values of the packed keys plus the unpacked ones.

    Raises:
        CodecError: the blobs or the mask do not match ``template`` (e.g. the two sides were
            configured with different chains or models).
    """
    out: Params = {k: v for k, v in message.items() if not k.startswith(PACK_PREFIX)}
    if _MASK not in message:
        return out
    keys = sorted(template)
    mask = message[_MASK]
    if mask.numel() != len(keys):
        raise CodecError(f"codec mask has {mask.numel()} entries but the template has {len(keys)} keys")
    offsets: dict[torch.dtype, int] = {}

    def take(spec: TensorSpec) -> torch.Tensor:
        blob = message.get(f"{PACK_PREFIX}.{_dtype_name(spec.dtype)}")
        start = offsets.get(spec.dtype, 0)
        if blob is None or start + spec.numel > blob.numel():
            raise CodecError(f"codec blob {_dtype_name(spec.dtype)} is shorter than the template requires")
        offsets[spec.dtype] = start + spec.numel
        return blob[start : start + spec.numel].reshape(spec.shape)

    for key, present in zip(keys, mask.tolist(), strict=True):
        if not present:
            continue
        spec = template[key]
        if spec.dtype.is_floating_point:
            parts = {name: take(s) for name, s in chain.parts(spec).items()}
            out[key] = chain.decode(parts, spec)
        else:
            out[key] = take(spec).clone()
    used = {f"{PACK_PREFIX}.{_dtype_name(d)}": n for d, n in offsets.items()}
    for name, blob in message.items():
        if name.startswith(PACK_PREFIX) and name != _MASK and used.get(name, 0) != blob.numel():
            raise CodecError(f"codec blob {name} has {blob.numel()} values; the template uses {used.get(name, 0)}")
    return out


def _specs(params: Mapping[str, torch.Tensor]) -> dict[str, TensorSpec]:
    return {k: TensorSpec.of(v) for k, v in params.items()}


@dataclass(frozen=True)
class UpdateCodec:
    """Client -> server: encode ``Delta = w_k - w`` against the received broadcast ``w``.

    Client (:meth:`encode`), per floating key present in the reference with the same shape::

        x       = Delta + e          (e: the residual in client state, 0 at first)
        message = pack(encode(x))    (the chain runs once per tensor)
        x_hat   = unpack(message)    (exactly what the server will rebuild from these bytes)
        e       = x - x_hat          (kept in client state when error_feedback is on)

    Server (:meth:`decode`): ``w_k_hat = w + x_hat``. Summed over rounds, the server receives
    ``sum_t x_hat_t = sum_t Delta_t - e_T``: no coordinate's mass is lost, only delayed.

    Args:
        chain: the stages; empty means the codec is off (messages pass unchanged).
        error_feedback: keep the residual ``e`` (ours: on by default, for any chain).
    """

    chain: CodecChain = field(default_factory=CodecChain)
    error_feedback: bool = True

    @property
    def active(self) -> bool:
        return self.chain.active

    def encode(self, params: Params, reference: Params, state: ClientState) -> Params:
        """The message tensors replacing ``params`` (``params`` itself when the codec is off).

        Args:
            params: the update's parameters (after the algorithm dropped its local keys).
            reference: the broadcast parameters this client decoded (the ``w`` of ``Delta``).
            state: the client's persistent state; ``state["codec_residual"]`` is read and written.
        """
        if not self.active:
            return params
        template = _specs(reference)
        residual: dict[str, torch.Tensor] = state.get(RESIDUAL_KEY, {}) if self.error_feedback else {}
        values: Params = {}
        coded: list[str] = []
        for key, value in params.items():
            spec = template.get(key)
            if spec is None or not _packable(value, spec) or not value.is_floating_point():
                values[key] = value
                continue
            x = value.detach().cpu() - reference[key]
            prev = residual.get(key)
            if prev is not None and prev.shape == x.shape:
                x = x + prev.to(x.dtype)
            values[key] = x
            coded.append(key)
        message = pack(self.chain, values, template)  # the only run of the chain
        if self.error_feedback:
            sent = unpack(self.chain, message, template)  # what the server decodes from this message
            new_residual = {key: (values[key] - sent[key]).detach() for key in coded}
            # residuals of keys not sent this round (e.g. FedRep's head phase) are kept
            state[RESIDUAL_KEY] = {**residual, **new_residual}
        return message

    def decode(self, message: Params, reference: Params) -> Params:
        """Rebuild the update's parameters: ``reference + x_hat`` for delta-coded keys."""
        if not self.active:
            return message
        decoded = unpack(self.chain, message, _specs(reference))
        return {
            key: reference[key] + value if key not in message and value.is_floating_point() else value
            for key, value in decoded.items()
        }


@dataclass(frozen=True)
class BroadcastCodec:
    """Server -> client: quantise the absolute weights (no sparsifier, no error feedback).

    Both sides use the model's initial state dict as the template (same seed, same model).
    """

    chain: CodecChain = field(default_factory=CodecChain)

    def __post_init__(self) -> None:
        names = [s.name for s in self.chain.stages]
        if self.chain.sparse or "sign" in names:
            raise CodecError(
                f"codec.down got {names}: the broadcast carries absolute weights, which a sparsifier would "
                "zero and sign would reduce to +-mean; allowed in codec.down: fp16, int8, int16"
            )

    @property
    def active(self) -> bool:
        return self.chain.active

    def encode(self, params: Params, template: Params) -> Params:
        return pack(self.chain, params, _specs(template)) if self.active else params

    def decode(self, message: Params, template: Params) -> Params:
        return unpack(self.chain, message, _specs(template)) if self.active else message


@dataclass(frozen=True)
class WireCodecs:
    """The configured codecs of both directions, as the engine applies them."""

    up: UpdateCodec = field(default_factory=UpdateCodec)
    down: BroadcastCodec = field(default_factory=BroadcastCodec)


def build_chain(specs: Sequence[Mapping[str, Any]], where: str) -> CodecChain:
    """A chain from config entries such as ``[{name: topk, ratio: 0.01}, {name: int8}]``.

    Raises:
        CodecError: an entry is not a mapping, names an unknown codec or key, has a bad value,
            or the chain is in the wrong order; the message starts with ``where``.
    """
    stages = []
    for i, spec in enumerate(specs):
        if not isinstance(spec, Mapping):
            raise CodecError(f"{where}[{i}]: got {spec!r}; each entry is a mapping such as {{name: int8}}")
        stages.append(build_codec(spec, f"{where}[{i}]"))
    try:
        return CodecChain(tuple(stages))
    except CodecError as exc:
        raise CodecError(f"{where}: {exc}") from None


def build_wire_codecs(cfg: CodecConfig) -> WireCodecs:
    """Build both directions from the ``codec`` section of the run config.

    Raises:
        CodecError: an unknown codec or key, a bad value, or a chain in the wrong order.
    """
    return WireCodecs(
        up=UpdateCodec(build_chain(cfg.up, "codec.up"), error_feedback=cfg.error_feedback),
        down=BroadcastCodec(build_chain(cfg.down, "codec.down")),
    )


def check_codec_config(cfg: CodecConfig) -> WireCodecs:
    """Build both chains of the ``codec`` section as a check before any data is loaded (``fedseg
    run`` and every Flower entry point call it while validating the config).

    Raises:
        fedseg.config.ConfigError: what :func:`build_wire_codecs` refuses, as a config error
            naming ``codec.up[i]`` or ``codec.down``.
    """
    try:
        return build_wire_codecs(cfg)
    except CodecError as exc:
        raise ConfigError(f"invalid config: {exc}") from None
