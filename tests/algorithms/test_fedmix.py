"""FedMix: the faithfulness checks of methods.md 1(h), the label-leak fix and mixed-supervision runs."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from conftest import tiny_config
from fedseg.algorithms import build_algorithm
from fedseg.algorithms.base import Batch, ClientContext
from fedseg.algorithms.fedmix import (
    FedMix,
    FedMixKey,
    cross_targets,
    fedmix_weights,
    hard_dice,
    refine,
    second_init,
    select,
    to_label_map,
)
from fedseg.config import ConfigError, config_from_dict
from fedseg.data.base import MissingMaskError
from fedseg.data.supervision import WeakKey
from fedseg.engine import trainer as trainer_module
from fedseg.engine.rundir import read_metrics
from fedseg.runtime.sim import run_inprocess
from fedseg.types import Broadcast, ClientUpdate


def _run(tmp_path: Path, name: str, cfg: dict[str, Any]) -> Any:
    return run_inprocess(config_from_dict(cfg), tmp_path / name, write_report=False)


def _mixed(rounds: int = 2, **algorithm: Any) -> dict[str, Any]:
    cfg = tiny_config({"name": "fedmix", **algorithm}, sites=3, rounds=rounds,
                      data={"supervision": {"site1": "box", "site2": "image"}},
                      train={"optimizer_state": "persist"})
    cfg["data"]["synthetic"]["samples_per_site"] = [8, 6, 6]
    return cfg


# ---------------------------------------------------------------------------------------------- check 1
def test_all_pixel_sites_with_lam_zero_reduce_to_fedavg(tmp_path: Path) -> None:
    avg = _run(tmp_path, "avg", tiny_config("fedavg", rounds=2, train={"optimizer_state": "persist"}))
    mix = _run(tmp_path, "mix", tiny_config({"name": "fedmix", "lam": 0.0, "loss": "task"}, rounds=2,
                                            train={"optimizer_state": "persist"}))
    assert avg.global_params.keys() == mix.global_params.keys()
    for key, value in avg.global_params.items():
        torch.testing.assert_close(mix.global_params[key], value, rtol=0, atol=1e-6, msg=key)
    weights = [r for r in read_metrics(tmp_path / "mix" / "metrics.jsonl") if r["kind"] == "weights"]
    assert weights and all(r["weight"] == pytest.approx(r["data_share"]) for r in weights)  # w_k = n_k / N


# ---------------------------------------------------------------------------------------------- checks 2, 6
def test_weights_sum_to_one_with_data_and_loss_terms() -> None:
    w, factors = fedmix_weights([10, 30, 0], [0.5, 0.2, 1.0], lam=10.0, beta=1.5)
    powered = [0.5**1.5, 0.2**1.5, 1.0]
    s = [p / sum(powered) for p in powered]
    raw = [0.25 + 10 * s[0], 0.75 + 10 * s[1], 10 * s[2]]
    assert w == pytest.approx([r / sum(raw) for r in raw]) and sum(w) == pytest.approx(1.0)
    assert [f["data_share"] for f in factors] == pytest.approx([0.25, 0.75, 0.0])
    assert fedmix_weights([1, 2, 3], [0.4, 0.4, 0.4], lam=1e12, beta=3)[0] == pytest.approx([1 / 3] * 3)  # lam -> inf
    assert fedmix_weights([0, 0], [0.0, 0.0], lam=10, beta=1.5)[0] == [0.5, 0.5]  # nothing to weigh by


def test_one_weight_vector_for_both_nets() -> None:
    alg = FedMix(lam=10.0, beta=1.5)
    nets = {"a": (1.0, 10.0, 4, 0.5), "b": (2.0, 20.0, 12, 0.1), "c": (3.0, 30.0, 0, 1.0)}
    updates = [ClientUpdate(client_id=c, params={"w": torch.tensor([g1])}, num_examples=n,
                            extras={"net2.w": torch.tensor([g2])}, metrics={FedMixKey.LOSS.value: loss})
               for c, (g1, g2, n, loss) in reversed(nets.items())]
    state = alg.init_server_state({"w": torch.tensor([0.0])})
    agg = alg.aggregate(1, updates, {"w": torch.tensor([0.0])}, state)
    g1, state = agg.params, agg.server_state
    w, factors = fedmix_weights([4, 12, 0], [0.5, 0.1, 1.0], 10.0, 1.5)
    logged = agg.weights
    assert [logged[c]["weight"] for c in "abc"] == pytest.approx(w) and sum(w) == pytest.approx(1.0)
    assert [logged[c]["n"] for c in "abc"] == [4.0, 12.0, 0.0]
    assert [logged[c]["loss_share"] for c in "abc"] == pytest.approx([f["loss_share"] for f in factors])
    assert set(state) == {FedMixKey.NET2_STATE.value}  # nothing else stashed in server state
    assert g1["w"].item() == pytest.approx(sum(wk * x for wk, x in zip(w, [1.0, 2.0, 3.0])))
    g2 = state[FedMixKey.NET2_STATE.value]["w"].item()
    assert g2 == pytest.approx(10 * g1["w"].item())  # G2 = the same combination of the net-2 copies


def test_second_net_is_another_draw_of_the_same_init() -> None:
    params = {"conv.weight": torch.randn(4, 3, 3), "bn.weight": torch.ones(4),
              "bn.num_batches_tracked": torch.tensor(0)}
    g2 = second_init(params, seed=1)
    assert not torch.equal(g2["conv.weight"], params["conv.weight"])
    assert torch.equal(g2["conv.weight"].flatten().sort().values, params["conv.weight"].flatten().sort().values)
    assert torch.equal(g2["bn.weight"], params["bn.weight"]) and torch.equal(g2["bn.num_batches_tracked"],
                                                                            params["bn.num_batches_tracked"])
    bc = FedMix().broadcast(1, params, FedMix().init_server_state(params))
    assert set(bc.extras) == {f"net2.{k}" for k in params}


# ---------------------------------------------------------------------------------------------- check 3
def _disk(n_on: int, size: int = 10) -> torch.Tensor:
    p = torch.zeros(1, 1, size, size, dtype=torch.bool)
    p.view(-1)[:n_on] = True
    return p


def test_selection_keeps_agreement_and_drops_the_hand_made_cases() -> None:
    p = _disk(40)
    assert select(p, p.clone()).tolist() == [True]  # p1 = p2
    q = _disk(40)
    q.view(-1)[:6] = False  # 34 of the 40 -> Dice 68/74 = 0.919: kept
    assert hard_dice(p, q).item() == pytest.approx(68 / 74, abs=1e-4) and select(p, q).tolist() == [True]
    s = torch.zeros_like(p)
    s.view(-1)[6:46] = True  # 40 pixels, 34 shared -> Dice 68/80 = 0.85: dropped
    assert hard_dice(p, s).item() == pytest.approx(0.85, abs=1e-4)
    assert select(p, s).tolist() == [False]
    box = torch.zeros(1, 1, 10, 10, dtype=torch.uint8)
    box.view(-1)[:100] = 1  # the whole image: Dice(p, box) = 80/140 = 0.571 (kept)
    assert select(p, p, box=box).tolist() == [True]
    small = _disk(10)
    assert select(small, small, box=box).tolist() == [False]  # Dice(p, box) = 20/110 < 0.5
    batch = torch.cat([p, small]), torch.cat([p, small]), torch.cat([box, box])
    assert select(batch[0], batch[1], box=batch[2]).tolist() == [True, False]


# ---------------------------------------------------------------------------------------------- check 4
@pytest.mark.parametrize("dims", [2, 3])
def test_box_refinement_never_puts_foreground_outside_the_box(dims: int) -> None:
    g = torch.Generator().manual_seed(0)
    p = torch.rand(4, 2, *(9,) * dims, generator=g) > 0.3
    box = torch.zeros(4, 1, *(9,) * dims, dtype=torch.uint8)
    box[(slice(None), slice(None), *(slice(2, 6),) * dims)] = 1
    out = refine(p, box=box)
    assert not bool((out & (box == 0)).any())
    assert torch.equal(out[..., *(slice(2, 6),) * dims], p[..., *(slice(2, 6),) * dims])


def test_class_vector_zeroes_absent_classes_only_with_several_classes() -> None:
    p = torch.ones(2, 2, 3, 3, dtype=torch.bool)
    present = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
    out = refine(p, present=present)
    assert out[0, 0].all() and not out[0, 1].any() and not out[1, 0].any() and out[1, 1].all()
    single = torch.ones(1, 1, 3, 3, dtype=torch.bool)
    absent = torch.tensor([[1.0, 0.0]])
    assert refine(single, present=absent).all()  # single class: no refinement (authors' code)
    assert not refine(single, present=absent, single_class=True).any()
    assert to_label_map(out).squeeze(1)[1].unique().tolist() == [2]


# ---------------------------------------------------------------------------------------------- check 5
class _Fixed(nn.Module):
    """A 'network' whose logits are its own parameter: the pseudo-label is whatever we set."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = nn.Parameter(logits.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], *self.logits.shape[1:]) + 0 * x.sum()


class _SpyTrainer:
    """A LocalTrainer for one box site of 2 images; records every fit call."""

    num_examples = 2
    epochs = 1
    device = torch.device("cpu")
    supervision = "box"

    def __init__(self) -> None:
        self.box = torch.zeros(2, 1, 4, 4, dtype=torch.uint8)
        self.box[:, :, :3, :3] = 1
        self.calls: list[dict[str, Any]] = []

    def batches(self, *, shuffle: bool = False) -> Iterator[Batch]:
        yield Batch(image=torch.zeros(2, 1, 4, 4), extras={WeakKey.BOX_MASK.value: self.box,
                                                            "index": torch.arange(2)})

    def fit(self, model: nn.Module, *, loss: Any = None, extras: Mapping[str, torch.Tensor] | None = None,
            subset: torch.Tensor | None = None, optimizer_key: str = "optimizer", **_: Any) -> dict[str, float]:
        assert extras is not None and subset is not None
        batch = Batch(image=torch.zeros(len(subset), 1, 4, 4),
                      extras={k: v[subset] for k, v in extras.items()})
        value = loss(model, batch, model(batch.image))
        self.calls.append({"model": model, "target": extras[FedMixKey.TARGET.value].clone(), "key": optimizer_key,
                           "subset": subset.tolist()})
        return {"loss": float(value.detach()), "task_loss": float(value.detach()), "steps": 1.0}

    def task_loss(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        raise AssertionError("fedmix uses its soft Dice by default")

    def evaluate(self, model: nn.Module, split: str = "val") -> dict[str, float]:
        return {}


def _ctx(g1: nn.Module, g2_logits: torch.Tensor) -> ClientContext:
    extras = {"net2.logits": g2_logits}
    params = {k: v.detach().clone() for k, v in g1.state_dict().items()}
    return ClientContext(client_id="box_site", round=1, broadcast=Broadcast(params=params, extras=extras), state={},
                         device=torch.device("cpu"))


def test_net1_trains_on_net2_pseudo_label_and_vice_versa() -> None:
    logits1 = torch.full((1, 2, 4, 4), -5.0)
    logits1[:, 1, :2, :3] = 5.0  # net 1: foreground rows 0-1, cols 0-2 (6 px, inside the box)
    logits2 = logits1.clone()
    logits2[:, 1, 2, 0] = 5.0  # net 2: one more pixel (7 px): Dice 12/13 = 0.92 -> kept
    net1 = _Fixed(logits1)
    alg = FedMix()
    trainer = _SpyTrainer()
    ctx = _ctx(net1, logits2)
    alg.on_round_start(net1, ctx)
    metrics = alg.local_train(net1, ctx, trainer)
    first, second = trainer.calls
    assert first["model"] is net1 and first["key"] == "optimizer"
    assert second["model"] is not net1 and second["key"] == FedMixKey.NET2_OPTIMIZER.value
    expected1 = (logits1[:, 1:] > 0).to(torch.uint8).expand(2, 1, 4, 4)
    expected2 = (logits2[:, 1:] > 0).to(torch.uint8).expand(2, 1, 4, 4)
    assert not torch.equal(expected1, expected2)
    assert torch.equal(first["target"], expected2)  # net 1 learns net 2's pseudo-label
    assert torch.equal(second["target"], expected1)  # and net 2 learns net 1's
    assert cross_targets(expected1, expected2) == (expected2, expected1)
    assert metrics[FedMixKey.SELECTED.value] == 2.0
    assert alg.client_update(net1, ctx, trainer.num_examples, metrics).num_examples == 2  # n_k = the kept samples


def test_no_selected_sample_skips_the_round_without_touching_any_label() -> None:
    logits1 = torch.full((1, 2, 4, 4), -5.0)
    logits1[:, 1, :2, :2] = 5.0
    logits2 = torch.full((1, 2, 4, 4), -5.0)
    logits2[:, 1, 2:, 2:] = 5.0  # disagreement: Dice 0
    net1 = _Fixed(logits1)
    alg = FedMix()
    trainer = _SpyTrainer()
    ctx = _ctx(net1, logits2)
    ctx.state[FedMixKey.LOSS.value] = 0.37
    alg.on_round_start(net1, ctx)
    metrics = alg.local_train(net1, ctx, trainer)
    update = alg.client_update(net1, ctx, trainer.num_examples, metrics)
    assert trainer.calls == []  # no training at all this round
    assert update.num_examples == 0 and update.metrics[FedMixKey.LOSS.value] == 0.37
    assert torch.equal(update.params["logits"], logits1) and torch.equal(update.extras["net2.logits"], logits2)


# ---------------------------------------------------------------------------------------------- weak masks never read
def test_weak_sites_true_masks_never_reach_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, bool, frozenset[str]]] = []
    original = trainer_module.Trainer._batches

    def spy(self: Any, **kw: Any) -> Iterator[Batch]:
        for batch in original(self, **kw):
            seen.append((self.supervision, batch.has_mask, frozenset(batch.extras)))
            yield batch

    built: list[Any] = []
    init = trainer_module.Trainer.__init__

    def spy_init(self: Any, data: Any, *args: Any, **kw: Any) -> None:
        built.append((data.supervision, data.masks, kw.get("eval_sets")))
        init(self, data, *args, **kw)

    monkeypatch.setattr(trainer_module.Trainer, "_batches", spy)
    monkeypatch.setattr(trainer_module.Trainer, "__init__", spy_init)
    _run(tmp_path, "mix", _mixed(rounds=2, threshold=0.0, box_threshold=0.0))  # keep everything: weak sites train
    assert {s for s, _, _ in built} == {"pixel", "box", "image"}
    weak_built = [(masks, evals) for kind, masks, evals in built if kind != "pixel"]
    assert all(masks is None for masks, _ in weak_built)  # hooks and trainer hold no weak training mask
    assert all(evals == {} for _, evals in weak_built)  # nor the weak site's val masks (evaluator only)
    weak = [(kind, has, keys) for kind, has, keys in seen if kind != "pixel"]
    assert weak and not any(has for _, has, _ in weak)
    assert any(FedMixKey.TARGET.value in keys for _, _, keys in weak)  # they did train, on pseudo-labels
    with pytest.raises(MissingMaskError, match="weakly-supervised"):
        _ = Batch(image=torch.zeros(1, 1, 2, 2)).mask  # reading a missing mask is loud


def test_fedavg_refuses_a_weak_site_and_train_sites_gives_the_pixel_only_baseline(tmp_path: Path) -> None:
    cfg = _mixed()
    cfg["algorithm"] = {"name": "fedavg"}
    with pytest.raises(ConfigError, match="site site1 is box-supervised .*algorithm fedavg needs pixel masks; use "
                                          "fedmix or .*federation.train_sites"):
        _run(tmp_path, "avg", cfg)
    cfg["federation"]["train_sites"] = ["site0"]
    _run(tmp_path, "pixel_only", cfg)
    records = read_metrics(tmp_path / "pixel_only" / "metrics.jsonl")
    assert {r["site"] for r in records if r["kind"] == "train"} == {"site0"}
    assert {r["site"] for r in records if r.get("kind") == "eval" and r.get("split") == "test"} == {"site0", "site1", "site2"}
    cfg["federation"]["train_sites"] = ["site9"]
    with pytest.raises(ConfigError, match=r"federation.train_sites names unknown site\(s\) 'site9'"):
        _run(tmp_path, "bad", cfg)


def test_mixed_supervision_run_logs_weights_and_carries_both_nets(tmp_path: Path,
                                                                   sent_updates: list[ClientUpdate]) -> None:
    _run(tmp_path, "mix", _mixed(rounds=2))
    records = read_metrics(tmp_path / "mix" / "metrics.jsonl")
    for rnd in (1, 2):
        rows = [r for r in records if r["kind"] == "weights" and r["round"] == rnd]
        assert {r["site"] for r in rows} == {"site0", "site1", "site2"}
        assert sum(r["weight"] for r in rows) == pytest.approx(1.0)
    assert all(set(u.extras) == {f"net2.{k}" for k in u.params} for u in sent_updates)
    pixel = [u for u in sent_updates if u.client_id == "site0"]
    assert all(u.num_examples > 0 for u in pixel)


def test_hyperparameters_are_validated() -> None:
    with pytest.raises(Exception, match="threshold"):
        build_algorithm({"name": "fedmix", "threshold": 1.5})
    with pytest.raises(Exception, match="beta"):
        build_algorithm({"name": "fedmix", "beta": 0})


def test_a_skipped_client_is_kept_with_its_loss_weight_or_dropped() -> None:
    def updates() -> list[ClientUpdate]:
        return [
            ClientUpdate(client_id="a", params={"w": torch.tensor([1.0])}, num_examples=4,
                         extras={"net2.w": torch.tensor([10.0])}, metrics={FedMixKey.LOSS.value: 0.5}),
            ClientUpdate(client_id="b", params={"w": torch.tensor([0.0])}, num_examples=0,
                         extras={"net2.w": torch.tensor([0.0])},
                         metrics={FedMixKey.LOSS.value: 1.0, FedMixKey.SKIPPED.value: 1.0}),
        ]

    start = {"w": torch.tensor([0.0])}
    keep = FedMix()
    g1 = keep.aggregate(1, updates(), start, keep.init_server_state(start)).params
    w, _ = fedmix_weights([4, 0], [0.5, 1.0], 10.0, 1.5)
    assert g1["w"].item() == pytest.approx(w[0]) and w[1] > 0.5  # the stale copy gets the larger weight
    drop = FedMix(skipped="drop")
    agg = drop.aggregate(1, updates(), start, drop.init_server_state(start))
    assert agg.params["w"].item() == 1.0 and agg.server_state[FedMixKey.NET2_STATE.value]["w"].item() == 10.0
    assert agg.weights["b"]["weight"] == 0.0
    assert agg.weights["a"]["weight"] == pytest.approx(1.0)


@pytest.mark.slow
def test_fedmix_with_weak_sites_runs_on_flower_exactly_as_inprocess(tmp_path: Path) -> None:
    """No state on ``self``: the Flower ServerApp/ClientApps (in-memory Grid) give the same models."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime" / "flower"))
    from flower_testlib import DirectGrid, task_identity

    from fedseg.runtime.common import config_text
    from fedseg.runtime.flower.client_app import clear_cache, make_client_app
    from fedseg.runtime.flower.keys import RunKey
    from fedseg.runtime.flower.server_app import run_server

    cfg_dict = _mixed(rounds=2, threshold=0.0, box_threshold=0.0)
    inproc = _run(tmp_path, "inproc", cfg_dict)
    cfg = config_from_dict(cfg_dict)
    run_config = {RunKey.CONFIG.value: config_text(cfg), RunKey.RUN_DIR.value: str(tmp_path / "flower")}
    clear_cache()
    try:
        with task_identity():
            grid = DirectGrid(make_client_app(run_config), [{"partition-id": i} for i in range(3)])
            flower = run_server(grid, run_config, engine="flower-sim", expected_nodes=3, write_report=False)
    finally:
        clear_cache()
    for key, value in inproc.global_params.items():
        assert torch.equal(value, flower.global_params[key]), key


def test_benchmark_script_runs_its_three_methods_on_tiny_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util
    import json
    import sys

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_fedmix.py"
    spec = importlib.util.spec_from_file_location("bench_fedmix", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setattr(sys, "argv", ["bench_fedmix.py", "--smoke", "--rounds", "1", "--seeds", "0",
                                      "--out", str(tmp_path)])
    assert bench.main() == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["runs"]) == {"fedmix_s0", "fedavg_pixel_only_s0", "fedavg_full_s0"}
    assert "mean over sites" in results["table"]
    trained = results["runs"]["fedavg_pixel_only_s0"]["n_per_round"]
    assert set(trained) == {"site1"}  # the baseline trains on the pixel site only
