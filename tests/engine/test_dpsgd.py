"""Sample-level DP-SGD (``privacy.sample``, :mod:`fedseg.engine.dpsgd`): the per-sample clipping is
exact, DP-SGD without noise and clipping is plain full-batch SGD, the accountant matches Opacus and
dp-accounting, its state survives resume, and what cannot be private is refused before training."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import dp_accounting
import pytest
import torch
import yaml
from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis.rdp import compute_rdp
from torch import nn
from typer.testing import CliRunner

from conftest import tiny_config
from fedseg.algorithms import build_algorithm
from fedseg.cli.main import app
from fedseg.config import ConfigError, LossConfig, RunConfig, SampleDPConfig, TrainConfig, UNetConfig, config_from_dict
from fedseg.data.base import SegmentationSet
from fedseg.engine.dpsgd import (
    STATE_KEY,
    SampleDP,
    check_sample_dp,
    default_delta,
    epsilon,
    private_training,
    privacy_record,
    sample_privacy_summary,
)
from fedseg.engine.rundir import read_metrics
from fedseg.engine.trainer import Trainer
from fedseg.losses import build_loss
from fedseg.models import build_model
from fedseg.runtime.sim import run_inprocess

_CPU = torch.device("cpu")
_DP = {"enabled": True, "noise_multiplier": 1.0, "max_grad_norm": 1.0}


def _model(norm: str = "group") -> nn.Module:
    torch.manual_seed(0)
    return build_model(UNetConfig(channels=[4, 8], strides=[2], num_res_units=0, norm=norm), 2, 1, 2)


def _data(n: int = 6) -> SegmentationSet:
    gen = torch.Generator().manual_seed(0)
    masks = torch.zeros(n, 1, 8, 8, dtype=torch.long)
    masks[:, :, 2:5, 3:6] = 1
    masks[::2, :, 5:7, 1:3] = 1  # different samples, different gradients
    images = masks.float() + 0.5 * torch.randn(n, 1, 8, 8, generator=gen)
    return SegmentationSet(images=images, masks=masks, spacing=torch.ones(n, 2, dtype=torch.float64),
                           ids=[f"c{i}" for i in range(n)])


def _trainer(state: dict[str, Any], dp: dict[str, Any] | None, n: int = 6, epochs: int = 1, **train: Any) -> Trainer:
    cfg = TrainConfig(**{"batch_size": 2, "lr": 1e-2, **train})
    return Trainer(_data(n), build_loss(LossConfig(), 2), cfg, epochs=epochs, device=_CPU, seed=3, state=state,
                   dp=None if dp is None else SampleDPConfig(**dp))


def _flat(grads: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.flatten() for g in grads])


def _steps(state: dict[str, Any]) -> int:
    return sum(int(s) for _, _, s in state[STATE_KEY]["history"])


# ------------------------------------------------------------------------------------------- clipping and noise
def test_each_clipped_per_sample_gradient_is_the_true_gradient_scaled_to_at_most_max_grad_norm() -> None:
    """A zero-noise step on one sample gives ``B * p.grad = g_i min(1, C/|g_i|)`` (g_i: that sample's own
    autograd gradient), so its norm is <= C; a step on the whole batch is the mean of those."""
    model, data, loss_fn, clip = _model(), _data(4), build_loss(LossConfig(), 2), 0.05
    params = [p for p in model.parameters() if p.requires_grad]
    dp = SampleDP(SampleDPConfig(enabled=True, noise_multiplier=0.0, max_grad_norm=clip), num_examples=4,
                  train=TrainConfig(batch_size=4), seed=0, device=_CPU, state={})
    model.train()
    own = []
    for i in range(4):
        loss = loss_fn(model(data.images[i : i + 1]), data.masks[i : i + 1])
        own.append(_flat(list(torch.autograd.grad(loss, params))))
    assert all(float(g.norm()) > 10 * clip for g in own)  # clipping is active for every sample
    with private_training(dp, model, torch.optim.SGD(params, lr=0.0)) as optimizer:
        clipped = []
        for i in range(4):
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(data.images[i : i + 1]), data.masks[i : i + 1]).backward()
            optimizer.step()
            clipped.append(_flat([p.grad for p in params]) * 4)  # DPOptimizer divides by the expected batch size
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(data.images), data.masks).backward()
        optimizer.step()
        whole = _flat([p.grad for p in params])
    for g, c in zip(own, clipped, strict=True):
        assert float(c.norm()) <= clip
        torch.testing.assert_close(c, g * clip / (float(g.norm()) + 1e-6), rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(whole, torch.stack(clipped).sum(0) / 4, rtol=1e-4, atol=1e-7)


def test_noise_has_std_noise_multiplier_times_max_grad_norm_over_the_expected_batch() -> None:
    """An empty draw's step is pure noise: ``N(0, (z C)^2) / B`` on every parameter."""
    model = _model()
    params = [p for p in model.parameters() if p.requires_grad]
    dp = SampleDP(SampleDPConfig(enabled=True, noise_multiplier=2.0, max_grad_norm=0.5), num_examples=8,
                  train=TrainConfig(batch_size=4), seed=0, device=_CPU, state={})
    with private_training(dp, model, torch.optim.SGD(params, lr=0.0)):
        assert dp._session is not None
        dp._session.noise_step()
        noise = _flat([p.grad for p in params])
    assert noise.numel() > 500
    assert abs(float(noise.std()) * 4 / (2.0 * 0.5) - 1) < 0.1 and abs(float(noise.mean())) < 0.05


def test_without_noise_and_clipping_dp_sgd_equals_plain_full_batch_sgd() -> None:
    """batch_size >= n: every Poisson draw (q = 1) is the whole split, as the plain trainer's one batch,
    so with z = 0 and a huge C the DP-SGD hook must reproduce plain SGD with momentum."""
    train = {"batch_size": 8, "optimizer": "sgd", "lr": 0.1, "momentum": 0.9}
    plain_model, dp_model = _model(), _model()
    _trainer({}, None, epochs=4, **train).fit(plain_model)
    state: dict[str, Any] = {}
    _trainer(state, {"enabled": True, "noise_multiplier": 0.0, "max_grad_norm": 1e6}, epochs=4, **train).fit(dp_model)
    assert state[STATE_KEY]["history"] == [[0.0, 1.0, 4]]
    plain, private = plain_model.state_dict(), dp_model.state_dict()
    assert any(not torch.equal(v, _model().state_dict()[k]) for k, v in private.items())  # it trained
    for key, value in plain.items():
        torch.testing.assert_close(private[key], value, rtol=1e-4, atol=1e-6, msg=key)


def test_fit_leaves_the_model_as_it_was_and_releases_no_loss() -> None:
    model = _model()
    keys = list(model.state_dict())
    metrics = _trainer({}, _DP).fit(model)
    assert list(model.state_dict()) == keys  # no "_module." prefix: the model object itself is trained
    assert sum(len(m._forward_hooks) + len(m._backward_hooks) for m in model.modules()) == 0
    assert not any(hasattr(p, a) for p in model.parameters() for a in ("grad_sample", "summed_grad"))
    assert "loss" not in metrics and "task_loss" not in metrics  # computed from the raw data: never sent


# ------------------------------------------------------------------------------------------- Poisson sampling
def test_poisson_batches_vary_in_size_and_every_draw_is_a_step_empty_ones_included() -> None:
    """n = 40, B = 1: q = 1/40, 40 steps per epoch, most draws empty (noise-only steps)."""
    state: dict[str, Any] = {}
    trainer = _trainer(state, _DP, n=40, epochs=2, batch_size=1)
    sizes: list[int] = []
    original = trainer._batches

    def spy(**kw: Any) -> Any:
        for batch in original(**kw):
            sizes.append(batch.image.shape[0])
            yield batch

    trainer._batches = spy  # type: ignore[method-assign]
    metrics = trainer.fit(_model())
    assert state[STATE_KEY]["history"] == [[1.0, 1 / 40, 80]]
    assert metrics["steps"] == len(sizes) < 80 and 0 not in sizes  # empty draws never reach the loss


def test_patches_draw_one_patch_per_drawn_case() -> None:
    state: dict[str, Any] = {}
    trainer = _trainer(state, _DP, n=6, batch_size=2, patch_size=[4, 4], samples_per_volume=3)
    assert trainer._dp is not None and trainer._dp.steps_per_epoch == 9  # ceil(6 * 3 / 2)
    trainer.fit(_model())
    assert state[STATE_KEY]["history"] == [[1.0, 2 / 6, 9]]


def test_the_same_seed_gives_the_same_private_model() -> None:
    a, b = _model(), _model()
    _trainer({}, _DP).fit(a)
    _trainer({}, _DP).fit(b)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def test_secure_rng_draws_from_os_entropy_so_runs_differ() -> None:
    a, b = _model(), _model()
    _trainer({}, {**_DP, "secure_rng": True}).fit(a)
    _trainer({}, {**_DP, "secure_rng": True}).fit(b)
    assert any(not torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


# ------------------------------------------------------------------------------------------- accounting
def _dp_accounting(z: float, q: float, steps: int, delta: float, orders: list[float]) -> float:
    accountant = dp_accounting.rdp.RdpAccountant(orders=orders)
    accountant.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), steps)
    return float(accountant.get_epsilon(delta))


@pytest.mark.parametrize(("z", "q", "steps", "delta"), [(1.0, 0.02, 500, 1e-5), (1.1, 0.1, 60, 1e-5),
                                                        (2.0, 1.0, 5, 1e-5), (1.5, 0.05, 2000, 1e-6)])
def test_epsilon_matches_opacus_step_by_step_and_dp_accounting(z: float, q: float, steps: int, delta: float) -> None:
    ours = epsilon([[z, q, steps]], delta)
    opacus = RDPAccountant()
    for _ in range(steps):
        opacus.step(noise_multiplier=z, sample_rate=q)
    assert ours == pytest.approx(opacus.get_epsilon(delta), rel=1e-12)
    # dp-accounting: the same epsilon (its fractional-order series differs from Opacus' in the 4th digit) ...
    assert ours == pytest.approx(_dp_accounting(z, q, steps, delta, RDPAccountant.DEFAULT_ALPHAS), rel=1e-3)
    # ... and exactly the same RDP -> (epsilon, delta) conversion on Opacus' RDP curve
    orders = RDPAccountant.DEFAULT_ALPHAS
    curve = compute_rdp(q=q, noise_multiplier=z, steps=steps, orders=orders)
    assert ours == pytest.approx(float(compute_epsilon(orders, curve, delta)[0]), rel=1e-12)


def test_where_dp_accounting_drops_fractional_orders_both_agree_on_the_integer_ones() -> None:
    """Large delta (a tiny client's 1/n^1.1) and few noisy steps put the best order below 2, where
    dp-accounting's series stops after 1000 terms and skips the order (a looser epsilon); on the
    integer orders both libraries agree, and the reported epsilon (all orders) is at most that."""
    z, q, steps, delta = 0.8, 0.25, 30, 1e-4
    integers = [float(a) for a in RDPAccountant.DEFAULT_ALPHAS if float(a).is_integer()]
    accountant = RDPAccountant()
    accountant.history = [(z, q, steps)]
    on_integers = accountant.get_epsilon(delta, alphas=integers)
    assert on_integers == pytest.approx(_dp_accounting(z, q, steps, delta, integers), rel=1e-6)
    assert epsilon([[z, q, steps]], delta) <= on_integers


def test_epsilon_edge_cases_and_the_default_delta() -> None:
    assert epsilon([], 1e-5) == 0.0 and epsilon([[1.0, 0.5, 0]], 1e-5) == 0.0
    assert epsilon([[0.0, 0.5, 3]], 1e-5) == math.inf
    assert epsilon([[1.0, 0.1, 10], [1.0, 0.1, 20]], 1e-5) == pytest.approx(epsilon([[1.0, 0.1, 30]], 1e-5))
    assert default_delta(100) == pytest.approx(100 ** -1.1) and default_delta(100) < 1 / 100


def test_rounds_accumulate_in_the_client_state_and_the_record_reports_them() -> None:
    state: dict[str, Any] = {}
    for _ in range(3):  # three rounds: a new trainer each round, one state
        _trainer(state, {**_DP, "delta": 1e-5}, n=6).fit(_model())
    assert state[STATE_KEY] == {"history": [[1.0, 2 / 6, 9]], "delta": 1e-5}
    record = privacy_record(state)
    assert record == {"sample_epsilon": epsilon([[1.0, 1 / 3, 9]], 1e-5), "sample_delta": 1e-5}
    assert privacy_record({}) == {}
    assert sample_privacy_summary([{"kind": "train", "site": "a", **record}, {"kind": "eval", "site": "b"}]) == {
        "a": record}


def test_in_process_run_reports_per_client_epsilon_and_resume_continues_the_accountant(tmp_path: Path) -> None:
    """Clients sampled in some rounds only (fraction 0.5 of 3) are charged for those rounds; a run
    resumed after round 2 of 3 ends with the same weights and the same per-round epsilons."""
    cfg = tiny_config("fedavg", rounds=3, sites=3, model={"norm": "group"}, privacy={"sample": _DP},
                      federation={"fraction": 0.5})
    full = run_inprocess(config_from_dict(cfg), tmp_path / "full", write_report=False)
    records = [r for r in read_metrics(tmp_path / "full" / "metrics.jsonl") if r["kind"] == "train"]
    rounds_of = {s: [r["round"] for r in records if r["site"] == s] for s in ("site0", "site1", "site2")}
    assert sorted(len(v) for v in rounds_of.values()) != [3, 3, 3]  # some client skipped a round
    n = {r["site"]: r["n"] for r in records}
    for r in records:
        k = rounds_of[r["site"]].index(r["round"]) + 1  # rounds this client has trained so far
        q = min(4, n[r["site"]]) / n[r["site"]]
        steps = k * math.ceil(n[r["site"]] / min(4, n[r["site"]]))
        assert r["sample_delta"] == default_delta(n[r["site"]])
        assert r["sample_epsilon"] == pytest.approx(epsilon([[1.0, q, steps]], r["sample_delta"]))
        assert math.isnan(r["loss"])
    summary = json.loads((tmp_path / "full" / "summary.json").read_text())["sample_privacy"]
    last = {r["site"]: r["sample_epsilon"] for r in records}  # records are in round order
    assert {s: v["sample_epsilon"] for s, v in summary.items()} == last

    part = tmp_path / "part"
    run_inprocess(config_from_dict({**cfg, "federation": {**cfg["federation"], "rounds": 2}}), part,
                  write_report=False)
    (part / "config.yaml").unlink()  # the 2-round config differs only in rounds
    resumed = run_inprocess(config_from_dict(cfg), part, resume=True, write_report=False)
    for key, value in full.global_params.items():
        assert torch.equal(value, resumed.global_params[key]), key
    again = [r for r in read_metrics(part / "metrics.jsonl") if r["kind"] == "train"]
    assert [(r["round"], r["site"], r["sample_epsilon"]) for r in again] == [
        (r["round"], r["site"], r["sample_epsilon"]) for r in records]
    assert json.loads((part / "summary.json").read_text())["sample_privacy"] == summary


# ------------------------------------------------------------------------------------------- refusals
def test_batch_norm_is_refused_at_model_norm_before_anything_runs() -> None:
    with pytest.raises(ConfigError, match=r"'model\.norm': privacy\.sample\.enabled .*set model\.norm: group"):
        config_from_dict(tiny_config(privacy={"sample": _DP}))
    assert config_from_dict(tiny_config(privacy={"sample": {**_DP, "enabled": False}})).model.norm == "batch"
    cfg = config_from_dict(tiny_config(model={"norm": "group"}, privacy={"sample": _DP}))
    with pytest.raises(ConfigError, match="BatchNorm cannot support training with differential privacy"):
        check_sample_dp(cfg, build_algorithm({"name": "fedavg"}), _model("batch"))  # a model built otherwise
    check_sample_dp(cfg, build_algorithm({"name": "fedavg"}), _model("instance"))


@pytest.mark.parametrize(("name", "hook"), [("fedprox", "extra_loss"), ("ditto", "local_train"),
                                            ("fedrep", "local_train"), ("fedmix", "client_update"),
                                            ("fedsegnet", "local_train")])
def test_algorithms_whose_local_training_escapes_the_clipping_are_refused(name: str, hook: str) -> None:
    cfg = config_from_dict(tiny_config(name, model={"norm": "group"}, privacy={"sample": _DP}))
    with pytest.raises(ConfigError, match=rf"algorithm '{name}' overrides .*{hook}.*DP-SGD runs with .*fedavg"):
        check_sample_dp(cfg, build_algorithm(cfg.algorithm))


@pytest.mark.parametrize("name", ["fedavg", "fedbn", "fedper", "local", "centralized"])
def test_algorithms_with_the_default_local_training_are_accepted(name: str) -> None:
    cfg: RunConfig = config_from_dict(tiny_config(name, model={"norm": "group"}, privacy={"sample": _DP}))
    check_sample_dp(cfg, build_algorithm(cfg.algorithm), _model())


def test_fedseg_run_refuses_before_loading_data(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    raw = tiny_config("fedprox", model={"norm": "group"}, privacy={"sample": _DP})
    raw["data"] = {"source": "folder", "root": str(tmp_path / "missing")}  # loading it would fail differently
    path.write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "overrides extra_loss" in " ".join(result.output.split()), result.output
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------- flower-sim
@pytest.mark.slow
def test_flower_sim_trains_with_dp_sgd_as_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ClientApps train with DP-SGD in Ray actors and keep the accountant in their state: the same
    weights and per-client epsilons as in-process."""
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr_home"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each simulated ClientApp (flower.sim_cpus_per_client)
    try:
        cfg = tiny_config("fedavg", rounds=2, sites=2, model={"norm": "group"}, privacy={"sample": _DP})
        path = tmp_path / "cfg.yaml"
        path.write_text(yaml.safe_dump(cfg))
        reference = run_inprocess(config_from_dict(cfg), tmp_path / "inproc", write_report=False)
        result = CliRunner().invoke(app, ["run", str(path), "--engine", "flower-sim", "--out", str(tmp_path / "sim")])
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    weights = torch.load(tmp_path / "sim" / "checkpoints" / "last.pt", map_location="cpu",
                         weights_only=False)["global_params"]
    for key, value in reference.global_params.items():
        torch.testing.assert_close(weights[key].double(), value.double(), rtol=0, atol=1e-5, msg=key)

    def eps(run: Path) -> list[tuple[int, str, float]]:
        return [(r["round"], r["site"], r["sample_epsilon"]) for r in read_metrics(run / "metrics.jsonl")
                if r["kind"] == "train"]

    assert eps(tmp_path / "sim") == eps(tmp_path / "inproc") and len(eps(tmp_path / "sim")) == 4
    summary = json.loads((tmp_path / "sim" / "summary.json").read_text())
    assert summary["sample_privacy"] == json.loads((tmp_path / "inproc" / "summary.json").read_text())[
        "sample_privacy"]
