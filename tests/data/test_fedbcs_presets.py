"""The FedBCS presets (configs/fedbcs) validate and say what methods.md section 7 settles; the two
fixture presets (6-site prostate, 4-site fundus) train two rounds in process (the second with
prototypes) with tiny overrides, for every algorithm name of the FedBCS comparison that is
registered (the others are skipped); benchmarks/bench_fedbcs.py builds its configs and table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from fedseg.algorithms.registry import ALGORITHMS
from fedseg.config import RunConfig, config_from_dict, load_config
from fedseg.records import Field, Selection, SummaryKey
from fedseg.runtime.sim import run_inprocess

REPO = Path(__file__).resolve().parents[2]
PRESETS = REPO / "configs" / "fedbcs"
EXPECTED = {  # preset -> (sites, input channels, classes, optimizer)
    "busbra": (3, 1, 2, "adam"),
    "polyps": (2, 3, 2, "sgd"),
    "prostate_smoke": (6, 1, 2, "adam"),
    "fundus_smoke": (4, 3, 3, "sgd"),
}
ALGORITHM_NAMES = ["fedavg", "fedproto", "fpl", "fedbcs"]


def test_there_is_a_preset_per_dataset() -> None:
    assert {p.stem for p in PRESETS.glob("*.yaml")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_validates_with_the_authors_settings(name: str) -> None:
    cfg = load_config(PRESETS / f"{name}.yaml")
    assert isinstance(cfg, RunConfig) and cfg.algorithm == {"name": "fedbcs"}
    assert cfg.model.name == "fedbcs_unet" and cfg.model.model_dump()["features"][0] == 32
    assert cfg.model.model_dump()["bn_running_stats"] is False
    raw = yaml.safe_load((PRESETS / f"{name}.yaml").read_text(encoding="utf-8"))
    assert "batch_size" in raw["eval"]  # fixed explicitly: BN uses batch statistics at test time
    assert cfg.eval.select == Selection.BEST_VAL
    _, channels, classes, optimizer = EXPECTED[name]
    assert cfg.data.channels == channels and cfg.data.num_classes == classes
    assert cfg.train.optimizer == optimizer and cfg.train.weight_decay == pytest.approx(1e-4)
    assert cfg.train.lr == pytest.approx(1e-4 if optimizer == "adam" else 1e-2)
    shape = cfg.data.preprocess.target_shape
    assert shape is not None and all(n % 16 == 0 for n in shape)  # 4 poolings
    assert str(cfg.data.root).startswith("../shared/data/")
    if cfg.data.split_file is not None:
        assert (REPO / cfg.data.split_file).is_file()


def _tiny(name: str, algorithm: str) -> dict[str, Any]:
    raw: dict[str, Any] = yaml.safe_load((PRESETS / f"{name}.yaml").read_text(encoding="utf-8"))
    root = REPO / raw["data"]["root"]
    if not root.is_dir():
        pytest.skip(f"{root} not available")
    raw["data"]["root"] = str(root)
    raw["data"]["split_file"] = str(REPO / raw["data"]["split_file"])
    raw["data"]["preprocess"]["target_shape"] = [16, 16]
    raw["data"]["preprocess"]["anti_aliasing"] = False
    raw["model"]["features"] = [4, 8, 16]
    raw["model"]["fusion_channels"] = 4
    raw["federation"]["rounds"] = 2  # round 2 is the first with prototype losses (FedBCS, FPL, FedProto)
    raw["train"]["device"] = "cpu"
    raw["algorithm"] = {"name": algorithm}
    return raw


@pytest.mark.realdata
@pytest.mark.parametrize("algorithm", ALGORITHM_NAMES)
@pytest.mark.parametrize("name", ["prostate_smoke", "fundus_smoke"])
def test_fixture_preset_runs_two_rounds(name: str, algorithm: str, tmp_path: Path) -> None:
    if algorithm not in ALGORITHMS.names():
        pytest.skip(f"algorithm {algorithm!r} is not registered yet")
    cfg = config_from_dict(_tiny(name, algorithm))
    run_inprocess(cfg, tmp_path / "run", write_report=False)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text(encoding="utf-8"))
    sites, *_ = EXPECTED[name]
    test = summary[SummaryKey.TEST][summary[SummaryKey.JUDGED_BY]]
    assert len(test) == sites and summary[SummaryKey.ROUNDS] == 2
    assert all(0.0 <= m[Field.DICE] <= 1.0 for m in test.values())


def _bench() -> Any:
    from bench_scripts import load_bench_script

    return load_bench_script("bench_fedbcs")


def test_benchmark_configs_differ_from_the_preset_only_as_documented() -> None:
    bench = _bench()
    args = bench.argparse.Namespace(rounds=3, size=32, features="4,8,16", fusion_channels=4)
    cfgs = {m: config_from_dict(bench.build_config(m, args, seed=1)) for m in bench.METHODS}
    assert {m: c.algorithm for m, c in cfgs.items()}["fedbcs_enc"] == {"name": "fedbcs", "levels": ["encoder"]}
    assert cfgs["fedbcs_dec"].algorithm["levels"] == ["decoder"]
    assert [m for m, c in cfgs.items() if c.model.model_dump()["fsr"]] == ["fedbcs", "fedbcs_enc", "fedbcs_dec",
                                                                         "fedavg_fsr"]
    for cfg in cfgs.values():  # same data, optimiser, evaluation batch and selection for every method
        assert cfg.seed == 1 and cfg.federation.rounds == 3 and cfg.data.preprocess.target_shape == [32, 32]
        assert cfg.train == cfgs["fedavg"].train and cfg.eval == cfgs["fedavg"].eval
        assert cfg.model.model_dump()["features"] == [4, 8, 16]


def test_benchmark_table_means_sd_and_ratio_to_fedavg() -> None:
    bench = _bench()

    def run(dice: float, hd95: float, seconds: float) -> dict[str, Any]:
        return {"dice": {"a": dice, "b": dice / 2}, "hd95": {"a": hd95, "b": float("nan")},
                "round_seconds": seconds, "peak_mb": 100.0, "train_mb": 10.0}

    runs = {"fedavg_s0": run(0.4, 10.0, 1.0), "fedavg_s1": run(0.6, 20.0, 3.0), "fedbcs_s0": run(0.5, 5.0, 4.0)}
    lines = bench.table(runs, ["fedavg", "fedbcs", "fpl"], [0, 1]).splitlines()
    assert len(lines) == 4  # header, rule, two methods that ran (fpl has no runs)
    fedavg, fedbcs = lines[2].split(" | "), lines[3].split(" | ")
    assert fedavg[0] == "| fedavg (2)" and fedavg[1] == "0.500 ± 0.141" and fedavg[3] == "0.375 ± 0.106"
    assert fedavg[4] == "15.0 ± 7.1" and fedavg[5] == "– [2 n/a]"  # a NaN is counted, never averaged away
    assert fedavg[6] == "– [2 n/a]" and fedavg[7] == "2.0 ± 1.4"  # a site mean with a NaN site is NaN
    assert fedbcs[7] == "4.0 ± 0.0 (x2.00)" and fedbcs[8] == "100 ± 0 (x1.00)"
