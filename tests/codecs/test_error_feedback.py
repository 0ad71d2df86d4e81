"""Error feedback through the real :class:`UpdateCodec` (client encode -> wire -> server decode):
what the server decoded plus the final residual equals the sum of the true updates, for every
codec and a few chains, randomised ones included (the chain must run once per tensor)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from fedseg.codecs import CODECS, RESIDUAL_KEY, UpdateCodec, build_chain
from fedseg.codecs.topk import RandK
from fedseg.engine import wire
from fedseg.types import ClientUpdate

CHAINS: list[list[dict[str, Any]]] = [
    *([{"name": name}] for name in sorted(CODECS.names())),  # every codec alone
    [{"name": "randk", "ratio": 0.5}, {"name": "sign"}],  # the benchmark's chains
    [{"name": "topk", "ratio": 0.02}, {"name": "int8"}],
    [{"name": "randk", "ratio": 0.25}, {"name": "int8", "per_channel": True}],
    [{"name": "topk", "ratio": 0.1}, {"name": "sign", "per_channel": True}],
    [{"name": "randk", "ratio": 0.3, "min_numel": 0}, {"name": "fp16"}],
    [{"name": "topk", "ratio": 0.1, "min_numel": 0}, {"name": "int16"}],
]


def _shapes() -> dict[str, tuple[int, ...]]:
    # above and below the codecs' min_numel (1024): sparse/1-bit and dense/8-bit paths both run
    return {"conv.weight": (16, 8, 3, 3), "fc.weight": (40, 50), "conv.bias": (16,)}


@pytest.mark.parametrize("chain", CHAINS, ids=lambda c: "->".join(s["name"] for s in c))
def test_decoded_plus_residual_equals_the_sum_of_true_updates_over_10_rounds(chain: list[dict[str, Any]]) -> None:
    codec = UpdateCodec(build_chain(chain, "codec.up"), error_feedback=True)
    gen = torch.Generator().manual_seed(1)
    reference = {k: torch.randn(s, generator=gen) for k, s in _shapes().items()}
    true_total = {k: torch.zeros(s, dtype=torch.float64) for k, s in _shapes().items()}
    decoded_total = {k: torch.zeros(s, dtype=torch.float64) for k, s in _shapes().items()}
    state: dict[str, Any] = {}
    torch.manual_seed(0)  # randk's seeds come from the global generator
    for _ in range(10):
        delta = {k: 0.1 * torch.randn(s, generator=gen) for k, s in _shapes().items()}
        params = {k: reference[k] + delta[k] for k in reference}
        data = wire.encode(ClientUpdate("site0", codec.encode(params, reference, state), 1))
        received = wire.decode(data)  # the server's side: only these bytes crossed
        assert isinstance(received, ClientUpdate)
        decoded = codec.decode(received.params, reference)
        for k in reference:
            true_total[k] += (params[k] - reference[k]).double()  # the Delta the client actually had
            decoded_total[k] += (decoded[k] - reference[k]).double()
    residual = state[RESIDUAL_KEY]
    for k in reference:
        gap = (decoded_total[k] + residual[k].double() - true_total[k]).abs().max().item()
        assert gap < 1e-5, (k, gap)


def test_the_chain_runs_once_per_tensor(monkeypatch: pytest.MonkeyPatch) -> None:
    """Encoding twice (once for the residual, once for the packet) let randk's residual describe a
    different random choice than the one sent (issue 10)."""
    calls: list[tuple[int, ...]] = []
    encode = RandK.encode

    def spy(self: RandK, x: torch.Tensor) -> dict[str, torch.Tensor]:
        calls.append(tuple(x.shape))
        return encode(self, x)

    monkeypatch.setattr(RandK, "encode", spy)
    codec = UpdateCodec(build_chain([{"name": "randk", "ratio": 0.5}, {"name": "sign"}], "codec.up"))
    reference = {k: torch.zeros(s) for k, s in _shapes().items()}
    codec.encode({k: torch.ones(s) for k, s in _shapes().items()}, reference, {})
    assert sorted(calls) == sorted(_shapes().values())
