"""Central differential privacy with client-side fixed clipping, through Flower's own mechanisms.

* client: Flower's ``fixedclipping_mod`` clips each update ``w_k - w`` to L2 norm ``C`` (it reads
  ``C`` from the training message; the fedseg ClientApp applies it to ``train`` messages only,
  since the mod rejects evaluation replies);
* server: Flower's ``DifferentialPrivacyClientSideFixedClipping`` strategy wrapper adds Gaussian
  noise ``N(0, (z C / m)^2)`` to the aggregate of the ``m`` sampled clients. fedseg's aggregation
  stays the algorithm's own: the wrapper wraps a strategy that hands it the algorithm's result.

Limits (checked before the run starts): the update must carry exactly the broadcast's tensors
(``fixedclipping_mod`` compares the two key lists), so algorithms with local keys (FedBN, FedPer,
FedRep, local) and update codecs are refused; integer buffers (BatchNorm's
``num_batches_tracked``) stay on the clients because Flower's in-place clipping cannot scale them.
No privacy accountant is attached: Flower's accountant requires its own FedAvg aggregation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping, Strategy
from torch import nn

from fedseg.algorithms import Algorithm
from fedseg.algorithms.base import Aggregate
from fedseg.config import RunConfig
from fedseg.runtime.common import RunError
from fedseg.runtime.flower.records import record_to_tensors, tensors_to_record
from fedseg.types import ClientUpdate, Params, ServerState

__all__ = ["check_dp", "CentralDP"]


def check_dp(cfg: RunConfig, algorithm: Algorithm, model: nn.Module) -> None:
    """Refuse configurations Flower's client-side clipping cannot serve (see the module docstring).

    Raises:
        RunError: naming the key to change.
    """
    local = algorithm.local_keys(model)
    if local:
        raise RunError(
            f"flower.dp.enabled: {algorithm.name} keeps {len(local)} tensors local, so its updates do not carry "
            "the broadcast's tensors, which Flower's fixedclipping_mod requires; use fedavg or fedprox, or "
            "disable flower.dp"
        )
    codec = getattr(cfg, "codec", None)
    if codec is not None and (getattr(codec, "up", None) or getattr(codec, "down", None)):
        raise RunError("flower.dp.enabled cannot be combined with codec.up/codec.down: clipping needs raw tensors")


class _Aggregated(Strategy):
    """A Flower strategy whose training aggregate is the one fedseg's algorithm already computed."""

    def __init__(self) -> None:
        super().__init__()
        self.arrays = ArrayRecord()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        return []

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self.arrays, None

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return []

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return None

    def summary(self) -> None:
        return None


class CentralDP:
    """Wraps an algorithm's ``aggregate`` so the aggregate gets Flower's DP noise.

    Args:
        aggregate: the algorithm's bound ``aggregate``.
        replies: returns the last training replies (Flower validates them before noising).
        noise_multiplier: z.
        clipping_norm: C.
        num_sampled_clients: m, the clients per round.
    """

    def __init__(
        self,
        aggregate: Callable[[int, Sequence[ClientUpdate], Params, ServerState], Aggregate],
        replies: Callable[[], list[Message]],
        *,
        noise_multiplier: float,
        clipping_norm: float,
        num_sampled_clients: int,
    ) -> None:
        self._aggregate = aggregate
        self._replies = replies
        self._inner = _Aggregated()
        self.wrapper = DifferentialPrivacyClientSideFixedClipping(
            self._inner, noise_multiplier, clipping_norm, num_sampled_clients
        )

    def __call__(
        self, rnd: int, updates: Sequence[ClientUpdate], global_params: Params, server_state: ServerState
    ) -> Aggregate:
        agg = self._aggregate(rnd, updates, global_params, server_state)
        new_params = agg.params
        sent = {k for u in updates for k in u.params}
        noisy_keys = [k for k, v in new_params.items() if k in sent and v.is_floating_point()]
        self._inner.arrays = tensors_to_record({k: new_params[k] for k in noisy_keys}, where="aggregate")
        arrays, _ = self.wrapper.aggregate_train(rnd, self._replies())
        if arrays is None:
            raise RunError(f"round {rnd}: Flower's DP wrapper refused the replies (a client answered with an error)")
        noised = record_to_tensors(arrays)
        out: dict[str, Any] = dict(new_params)
        for key, value in noised.items():
            out[key] = value.to(new_params[key].dtype)
        return replace(agg, params=out)
