"""The attack simulator: exact transformations, only at the named sites, refused names, run_info."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import tiny_config
from fedseg.config import AttackConfig, ConfigError, config_from_dict
from fedseg.data.build import build_federated_data
from fedseg.data.corrupt import flip_labels
from fedseg.engine import wire
from fedseg.engine.attack import UpdateAttack, attack_splits, require_known_sites, update_attack
from fedseg.engine.messages import encode_broadcast
from fedseg.runtime.build import build_federation
from fedseg.runtime.common import DataSpec
from fedseg.runtime.sim import run_inprocess
from fedseg.types import Broadcast, ClientUpdate

W = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)}
WK = {"w": torch.tensor([2.0, 0.0]), "n": torch.tensor(4)}


def attacked(kind: str, **kw: float) -> ClientUpdate:
    update = ClientUpdate("site0", dict(WK), 5, extras={"net2.w": torch.tensor([2.0, 0.0]), "proto": torch.ones(2)},
                          metrics={"loss": 0.5})
    broadcast = Broadcast(params=dict(W), extras={"net2.w": torch.tensor([1.0, 2.0])})
    return UpdateAttack(kind, **kw).apply(update, broadcast, rnd=3)  # type: ignore[arg-type]


def test_scale_sends_w_plus_s_times_the_delta() -> None:
    out = attacked("scale", factor=100.0)
    torch.testing.assert_close(out.params["w"], torch.tensor([101.0, -198.0]))  # 1 + 100*1, 2 + 100*(-2)
    torch.testing.assert_close(out.extras["net2.w"], torch.tensor([101.0, -198.0]))
    assert torch.equal(out.params["n"], WK["n"]) and torch.equal(out.extras["proto"], torch.ones(2))  # no reference
    assert out.num_examples == 5 and out.metrics == {"loss": 0.5}


def test_sign_flip_sends_w_minus_s_times_the_delta() -> None:
    torch.testing.assert_close(attacked("sign_flip").params["w"], torch.tensor([0.0, 4.0]))
    torch.testing.assert_close(attacked("sign_flip", factor=3.0).params["w"], torch.tensor([-2.0, 8.0]))


def test_gaussian_adds_seeded_noise_of_the_given_std_to_every_float_tensor() -> None:
    first, again = attacked("gaussian", noise_std=0.5, seed=7), attacked("gaussian", noise_std=0.5, seed=7)
    assert torch.equal(first.params["w"], again.params["w"]) and not torch.equal(first.params["w"], WK["w"])
    assert not torch.equal(first.extras["proto"], torch.ones(2)) and torch.equal(first.params["n"], WK["n"])
    big = ClientUpdate("s", {"x": torch.zeros(200_000)}, 1)
    noisy = UpdateAttack("gaussian", noise_std=0.5).apply(big, Broadcast(params={}), rnd=1)
    assert abs(float(noisy.params["x"].std()) - 0.5) < 0.005


def test_only_the_named_sites_attack() -> None:
    cfg = AttackConfig(kind="scale", sites=["site1"])
    assert update_attack(cfg, "site0", seed=0, client_index=0) is None
    assert update_attack(cfg, "site1", seed=0, client_index=1) == UpdateAttack("scale", 100.0, 1.0, 0, 1)
    assert update_attack(AttackConfig(kind="label_flip", sites=["site1"]), "site1", seed=0, client_index=1) is None


def test_flip_labels_exactly() -> None:
    masks = torch.tensor([0, 1, 2, 0]).reshape(1, 1, 2, 2)
    assert flip_labels(masks, 3, "invert").flatten().tolist() == [2, 1, 0, 2]
    assert flip_labels(masks, 3, "permute").flatten().tolist() == [1, 2, 0, 1]
    assert flip_labels(masks.clamp(max=1), 2).flatten().tolist() == [1, 0, 0, 1]  # foreground <-> background
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        flip_labels(masks, 2)


def test_label_flip_changes_only_the_named_sites_training_masks() -> None:
    cfg = config_from_dict(tiny_config(sites=3, attack={"kind": "label_flip", "sites": ["site1"]}))
    data = build_federated_data(cfg.data, cfg.seed)
    splits = {s.name: {"train": s.train, "val": s.val, "test": s.test} for s in data.sites}
    out = attack_splits(splits, cfg.attack, data.num_classes)
    assert torch.equal(out["site1"]["train"].pixel_masks(), 1 - splits["site1"]["train"].pixel_masks())
    assert out["site1"]["val"] is splits["site1"]["val"] and out["site1"]["test"] is splits["site1"]["test"]
    assert all(out[s][k] is splits[s][k] for s in ("site0", "site2") for k in ("train", "val", "test"))


def test_the_attacking_client_sends_the_attacked_update_and_the_others_are_untouched() -> None:
    """The same round of the same clients with and without the attack: site1 sends exactly the
    transformed update, site0 the same bytes."""
    sent = {}
    for kind in ("none", "sign_flip"):
        attack = {"kind": kind, "sites": ["site1"]} if kind != "none" else {}
        cfg = config_from_dict(tiny_config(attack=attack))
        data = build_federated_data(cfg.data, cfg.seed)
        fed = build_federation(cfg, DataSpec.of(data), torch.device("cpu"), engine="inprocess", data=data.sites)
        payload, _ = encode_broadcast(fed.algorithm, fed.client("site0").codecs.down, fed.init_params, 1,
                                      fed.init_params, {})
        sent[kind] = {c: fed.client(c).fit(1, payload, {})[0] for c in ("site0", "site1")}
    assert sent["none"]["site0"] == sent["sign_flip"]["site0"]
    clean, bad = (wire.decode(sent[k]["site1"]) for k in ("none", "sign_flip"))
    assert isinstance(clean, ClientUpdate) and isinstance(bad, ClientUpdate)
    for key, value in clean.params.items():
        if value.is_floating_point():
            torch.testing.assert_close(bad.params[key], 2 * fed.init_params[key] - value)


def test_attack_settings_are_refused_with_the_key() -> None:
    with pytest.raises(ConfigError, match="attack.sites names unknown site.*'site9'.*site0, site1"):
        config_from_dict(tiny_config(attack={"kind": "scale", "sites": ["site9"]}))
    with pytest.raises(ConfigError, match="needs attack.sites"):
        config_from_dict(tiny_config(attack={"kind": "scale"}))
    with pytest.raises(ConfigError, match="attack.kind is none"):
        config_from_dict(tiny_config(attack={"sites": ["site0"]}))
    with pytest.raises(ConfigError, match="attack.scale applies to kind scale or sign_flip"):
        config_from_dict(tiny_config(attack={"kind": "gaussian", "sites": ["site0"], "scale": 2.0}))
    with pytest.raises(ConfigError, match="'Site1'.*Did you mean 'site1'"):  # folder roots: once sites are known
        require_known_sites(AttackConfig(kind="scale", sites=["Site1"]), ["site0", "site1"])


def test_the_centralised_reference_cannot_be_attacked() -> None:
    cfg = config_from_dict(tiny_config("centralized", attack={"kind": "scale", "sites": ["site0"]}))
    data = build_federated_data(cfg.data, cfg.seed)
    with pytest.raises(ConfigError, match="one pooled client"):
        build_federation(cfg, DataSpec.of(data), torch.device("cpu"), engine="inprocess", data=data.sites)


@pytest.mark.slow
def test_an_attacked_run_says_so_in_run_info(tmp_path: Path) -> None:
    cfg = tiny_config(rounds=1, sites=3, attack={"kind": "scale", "sites": ["site2"]},
                      aggregation={"rule": "median"}, eval={"every": 1})
    run_inprocess(config_from_dict(cfg), tmp_path / "run", write_report=False)
    info = json.loads((tmp_path / "run" / "run_info.json").read_text())
    assert info["attack"] == {"kind": "scale", "sites": ["site2"], "scale": 100.0}
    assert info["aggregation"]["rule"] == "median"
