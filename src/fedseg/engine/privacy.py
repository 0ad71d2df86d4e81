"""Client-level differential privacy (``privacy.client``), the same on every engine.

The mechanism (DP-FedAvg with fixed clipping, McMahan et al., ICLR 2018; Andrew et al., 2021):

* client (:func:`clip_update`, called by ``ClientRuntime.fit``): the update ``Delta_k = w_k - w``
  over all shared floating tensors together is scaled to L2 norm at most ``C``:
  ``Delta_k <- Delta_k * min(1, C / ||Delta_k||)``; keys an algorithm keeps local never leave.
* server (:meth:`ClientDP.aggregate`, called by ``FederationServer`` instead of the algorithm's
  ``aggregate``): every update is clipped again (a no-op for an honest client, so the guarantee
  does not rest on the clients' code), the ``m`` updates of the round are averaged **uniformly**
  (never by ``n_k``: a weighted average gives the largest site a sensitivity ``p_max C`` above the
  ``C/m`` the noise is sized for), and Gaussian noise is added to every aggregated floating tensor::

      w' = w + (1/m) sum_k clip_C(w_k - w) + N(0, sigma^2 I),   sigma = z C / m

  with ``z = privacy.client.noise_multiplier`` and ``m`` the updates actually aggregated (fewer
  than sampled when a client failed or was rejected: the sum always carries noise ``z C``).
  Integer tensors (BatchNorm's ``num_batches_tracked``) keep the global value: they cannot be
  noised, so no client's integers reach the released model.
* noise source: a per-run secret key (:data:`NOISE_KEY_FILE`, 256 bits from ``secrets``) seeds
  one fresh generator per round. Noise drawn from the public ``seed`` would let every site (which
  knows the config) subtract it from the broadcast; the key makes a resumed round bit-identical.
* accountant (:func:`client_epsilon`): fedseg samples ``m`` of the ``K`` training clients
  uniformly **without replacement** (a fixed-size sample), and the set of sites is public, so the
  neighbouring relation is *replace one site's data*. ``dp_accounting``'s RDP accountant composes
  one ``SampledWithoutReplacementDpEvent(K, m, GaussianDpEvent(z / 2))`` per round under
  ``REPLACE_ONE``: replacing one client moves the clipped sum by up to ``2C``, so the noise is
  ``z/2`` times that sensitivity (the unsampled Gaussian's epsilon when that is smaller). Epsilon
  is reported at ``delta`` (default ``min(1e-5, 1/K^1.1)``).

What is not covered: the per-client training metrics and evaluation scores the server logs, and
the server itself (central DP trusts the server). See docs/privacy.md.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedseg.algorithms.base import Aggregate, Algorithm, Weighting, weight_rows
from fedseg.algorithms.fedavg import FedAvg
from fedseg.config import ConfigError, RunConfig
from fedseg.config.privacy import ClientDPConfig
from fedseg.io.atomic import atomic_open
from fedseg.records import SERVER, Field, Kind, SummaryKey
from fedseg.types import ClientUpdate, Params, ServerState

__all__ = [
    "NOISE_KEY_FILE",
    "ACCOUNTANT",
    "ClientDP",
    "check_client_dp",
    "clip_update",
    "update_norm",
    "noise_std",
    "default_delta",
    "client_epsilon",
    "privacy_info",
    "privacy_summary",
    "privacy_words",
]

logger = logging.getLogger(__name__)

NOISE_KEY_FILE = "privacy_noise.key"
"""Run-directory file holding the secret noise key (hex). Keep it as secret as the raw updates:
whoever holds it can remove the noise. It serves ``--resume`` only; delete it after the run."""

ACCOUNTANT = ("rdp, replace-one, per round SampledWithoutReplacementDpEvent(K, m, GaussianDpEvent(z/2)) "
              "(or the Gaussian alone when smaller)")
"""How :func:`client_epsilon` accounts (recorded in run_info.json and summary.json)."""


# ---------------------------------------------------------------------------------- checks
def check_client_dp(cfg: RunConfig, algorithm: Algorithm) -> None:
    """Refuse what client-level DP cannot protect, before any data is loaded.

    Raises:
        ConfigError: naming the key to change, when ``privacy.client.enabled`` and the algorithm
            pools data, shares nothing, aggregates in its own way (FedMix's two networks and
            extras), weights clients by data-dependent scores (FedSegNet), sends extras, or
            builds an unseen-site model from the clients' unnoised local layers; or with update
            codecs, a robust rule other than ``mean``, or ``aggregation.clip_norm``.
    """
    if not cfg.privacy.client.enabled:
        return
    name, key = algorithm.name, "privacy.client.enabled"
    kind = type(algorithm)
    reasons = []
    if algorithm.pooled_data:
        reasons.append(f"{name} pools every site's data in one place: there is no federation to protect")
    elif not algorithm.has_global_model:
        reasons.append(f"{name} shares nothing, so there is no aggregate to noise")
    if kind.aggregate is not Algorithm.aggregate or kind.client_update is not Algorithm.client_update:
        reasons.append(f"{name} has its own aggregation or update (extras, a second network), which cannot be "
                       "clipped and averaged uniformly")
    elif kind.aggregation_weights not in (Algorithm.aggregation_weights, FedAvg.aggregation_weights):
        reasons.append(f"{name} weights clients by scores computed from their unnoised data, and DP averages "
                       "uniformly")
    if cfg.federation.train_sites is not None and kind.unseen_params is not Algorithm.unseen_params:
        reasons.append(f"with federation.train_sites, {name}'s unseen-site model averages the clients' local "
                       "layers without noise")
    if reasons:
        raise ConfigError(f"{key}: {'; '.join(reasons)}. Client-level DP supports fedavg, fedprox, fedbn, fedper, "
                          "fedrep and ditto (shared layers clipped and noised, local layers never leave); "
                          "choose one of them or disable privacy.client")
    if cfg.codec.up or cfg.codec.down:
        raise ConfigError(f"{key} cannot be combined with codec.up/codec.down: the clipping norm must bound the "
                          "update the server aggregates, and a lossy codec changes it; remove the codec chains")
    if cfg.aggregation.rule != "mean":
        raise ConfigError(f"{key} needs aggregation.rule: mean (got {cfg.aggregation.rule!r}): the noise is sized "
                          "for the uniform mean of clipped updates; a robust rule has another sensitivity")
    if cfg.aggregation.clip_norm is not None:
        raise ConfigError(f"{key} clips updates already (privacy.client.clipping_norm); remove "
                          "aggregation.clip_norm")


# ---------------------------------------------------------------------------------- clipping
def _deltas(params: Params, reference: Params, where: str) -> dict[str, torch.Tensor]:
    """``params - reference`` in float64 for every floating tensor of ``params``."""
    out: dict[str, torch.Tensor] = {}
    for key, value in params.items():
        if not value.is_floating_point():
            continue
        if key not in reference:
            raise KeyError(f"{where}: the update carries {key!r}, which the broadcast did not; client-level DP "
                           "clips w_k - w only over the broadcast's tensors")
        out[key] = value.detach().to("cpu", torch.float64) - reference[key].detach().to("cpu", torch.float64)
    return out


def update_norm(params: Params, reference: Params) -> float:
    """``||w_k - w||_2`` over every floating tensor of ``params`` together."""
    return _norm(_deltas(params, reference, "update_norm"))


def _norm(deltas: Mapping[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float(torch.dot(d.reshape(-1), d.reshape(-1))) for d in deltas.values()))


def clip_update(params: Params, reference: Params, clipping_norm: float) -> float:
    """Clip the update in place: ``w_k <- w + (w_k - w) min(1, C / ||w_k - w||)`` over all
    floating tensors together (integer tensors are left alone); returns the norm before clipping.

    Args:
        params: the client's shared parameters ``w_k`` (modified in place, dtypes kept).
        reference: the broadcast ``w`` the client started from.
        clipping_norm: ``C``.
    """
    deltas = _deltas(params, reference, "clip_update")
    norm = _norm(deltas)
    if norm > clipping_norm:
        scale = clipping_norm / norm
        for key, delta in deltas.items():
            base = reference[key].detach().to("cpu", torch.float64)
            params[key] = (base + delta * scale).to(params[key].dtype)
    return norm


# ---------------------------------------------------------------------------------- accountant
def noise_std(noise_multiplier: float, clipping_norm: float, clients: int) -> float:
    """``z C / m``: the std of the noise on each entry of the uniform mean of ``m`` clipped updates."""
    return noise_multiplier * clipping_norm / clients if clients else 0.0


def default_delta(population: int) -> float:
    """``min(1e-5, 1/K^1.1)``: ``1/K^1.1`` alone is 0.08 for 10 sites, which protects nothing."""
    return float(min(1e-5, float(population) ** -1.1))


def client_epsilon(noise_multiplier: float, sampled: int, population: int, rounds: int, delta: float) -> float:
    """Epsilon at ``delta`` after ``rounds`` rounds (see the module docstring for the event).

    The smaller of two valid bounds: the sampled-without-replacement event, and the same Gaussian
    without any sampling (``sampled = population``). Subsampling never costs privacy, but the
    without-replacement RDP bound can exceed the plain Gaussian's at large epsilon (seen for
    ``q = 0.5``, ``z = 0.7``, 20 rounds: 160 vs 141).

    Args:
        noise_multiplier: ``z`` (noise std ``z C`` on the sum of clipped updates); 0 gives inf.
        sampled: ``m``, the clients sampled per round.
        population: ``K``, the training clients sampled from.
        rounds: rounds composed.
        delta: the target delta.
    """
    if rounds <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    from dp_accounting.rdp import rdp_privacy_accountant

    def epsilon(m: int) -> float:
        orders, rdp = _round_rdp(noise_multiplier, m, population)
        # RDP composes additively: what RdpAccountant.compose(event, rounds).get_epsilon(delta) computes
        return float(rdp_privacy_accountant.compute_epsilon(orders, np.asarray(rdp) * rounds, delta)[0])

    return epsilon(sampled) if sampled >= population else min(epsilon(sampled), epsilon(population))


@functools.lru_cache(maxsize=64)
def _round_rdp(noise_multiplier: float, sampled: int, population: int) -> tuple[list[float], list[float]]:
    """RDP orders and values of one round, computed once: the sampled-without-replacement event
    takes seconds per evaluation, and a run asks for epsilon every round."""
    from dp_accounting import dp_event, privacy_accountant
    from dp_accounting.rdp import rdp_privacy_accountant

    gaussian = dp_event.GaussianDpEvent(noise_multiplier / 2.0)  # replace-one: the sum moves by up to 2C
    event = dp_event.SampledWithoutReplacementDpEvent(population, sampled, gaussian)
    accountant = rdp_privacy_accountant.RdpAccountant(
        neighboring_relation=privacy_accountant.NeighboringRelation.REPLACE_ONE)
    accountant.compose(event, 1)
    # dp-accounting keeps the orders and RDP values private; tests compare with its public get_epsilon
    return [float(o) for o in accountant._orders], [float(r) for r in accountant._rdp]


# ---------------------------------------------------------------------------------- server side
def _new_key() -> int:
    """256 bits from the operating system's CSPRNG (tests replace this function for equal keys)."""
    return secrets.randbits(256)


def _load_or_create_key(path: Path) -> int:
    """The run's secret noise key: read it (a resumed run), else write a new one (mode 0600)."""
    if path.is_file():
        text = path.read_text(encoding="ascii").strip()
        try:
            return int(text, 16)
        except ValueError as exc:
            raise ConfigError(f"{path}: not a noise key (64 hex digits); delete it to start a new run") from exc
    path.parent.mkdir(parents=True, exist_ok=True)
    key = _new_key()
    with atomic_open(path) as fh:  # a killed run leaves no key or the whole key, never half of one
        os.chmod(fh.fileno(), 0o600)  # before any byte is written: never readable by others
        fh.write(f"{key:064x}\n".encode("ascii"))
    return key


class ClientDP:
    """The server half of client-level DP: uniform mean of clipped updates plus Gaussian noise,
    and the ``privacy`` record of each round.

    Args:
        settings: the ``privacy.client`` section.
        population: ``K``, the training clients.
        sampled: ``m``, the clients sampled per round (``sample_clients``).
        key: the secret noise key (:meth:`for_run` reads or creates it).
    """

    def __init__(self, settings: ClientDPConfig, *, population: int, sampled: int, key: int) -> None:
        self.settings = settings
        self.population = population
        self.sampled = sampled
        self.key = key
        self.delta = settings.delta if settings.delta is not None else default_delta(population)

    @classmethod
    def for_run(cls, cfg: RunConfig, run_root: Path, *, population: int, sampled: int) -> ClientDP:
        """The run's mechanism, its key in ``run_root / NOISE_KEY_FILE``."""
        return cls(cfg.privacy.client, population=population, sampled=sampled,
                   key=_load_or_create_key(run_root / NOISE_KEY_FILE))

    def generator(self, rnd: int) -> torch.Generator:
        """The noise generator of round ``rnd``: seeded from (secret key, round) only."""
        words = [(self.key >> (32 * i)) & 0xFFFFFFFF for i in range(8)]
        seed = int(np.random.SeedSequence([*words, rnd]).generate_state(2, dtype=np.uint64)[0] >> 1)
        gen = torch.Generator()
        gen.manual_seed(seed)
        return gen

    def aggregate(self, rnd: int, updates: Sequence[ClientUpdate], global_params: Params,
                  server_state: ServerState) -> Aggregate:
        """``w + (1/m) sum_k clip_C(w_k - w) + N(0, (z C/m)^2)`` on every floating tensor the
        updates carry; other tensors keep their global value; the server state passes through."""
        shared = [u for u in sorted(updates, key=lambda u: u.client_id) if u.params]
        if not shared:
            return Aggregate(global_params, server_state)
        clip = self.settings.clipping_norm
        reference = {k: v.detach().to("cpu", torch.float64) for k, v in global_params.items() if v.is_floating_point()}
        total: dict[str, torch.Tensor] = {}
        for update in shared:
            deltas = _deltas(update.params, reference, f"client {update.client_id}")
            norm = _norm(deltas)
            scale = min(1.0, clip / norm) if norm > 0 else 1.0
            if norm > clip * (1 + 1e-6):
                logger.warning("round %d: %s sent an update of norm %.4g > clipping norm %.4g; clipped by the server",
                               rnd, update.client_id, norm, clip)
            for key, delta in deltas.items():
                if key in total:
                    total[key].add_(delta, alpha=scale)
                else:
                    total[key] = delta.mul_(scale)
        m = len(shared)
        std = noise_std(self.settings.noise_multiplier, clip, m)
        gen = self.generator(rnd)
        new: Params = {}
        for key in sorted(total):
            noise = torch.randn(total[key].shape, generator=gen, dtype=torch.float64) * std
            new[key] = (reference[key] + total[key] / m + noise).to(global_params[key].dtype)
        weights = weight_rows(shared, Weighting([1.0] * m))
        return Aggregate({**global_params, **new}, server_state, weights=weights)

    def epsilon(self, rounds: int) -> float:
        """Epsilon at :attr:`delta` after ``rounds`` rounds."""
        return client_epsilon(self.settings.noise_multiplier, self.sampled, self.population, rounds, self.delta)

    def record(self, rnd: int, aggregated: int) -> dict[str, Any]:
        """The ``kind: privacy`` line of round ``rnd`` (privacy spent over rounds 1..rnd)."""
        s = self.settings
        return {
            Field.ROUND: rnd, Field.SITE: SERVER, Field.KIND: Kind.PRIVACY,
            Field.EPSILON: self.epsilon(rnd), Field.DELTA: self.delta, Field.NOISE_MULTIPLIER: s.noise_multiplier,
            Field.CLIPPING_NORM: s.clipping_norm, Field.SAMPLE_RATE: self.sampled / self.population,
            Field.ROUNDS: rnd, Field.CLIENTS: aggregated, Field.NOISE_STD: noise_std(s.noise_multiplier,
                                                                                   s.clipping_norm, aggregated),
        }


# ---------------------------------------------------------------------------------- run records
def privacy_info(cfg: RunConfig, population: int, sampled: int) -> dict[str, Any]:
    """``run_info.json``'s ``privacy`` entry: both sections as configured, and for client-level
    DP the resolved delta, ``K``, ``m``, ``q`` and the accountant."""
    info: dict[str, Any] = cfg.privacy.model_dump(mode="json")
    client = cfg.privacy.client
    if client.enabled:
        full = noise_std(client.noise_multiplier, client.clipping_norm, sampled)
        info["client"].update({
            "delta": client.delta if client.delta is not None else default_delta(population),
            "population": population, "sampled": sampled, Field.SAMPLE_RATE.value: sampled / population,
            "noise_std": f"noise_multiplier * clipping_norm / m, m = updates aggregated ({full:.4g} for all {sampled})",
            "aggregation": "uniform mean of clipped updates", "accountant": ACCOUNTANT,
        })
    return info


_SUMMARY_FIELDS = (Field.EPSILON, Field.DELTA, Field.NOISE_MULTIPLIER, Field.CLIPPING_NORM, Field.SAMPLE_RATE,
                   Field.ROUNDS)


def privacy_summary(metrics: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """``summary.json``'s ``privacy``: the last ``kind: privacy`` line's figures (None without DP)."""
    lines = [r for r in metrics if r.get(Field.KIND) == Kind.PRIVACY]
    if not lines:
        return None
    last = max(lines, key=lambda r: int(r[Field.ROUND]))
    return {**{f.value: last[f] for f in _SUMMARY_FIELDS if f in last}, "accountant": ACCOUNTANT}


def privacy_words(summary: Mapping[str, Any] | None, metrics: Sequence[Mapping[str, Any]]) -> str | None:
    """One line for the report: epsilon at delta and the settings (None without client-level DP)."""
    spent = (summary or {}).get(SummaryKey.PRIVACY) or privacy_summary(metrics)
    if not spent:
        return None
    eps = float(spent[Field.EPSILON])
    return (f"client-level DP: epsilon = {eps:.3g} at delta = {float(spent[Field.DELTA]):.3g} after "
            f"{spent[Field.ROUNDS]} rounds (noise multiplier {spent[Field.NOISE_MULTIPLIER]}, clipping norm "
            f"{spent[Field.CLIPPING_NORM]}, sample rate {float(spent[Field.SAMPLE_RATE]):.3g}; {ACCOUNTANT})")
