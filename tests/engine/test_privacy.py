"""Client-level DP (fedseg.engine.privacy): clipping, uniform aggregation, the noise's std, the
accountant against dp_accounting / Flower / Opacus, and the refusals before any data is read."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_config
from fedseg.algorithms import build_algorithm
from fedseg.config import ConfigError, config_from_dict
from fedseg.config.privacy import ClientDPConfig
from fedseg.engine import privacy
from fedseg.engine.privacy import (
    NOISE_KEY_FILE,
    ClientDP,
    check_client_dp,
    client_epsilon,
    clip_update,
    default_delta,
    noise_std,
    update_norm,
)
from fedseg.engine.rundir import read_metrics
from fedseg.records import Field, Kind
from fedseg.runtime import sim
from fedseg.runtime.sim import run_inprocess
from fedseg.types import ClientUpdate, Params


def _params(gen: torch.Generator, scale: float = 1.0) -> Params:
    return {"conv.weight": torch.randn(4, 3, 3, 3, generator=gen) * scale, "conv.bias": torch.randn(4, generator=gen),
            "bn.num_batches_tracked": torch.tensor(7)}


def _dp(z: float = 1.0, c: float = 0.5, *, population: int = 4, sampled: int = 4, key: int = 12345) -> ClientDP:
    return ClientDP(ClientDPConfig(enabled=True, noise_multiplier=z, clipping_norm=c), population=population,
                    sampled=sampled, key=key)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("scale", [0.01, 1.0, 100.0])
def test_clipping_bounds_every_update_and_matches_flower(seed: int, scale: float) -> None:
    from flwr.supercore.differential_privacy import compute_clip_model_update

    gen = torch.Generator().manual_seed(seed)
    reference = _params(gen)
    update = {k: v + (torch.randn(v.shape, generator=gen) * scale if v.is_floating_point() else 3)
              for k, v in reference.items()}
    before = update_norm(update, reference)
    oracle = [update[k].double().numpy().copy() for k in ("conv.weight", "conv.bias")]
    norm = clip_update(update, reference, 0.5)
    assert norm == pytest.approx(before)
    assert update_norm(update, reference) <= 0.5 * (1 + 1e-6)
    if before <= 0.5:
        assert update_norm(update, reference) == pytest.approx(before, rel=1e-6)
    compute_clip_model_update(oracle, [reference[k].double().numpy() for k in ("conv.weight", "conv.bias")], 0.5)
    for key, expected in zip(("conv.weight", "conv.bias"), oracle, strict=True):
        np.testing.assert_allclose(update[key].double().numpy(), expected, rtol=1e-5, atol=1e-6)
    assert int(update["bn.num_batches_tracked"]) == 10  # integers are not clipped (the server ignores them)


def test_server_aggregates_uniformly_whatever_n_k_and_reclips() -> None:
    gen = torch.Generator().manual_seed(0)
    glob = _params(gen)
    deltas = [{k: torch.randn(v.shape, generator=gen) * s for k, v in glob.items() if v.is_floating_point()}
              for s in (0.01, 0.1, 10.0)]  # the last one is far above C: a client that did not clip
    updates = [ClientUpdate(client_id=f"c{i}", params={**{k: glob[k] + d[k] for k in d},
                                                       "bn.num_batches_tracked": torch.tensor(50 + i)},
                            num_examples=n) for i, (d, n) in enumerate(zip(deltas, (1, 10, 1000), strict=True))]
    agg = _dp(z=0.0, c=0.5, population=3, sampled=3).aggregate(1, updates, glob, {"kept": 1})
    for key in ("conv.weight", "conv.bias"):
        expected = glob[key].double().clone()
        for d in deltas:
            norm = math.sqrt(sum(float(t.double().square().sum()) for t in d.values()))
            expected += d[key].double() * min(1.0, 0.5 / norm) / 3
        torch.testing.assert_close(agg.params[key], expected.float(), rtol=0, atol=1e-6)
    assert int(agg.params["bn.num_batches_tracked"]) == 7  # the global integer, never a client's
    assert agg.server_state == {"kept": 1}
    assert [row[Field.WEIGHT] for row in agg.weights.values()] == pytest.approx([1 / 3] * 3)


@pytest.mark.parametrize("m", [1, 4, 7])
def test_noise_std_equals_z_c_over_m_empirically_and_exactly(m: int) -> None:
    from flwr.supercore.differential_privacy import add_gaussian_noise_inplace, compute_stdv

    z, c = 1.3, 0.7
    glob = {"w": torch.zeros(1_000_000), "b": torch.zeros(3)}
    updates = [ClientUpdate(client_id=f"c{i}", params={k: v.clone() for k, v in glob.items()}, num_examples=i + 1)
               for i in range(m)]
    dp = _dp(z, c, population=10, sampled=m)
    noise = dp.aggregate(3, updates, glob, {}).params
    expected = z * c / m
    assert noise_std(z, c, m) == pytest.approx(compute_stdv(z, c, m))  # Flower's formula
    assert float(noise["w"].double().std()) == pytest.approx(expected, rel=0.01)
    assert abs(float(noise["w"].double().mean())) < 5 * expected / 1000
    flower = np.zeros(1_000_000, dtype=np.float32)
    np.random.seed(0)
    add_gaussian_noise_inplace([flower], compute_stdv(z, c, m))
    assert float(noise["w"].double().std()) == pytest.approx(float(flower.std()), rel=0.01)
    gen = dp.generator(3)  # exact: the documented draws, keys in sorted order
    for key in sorted(glob):
        exact = (torch.randn(glob[key].shape, generator=gen, dtype=torch.float64) * expected).float()
        assert torch.equal(noise[key], exact), key


def test_noise_comes_from_the_secret_key_not_the_run_seed() -> None:
    glob = {"w": torch.zeros(64)}
    updates = [ClientUpdate(client_id="c", params={"w": torch.zeros(64)}, num_examples=1)]
    a = _dp(key=1).aggregate(2, updates, glob, {}).params["w"]
    assert torch.equal(a, _dp(key=1).aggregate(2, updates, glob, {}).params["w"])  # a resumed round
    assert not torch.equal(a, _dp(key=2).aggregate(2, updates, glob, {}).params["w"])
    assert not torch.equal(a, _dp(key=1).aggregate(3, updates, glob, {}).params["w"])


def test_noise_key_is_created_secret_and_reused(tmp_path: Path) -> None:
    cfg = config_from_dict(tiny_config(privacy={"client": {"enabled": True}}))
    first = ClientDP.for_run(cfg, tmp_path, population=2, sampled=2)
    path = tmp_path / NOISE_KEY_FILE
    assert path.stat().st_mode & 0o777 == 0o600
    assert ClientDP.for_run(cfg, tmp_path, population=2, sampled=2).key == first.key
    assert first.key != ClientDP.for_run(cfg, tmp_path / "other", population=2, sampled=2).key


def _dp_accounting_epsilon(z: float, m: int, k: int, rounds: int, delta: float) -> float:
    from dp_accounting import dp_event, privacy_accountant
    from dp_accounting.rdp import rdp_privacy_accountant

    acc = rdp_privacy_accountant.RdpAccountant(neighboring_relation=privacy_accountant.NeighboringRelation.REPLACE_ONE)
    acc.compose(dp_event.SelfComposedDpEvent(dp_event.SampledWithoutReplacementDpEvent(
        k, m, dp_event.GaussianDpEvent(z / 2)), rounds))
    return float(acc.get_epsilon(delta))


@pytest.mark.parametrize(("z", "m", "k", "rounds"), [(1.0, 10, 10, 5), (1.5, 8, 16, 20), (4.0, 5, 50, 30)])
def test_epsilon_equals_dp_accounting_and_flowers_rdp_accountant(z: float, m: int, k: int, rounds: int) -> None:
    from flwr.supercore.privacy_accounting import (
        GaussianPrivacyEvent,
        NeighboringRelation,
        PrivacyConfig,
        SamplingMethod,
    )
    from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

    delta = default_delta(k)
    eps = client_epsilon(z, m, k, rounds, delta)
    assert eps == pytest.approx(_dp_accounting_epsilon(z, m, k, rounds, delta), rel=1e-9)  # sampling helps here
    config = PrivacyConfig(target_delta=delta, population_size=k, neighboring_relation=NeighboringRelation.REPLACE_ONE,
                           sampling_method=SamplingMethod.WITHOUT_REPLACEMENT)
    flower = RdpAccountant(config)
    flower.compose(GaussianPrivacyEvent(noise_multiplier=z / 2, sample_size=m, population_size=k), rounds)
    assert eps == pytest.approx(flower.get_privacy_spent().epsilon, rel=1e-9)
    # Flower passes z unchanged (sensitivity C, not the 2C of replacing a client): a smaller epsilon
    optimistic = RdpAccountant(config)
    optimistic.compose(GaussianPrivacyEvent(noise_multiplier=z, sample_size=m, population_size=k), rounds)
    assert optimistic.get_privacy_spent().epsilon < eps
    assert _dp(z, population=k, sampled=m).record(rounds, m)[Field.EPSILON] == pytest.approx(eps)


def test_epsilon_is_the_smaller_of_the_sampled_and_the_unsampled_bound() -> None:
    """At large epsilon the without-replacement RDP bound exceeds the plain Gaussian's; both are valid."""
    sampled, unsampled = _dp_accounting_epsilon(0.7, 16, 32, 20, 1e-5), _dp_accounting_epsilon(0.7, 32, 32, 20, 1e-5)
    assert sampled > unsampled
    assert client_epsilon(0.7, 16, 32, 20, 1e-5) == pytest.approx(unsampled, rel=1e-9)


def test_epsilon_without_sampling_is_in_range_of_opacus_rdp() -> None:
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

    orders = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 256))
    rdp = compute_rdp(q=1.0, noise_multiplier=1.0 / 2, steps=10, orders=orders)
    opacus_eps, _ = get_privacy_spent(orders=orders, rdp=rdp, delta=1e-5)
    assert client_epsilon(1.0, 10, 10, 10, 1e-5) == pytest.approx(opacus_eps, rel=0.05)


def test_epsilon_edge_cases_and_default_delta() -> None:
    assert client_epsilon(0.0, 4, 4, 3, 1e-5) == math.inf  # clipping alone protects nothing
    assert client_epsilon(1.0, 4, 4, 0, 1e-5) == 0.0
    assert client_epsilon(1.0, 4, 4, 10, 1e-5) > client_epsilon(1.0, 4, 4, 5, 1e-5)
    assert client_epsilon(2.0, 4, 4, 5, 1e-5) < client_epsilon(1.0, 4, 4, 5, 1e-5)
    assert default_delta(10) == 1e-5
    assert default_delta(10**6) == pytest.approx(1e-6**1.1)


@pytest.mark.parametrize(("algorithm", "extra", "match"), [
    ("fedmix", {}, "fedmix has its own aggregation"),
    ("fedsegnet", {}, "fedsegnet weights clients by scores"),
    ("local", {}, "local shares nothing"),
    ("centralized", {}, "pools every site's data"),
    ("fedavg", {"codec": {"up": [{"name": "int8"}]}}, "codec"),
    ("fedavg", {"aggregation": {"rule": "median"}}, "aggregation.rule: mean"),
    ("fedavg", {"aggregation": {"clip_norm": 1.0}}, "aggregation.clip_norm"),
    ("fedbn", {"federation": {"train_sites": ["site0"]}}, "unseen-site model"),
])
def test_what_cannot_be_protected_is_refused_naming_the_key(algorithm: str, extra: dict, match: str) -> None:
    cfg = config_from_dict(tiny_config(algorithm, privacy={"client": {"enabled": True}}, **extra))
    with pytest.raises(ConfigError, match=f"privacy.client.enabled.*{match}"):
        check_client_dp(cfg, build_algorithm(cfg.algorithm))


@pytest.mark.parametrize("algorithm", ["fedavg", "fedprox", "fedbn", "fedper", "fedrep", "ditto"])
def test_supported_algorithms_pass_the_check(algorithm: str) -> None:
    cfg = config_from_dict(tiny_config(algorithm, privacy={"client": {"enabled": True}}))
    check_client_dp(cfg, build_algorithm(cfg.algorithm))


def test_fedmix_with_client_dp_is_refused_before_data_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_data(*args: object, **kwargs: object) -> None:
        raise AssertionError("data was loaded before the privacy check")

    monkeypatch.setattr(sim, "load_training_data", no_data)
    cfg = config_from_dict(tiny_config("fedmix", privacy={"client": {"enabled": True}}))
    with pytest.raises(ConfigError, match="privacy.client.enabled: fedmix"):
        run_inprocess(cfg, tmp_path / "run", write_report=False)


def test_flower_dp_is_refused_pointing_to_privacy_client() -> None:
    with pytest.raises(ConfigError, match="flower.dp was replaced by privacy.client"):
        config_from_dict(tiny_config(flower={"dp": {"enabled": True}}))
    config_from_dict(tiny_config(flower={"dp": {"enabled": False}}))  # old configs without DP still load


def _dp_run(tmp_path: Path, name: str, rounds: int, *, resume: bool = False) -> sim.RunResult:
    cfg = tiny_config("fedbn", rounds=3, sites=3,
                      privacy={"client": {"enabled": True, "noise_multiplier": 0.3, "clipping_norm": 0.2}})
    run_dir = tmp_path / name
    if rounds != 3:
        cfg["federation"] = {**cfg["federation"], "rounds": rounds}
    if resume:
        (run_dir / "config.yaml").unlink()  # the shorter run's config differs only in rounds
    return run_inprocess(config_from_dict(cfg), run_dir, resume=resume, write_report=False)


def test_in_process_run_records_privacy_clips_and_resumes_bit_identical(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(privacy, "_new_key", lambda: 99)  # the same secret key for both runs
    full = _dp_run(tmp_path, "full", 3)
    records = read_metrics(tmp_path / "full" / "metrics.jsonl")
    lines = [r for r in records if r[Field.KIND] == Kind.PRIVACY]
    assert [r[Field.ROUND] for r in lines] == [1, 2, 3]
    for r in lines:
        assert r[Field.EPSILON] == pytest.approx(_dp_accounting_epsilon(0.3, 3, 3, r[Field.ROUND], 1e-5))
        assert (r[Field.NOISE_STD], r[Field.SAMPLE_RATE], r[Field.CLIENTS]) == (pytest.approx(0.3 * 0.2 / 3), 1.0, 3)
    train = [r for r in records if r[Field.KIND] == Kind.TRAIN]
    assert len(train) == 9 and all(Field.UPDATE_NORM in r for r in train)
    weights = [r[Field.WEIGHT] for r in records if r[Field.KIND] == Kind.WEIGHTS]
    assert weights == pytest.approx([1 / 3] * 9)  # uniform although the sites hold 8, 6 and 5 images
    summary = json.loads((tmp_path / "full" / "summary.json").read_text())
    assert summary["privacy"][Field.EPSILON] == pytest.approx(lines[-1][Field.EPSILON])
    info = json.loads((tmp_path / "full" / "run_info.json").read_text())["privacy"]["client"]
    assert (info["enabled"], info["population"], info["sampled"], info["delta"]) == (True, 3, 3, 1e-5)
    _dp_run(tmp_path, "part", 2)
    resumed = _dp_run(tmp_path, "part", 3, resume=True)
    for key, value in full.global_params.items():
        assert torch.equal(value, resumed.global_params[key]), key


def test_every_update_that_leaves_a_client_is_clipped_to_c(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fedseg.engine import wire
    from fedseg.types import Broadcast

    sent: list[object] = []
    original = wire.encode

    def spy(message: object) -> bytes:
        sent.append(message)
        return original(message)

    monkeypatch.setattr(wire, "encode", spy)
    cfg = tiny_config("fedprox", rounds=2, sites=3, privacy={"client": {"enabled": True, "clipping_norm": 0.05}})
    run_inprocess(config_from_dict(cfg), tmp_path / "run", write_report=False)
    reference, checked = None, 0
    for message in sent:  # each training broadcast, then the updates answering it
        if isinstance(message, Broadcast) and "phase" not in message.config:
            reference = message.params
        elif isinstance(message, ClientUpdate):
            assert reference is not None
            assert update_norm(message.params, reference) <= 0.05 * (1 + 1e-5)
            checked += 1
    assert checked == 6
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    norms = [r[Field.UPDATE_NORM] for r in records if r[Field.KIND] == Kind.TRAIN]
    assert len(norms) == 6 and min(norms) > 0.05  # every update was above C before clipping
