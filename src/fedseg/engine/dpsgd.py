"""Sample-level differential privacy in local training: DP-SGD (Abadi et al., 2016) through Opacus.

With ``privacy.sample.enabled`` every :meth:`~fedseg.engine.trainer.Trainer.fit` of a client
trains with DP-SGD; both engines run it, since local training happens in the shared
:class:`~fedseg.engine.client.ClientRuntime`. For one client with ``n_k`` training cases, batch
size ``B`` (``train.batch_size``), clipping norm ``C`` and noise multiplier ``z``:

* **batches**: Poisson sampling. Every step draws each training case independently with
  probability ``q = min(B, n_k) / n_k``; a local epoch is ``ceil(n_k s / min(B, n_k))`` steps
  (``s = train.samples_per_volume`` with patches, whose draws take one patch per drawn case,
  else 1), as many samples in expectation as the plain trainer's epoch. An empty draw still
  takes its step (noise only): the generator of :meth:`SampleDP.batches` takes it itself.
* **per-sample gradients**: Opacus' ``GradSampleModule`` hooks on the model's own layers. The
  model object is not replaced, so its state-dict keys stay as they are (no ``_module.`` prefix)
  and the hooks are removed when the call ends.
* **clipping and noise**: Opacus' ``DPOptimizer`` around the configured optimizer: each
  per-sample gradient (all trainable tensors, one flat L2 norm) is scaled to norm ``<= C``, the
  sum gets ``N(0, (z C)^2)`` noise and is divided by ``min(B, n_k)`` (the expected batch size);
  the configured optimizer (momentum, Adam, weight decay) then only post-processes it.
* **accounting**: Opacus' RDP accountant of the Poisson-subsampled Gaussian mechanism, composed
  over every step the client took in every round it trained. Its history ``[[z, q, steps], ...]``
  lives in the client state (:data:`STATE_KEY`), so a resumed run continues it exactly and a client
  sampled in only some rounds is charged for those. The reported epsilon is at ``delta``
  (``privacy.sample.delta``, default ``1 / n_k^1.1``).

What leaves the client is the trained model and ``n_k``; the training loss is computed from the
raw data, so under DP-SGD it is not sent (:meth:`SampleDP.released`; the train record shows NaN). The guarantee
covers each client's training split, with ``n_k`` public; validation and test scores are
released as without DP. Algorithms whose client half adds anything to the default local training
(an extra loss, a second network, a custom procedure, extras in the update) are refused
(:func:`check_sample_dp`): their extra terms would escape the clipping. See docs/privacy.md (sample-level DP-SGD).
"""

from __future__ import annotations

import logging
import math
import secrets
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from fedseg.algorithms import ALGORITHMS, Algorithm
from fedseg.config import ConfigError, RunConfig, SampleDPConfig, TrainConfig
from fedseg.engine.seeding import derive_seed
from fedseg.records import Field, Kind
from fedseg.types import ClientState

__all__ = [
    "STATE_KEY",
    "PRIVATE_HOOKS",
    "SampleDP",
    "check_sample_dp",
    "custom_hooks",
    "default_delta",
    "epsilon",
    "private_training",
    "privacy_record",
    "sample_privacy_summary",
]

log = logging.getLogger(__name__)

STATE_KEY = "dpsgd"
"""Client state: ``{"history": [[noise_multiplier, sample_rate, steps], ...], "delta": delta}``."""

PRIVATE_HOOKS = ("local_train", "extra_loss", "aux_outputs", "on_epoch_start", "on_epoch_end", "personalize",
                 "client_update")
"""Client hooks an algorithm may not override under DP-SGD: each can add a loss term, a second model
or data-derived values that the per-sample clipping does not see."""

_HOOK_WARNING = "Full backward hook is firing when gradients are computed with respect to module outputs"
"""Torch warns once per layer that the first layer's input needs no gradient (harmless for Opacus)."""


def default_delta(num_examples: int) -> float:
    """``1 / n^1.1``: below ``1 / n``, as a meaningful delta must be."""
    return 1.0 / math.pow(num_examples, 1.1)


def epsilon(history: Sequence[Sequence[float]], delta: float) -> float:
    """Epsilon at ``delta`` of the composed steps ``[[noise_multiplier, sample_rate, steps], ...]``
    by Opacus' RDP accountant (its default orders); 0 for no steps, ``inf`` with zero noise."""
    from opacus.accountants import RDPAccountant

    steps = [(float(z), float(q), int(s)) for z, q, s in history if int(s) > 0]
    if not steps:
        return 0.0
    if any(z == 0 for z, _, _ in steps):
        return math.inf
    accountant = RDPAccountant()
    accountant.history = steps
    return float(accountant.get_epsilon(delta))


def custom_hooks(algorithm: type[Algorithm]) -> list[str]:
    """The :data:`PRIVATE_HOOKS` ``algorithm`` overrides."""
    return [h for h in PRIVATE_HOOKS if getattr(algorithm, h) is not getattr(Algorithm, h)]


def check_sample_dp(cfg: RunConfig, algorithm: Algorithm, model: nn.Module | None = None) -> None:
    """Refuse what DP-SGD cannot protect, before training (``model.norm: batch`` is refused by the
    config itself).

    Args:
        cfg: the run configuration (nothing is checked unless ``privacy.sample.enabled``).
        algorithm: the run's algorithm; one that overrides a :data:`PRIVATE_HOOKS` hook is refused.
        model: the built model, checked with Opacus' ``ModuleValidator`` (None: not yet built).

    Raises:
        ConfigError: naming the algorithm or the layers, and what to change.
    """
    sample = cfg.privacy.sample
    if not sample.enabled:
        return
    custom = custom_hooks(type(algorithm))
    if custom:
        allowed = [n for n in ALGORITHMS.names() if not custom_hooks(ALGORITHMS.get(n))]
        raise ConfigError(
            f"privacy.sample.enabled (DP-SGD): algorithm {algorithm.name!r} overrides {', '.join(custom)}, so its "
            "local training adds terms, networks or data-derived values the per-sample clipping does not bound; "
            f"DP-SGD runs with {', '.join(allowed)}, or set privacy.sample.enabled: false"
        )
    if model is not None:
        from opacus.validators import ModuleValidator

        errors = ModuleValidator.validate(model, strict=False)
        if errors:
            kinds = sorted({str(e).split(".")[0] for e in errors})
            raise ConfigError(
                f"privacy.sample.enabled (DP-SGD): model {cfg.model.name!r} has {len(errors)} layer(s) Opacus cannot "
                f"compute per-sample gradients for ({'; '.join(kinds)}); use model.norm: group (or instance, none) "
                "and a model without such layers"
            )
    if sample.noise_multiplier == 0:
        log.warning("privacy.sample.noise_multiplier is 0: gradients are clipped but not noised, epsilon is infinite")


class SampleDP:
    """DP-SGD for one client's local training in one round (the :class:`Trainer` builds it).

    Args:
        cfg: the ``privacy.sample`` section (enabled).
        num_examples: ``n_k``, the client's training cases (>= 1).
        train: the ``train`` section (batch size; patches and samples per volume).
        seed: the round's seed for this client; the Poisson draws and the noise use generators
            derived from it, or from OS entropy with ``cfg.secure_rng``.
        device: the training device (the noise generator lives there).
        state: the client's persistent state; the accountant's history is appended to it.
    """

    def __init__(self, cfg: SampleDPConfig, *, num_examples: int, train: TrainConfig, seed: int,
                 device: torch.device, state: ClientState) -> None:
        if num_examples < 1:
            raise ValueError(f"DP-SGD needs at least one training case, got {num_examples}")
        self.cfg = cfg
        self.num_examples = num_examples
        self.expected_batch_size = min(train.batch_size, num_examples)
        self.sample_rate = self.expected_batch_size / num_examples
        per_epoch = num_examples * (train.samples_per_volume if train.patch_size is not None else 1)
        self.steps_per_epoch = math.ceil(per_epoch / self.expected_batch_size)
        self.delta = cfg.delta if cfg.delta is not None else default_delta(num_examples)
        self.state = state
        seeds = (secrets.randbits(63), secrets.randbits(63)) if cfg.secure_rng else (derive_seed(seed, 0),
                                                                                     derive_seed(seed, 1))
        self._sampler = torch.Generator().manual_seed(seeds[0])
        self._noise = torch.Generator(device=device).manual_seed(seeds[1])
        self._session: _Session | None = None

    def batches(self) -> Iterator[torch.Tensor]:
        """One local epoch of Poisson draws: the (CPU, int64) indices of each step's cases.

        Empty draws are not yielded: their noise-only step is taken here, in order, so this
        generator must be consumed inside :func:`private_training`.
        """
        if self._session is None:
            raise RuntimeError("SampleDP.batches() is used inside private_training() only (it takes noise steps)")
        for _ in range(self.steps_per_epoch):
            drawn = torch.rand(self.num_examples, generator=self._sampler) < self.sample_rate
            idx = drawn.nonzero().flatten()
            if len(idx) == 0:
                self._session.noise_step()
                continue
            yield idx

    def released(self, metrics: Mapping[str, float]) -> dict[str, float]:
        """The training metrics that may leave the client: the losses (raw data) are dropped."""
        return {k: v for k, v in metrics.items() if k not in ("loss", "task_loss")}

    def _record(self, steps: int) -> None:
        """Append ``steps`` of this round to the accountant's history in the client state."""
        entry = self.state.setdefault(STATE_KEY, {"history": [], "delta": self.delta})
        entry["delta"] = self.delta
        z, q = float(self.cfg.noise_multiplier), float(self.sample_rate)
        history: list[list[Any]] = entry["history"]
        if history and history[-1][0] == z and history[-1][1] == q:
            history[-1][2] = int(history[-1][2]) + steps
        elif steps:
            history.append([z, q, steps])


class _Session:
    """Opacus attached to one ``fit`` call: per-sample hooks on ``model``, ``DPOptimizer`` around ``optimizer``."""

    def __init__(self, owner: SampleDP, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        from opacus import GradSampleModule
        from opacus.optimizers import DPOptimizer

        self.module = GradSampleModule(model, batch_first=True, loss_reduction="mean", strict=True)
        self.optimizer = DPOptimizer(
            optimizer, noise_multiplier=owner.cfg.noise_multiplier, max_grad_norm=owner.cfg.max_grad_norm,
            expected_batch_size=owner.expected_batch_size, loss_reduction="mean", generator=owner._noise,
            secure_mode=owner.cfg.secure_rng,
        )
        self.steps = 0
        self.optimizer.attach_step_hook(self._count)

    def _count(self, _optimizer: Any) -> None:
        self.steps += 1

    def noise_step(self) -> None:
        """The step of an empty Poisson draw: no gradient, only the noise (it counts as a step)."""
        self.optimizer.zero_grad(set_to_none=True)
        for p in self.optimizer.params:
            p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
        self.optimizer.step()

    def close(self) -> None:
        """Remove the hooks and every attribute Opacus put on the parameters."""
        self.module._close()
        for p in self.optimizer.params:
            if hasattr(p, "summed_grad"):
                del p.summed_grad


@contextmanager
def private_training(dp: SampleDP | None, model: nn.Module,
                     optimizer: torch.optim.Optimizer) -> Iterator[torch.optim.Optimizer]:
    """The optimizer of a ``fit`` call: ``optimizer`` itself without DP-SGD, else Opacus'
    ``DPOptimizer`` around it with per-sample hooks on ``model`` for the duration. The steps taken
    are charged to the client's accountant when the call ends, also when it fails (conservative)."""
    if dp is None:
        yield optimizer
        return
    session = _Session(dp, model, optimizer)
    dp._session = session
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_HOOK_WARNING)
            yield session.optimizer
    finally:
        dp._session = None
        session.close()
        dp._record(session.steps)


def privacy_record(state: ClientState) -> dict[str, float]:
    """``{sample_epsilon, sample_delta}`` of a client's DP-SGD so far (``{}`` without DP-SGD): the
    fields its train records carry."""
    entry = state.get(STATE_KEY)
    if not entry:
        return {}
    delta = float(entry["delta"])
    return {Field.SAMPLE_EPSILON.value: epsilon(entry["history"], delta), Field.SAMPLE_DELTA.value: delta}


def sample_privacy_summary(metrics: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """``{site: {sample_epsilon, sample_delta}}``: each client's privacy spent over the whole run
    (its largest reported epsilon, since each train record carries the total so far); ``{}``
    without DP-SGD."""
    out: dict[str, dict[str, float]] = {}
    for r in metrics:
        if r.get(Field.KIND) != Kind.TRAIN or Field.SAMPLE_EPSILON not in r:
            continue
        site, eps = str(r[Field.SITE]), float(r[Field.SAMPLE_EPSILON])
        if site not in out or eps >= out[site][Field.SAMPLE_EPSILON.value]:
            out[site] = {Field.SAMPLE_EPSILON.value: eps, Field.SAMPLE_DELTA.value: float(r[Field.SAMPLE_DELTA])}
    return dict(sorted(out.items()))
