from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import SHARED_DATA
from fedseg.algorithms import ALGORITHMS
from fedseg.runtime.bench_suite import SuiteError, find_suite, load_suite, plan_suite, suite_names

TINY = {"data.source": "synthetic",
        "data.synthetic": {"num_sites": 2, "spatial_dims": 2, "size": 16, "samples_per_site": [8, 6]},
        "model": {"channels": [4, 8], "strides": [2], "num_res_units": 0}, "federation.rounds": 1}


def _suite(tmp_path: Path, **keys: Any) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "set": TINY, "datasets": [{"name": "syn"}],
                                    "methods": [{"name": "fedavg"}], **keys}))
    return path


def test_quick_suite_has_one_run_per_registered_algorithm_with_its_model() -> None:
    suite = load_suite(find_suite("quick"))
    runs = plan_suite(suite, Path("out"))
    assert [r.method for r in runs] == ALGORITHMS.names()  # a new algorithm joins by itself
    models = {r.method: r.config.model.name for r in runs}
    assert models["fedbcs"] == models["fpl"] == models["fedproto"] == "fedbcs_unet"
    assert models["fedoap"] == "fedoap_unet" and models["fedavg"] == "unet"
    assert runs[0].run_dir == Path("out/synthetic") / runs[0].method / "s0"
    assert {r.config.eval.select for r in runs} == {"best_val"}


def test_merge_order_override_model_replaces_method_model_updates_cli_set_last(tmp_path: Path) -> None:
    path = _suite(tmp_path, methods=[{"name": "no_dca", "algorithm": {"name": "fedoap", "mode": "kv_param"},
                                      "model": {"dca": False}}],
                  algorithm_overrides={"fedoap": {"model": {"name": "fedoap_unet", "features": [4, 8, 16]},
                                                  "algorithm": {"finetune_epochs": 1, "mode": "kv_bank"}}},
                  seeds=[3, 4])
    runs = plan_suite(load_suite(path), tmp_path, overrides=["federation.rounds=2"])
    cfg = runs[0].config
    assert cfg.model.name == "fedoap_unet" and cfg.model.dca is False  # type: ignore[attr-defined]
    assert cfg.algorithm["mode"] == "kv_param" and cfg.algorithm["finetune_epochs"] == 1  # method wins
    assert cfg.federation.rounds == 2 and [r.seed for r in runs] == [3, 4]
    assert cfg.name == "bench_s_syn_no_dca"


def test_method_of_the_presets_algorithm_keeps_its_hyperparameters(tmp_path: Path) -> None:
    preset = tmp_path / "p.yaml"
    preset.write_text(yaml.safe_dump({"algorithm": {"name": "fedprox", "mu": 0.5}}))
    path = _suite(tmp_path, preset="p.yaml", methods=[{"name": "fedprox"}, {"name": "fedavg"}])
    runs = plan_suite(load_suite(path), tmp_path)
    assert runs[0].config.algorithm == {"name": "fedprox", "mu": 0.5}
    assert runs[1].config.algorithm == {"name": "fedavg"}


def test_protocol_refuses_selection_on_the_last_round_naming_the_key(tmp_path: Path) -> None:
    suite = load_suite(_suite(tmp_path))
    with pytest.raises(SuiteError, match="eval.select must be best_val"):
        plan_suite(suite, tmp_path, overrides=["eval.select=last"])


def test_protocol_refuses_a_folder_site_without_group_column_unless_exempt(tmp_path: Path) -> None:
    for site in ("a", "b"):
        (tmp_path / "data" / site / "images").mkdir(parents=True)
    folder = {"data.source": "folder", "data.root": str(tmp_path / "data"), "data.group_column": {"a": "case"}}
    path = _suite(tmp_path, datasets=[{"name": "d", "set": folder}])
    with pytest.raises(SuiteError, match="site 'b' has no group column"):
        plan_suite(load_suite(path), tmp_path)
    path = _suite(tmp_path, datasets=[{"name": "d", "set": folder, "patient_split_exempt": {"b": "one per patient"}}])
    assert len(plan_suite(load_suite(path), tmp_path)) == 1


def test_suite_errors_name_the_key_and_the_allowed_values(tmp_path: Path) -> None:
    with pytest.raises(SuiteError, match="unknown key.*methodz.*allowed"):
        load_suite(_suite(tmp_path, methodz=1))
    with pytest.raises(SuiteError, match="'nope' is not registered"):
        load_suite(_suite(tmp_path, methods=[{"name": "x", "algorithm": {"name": "nope"}}]))
    with pytest.raises(SuiteError, match="--only zzz: not a method of suite s; allowed: fedavg"):
        plan_suite(load_suite(_suite(tmp_path)), tmp_path, only=["zzz"])
    with pytest.raises(SuiteError, match="--datasets zz: not a dataset of suite s; allowed: syn"):
        plan_suite(load_suite(_suite(tmp_path)), tmp_path, datasets=["zz"])
    assert len(plan_suite(load_suite(_suite(tmp_path)), tmp_path, datasets=["syn"])) == 1
    with pytest.raises(SuiteError, match="did you mean 'quick'"):
        find_suite("quik")


@pytest.mark.skipif(not (SHARED_DATA / "busbra_scanners").is_dir(), reason="needs ../shared/data")
@pytest.mark.parametrize("name", ["busbra", "organs", "mixed", "compression", "robustness", "brats3d", "scaling",
                                  "scaling_flower", "fedoap_busbra", "pfedsam"])
def test_every_shipped_suite_plans_under_the_protocol(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(Path(__file__).resolve().parents[2])  # presets name data relative to the checkout
    assert name in suite_names()
    runs = plan_suite(load_suite(find_suite(name)), Path("out"))
    assert runs and len({r.run_dir for r in runs}) == len(runs)
