"""The pFedSAM benchmark's files (issue 15): the pretraining config builds the fine-tuning preset's
SAM on other data than BUS-BRA, its export loads strictly into the preset, and the suite compares
the methods at one input size, one round count and one split."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import SHARED_DATA
from fedseg.config import load_config
from fedseg.models import build_model
from fedseg.models.init import load_init_checkpoint
from fedseg.runtime.bench_suite import find_suite, load_suite, plan_suite

REPO = Path(__file__).resolve().parents[2]
PRETRAIN = REPO / "configs" / "pfedsam" / "pretrain_tiny.yaml"
FINETUNE = REPO / "configs" / "pfedsam" / "busbra_tiny.yaml"
ADAPTERS = {"lora_rank", "lora_alpha", "lora_blocks", "moe_experts", "moe_top_k", "moe_bottleneck", "moe_every",
            "init_checkpoint"}


def test_pretraining_uses_the_preset_architecture_without_adapters_and_never_busbra() -> None:
    pre, fine = load_config(PRETRAIN), load_config(FINETUNE)
    a, b = pre.model.model_dump(), fine.model.model_dump()
    assert {k: v for k, v in a.items() if k not in ADAPTERS} == {k: v for k, v in b.items() if k not in ADAPTERS}
    assert pre.model.lora_rank == 0 and pre.model.moe_experts == 0  # type: ignore[union-attr]
    assert pre.algorithm["name"] == "centralized" and pre.data.channels == fine.data.channels == 1
    assert pre.data.target_shape() == fine.data.target_shape() == [64, 64]
    paths = [str(spec.path) for spec in pre.data.site_specs.values()] + [str(pre.data.root)]
    assert paths and not any("busbra" in p.lower() for p in paths)


def test_the_exported_pretrained_model_loads_strictly_and_unchanged_into_the_preset(tmp_path: Path) -> None:
    pre, fine = load_config(PRETRAIN), load_config(FINETUNE)
    torch.manual_seed(0)
    source = build_model(pre.model, 2, 1, 2).eval()
    path = tmp_path / "sam_tiny64.pth"
    torch.save(source.official_state_dict(merge_lora=True), path)
    target = build_model(fine.model, 2, 1, 2)
    load_init_checkpoint(target, path)  # strict
    assert target.lora_layers() and target.moe_layers()  # the preset's adapters, added on load
    x = torch.randn(1, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(target.eval()(x), source(x))


@pytest.mark.skipif(not (SHARED_DATA / "busbra_scanners").is_dir(), reason="needs ../shared/data")
def test_suite_compares_at_one_size_and_round_count_and_only_sam_methods_load_the_checkpoint(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)  # presets name data relative to the checkout
    runs = plan_suite(load_suite(find_suite("pfedsam")), Path("out"))
    assert {r.method for r in runs} == {"fedsam", "pfedsam", "fedavg_unet", "pfedsam_random"}
    assert {r.seed for r in runs} == {0, 1, 2}
    for r in runs:
        cfg = r.config
        assert cfg.data.target_shape() == [64, 64] and cfg.federation.rounds == runs[0].config.federation.rounds
        assert cfg.eval.select == "best_val" and cfg.data.group_column == "case"
        assert (cfg.model.init_checkpoint is not None) == (r.method in ("fedsam", "pfedsam"))
        assert cfg.model.name == ("unet" if r.method == "fedavg_unet" else "sam")
