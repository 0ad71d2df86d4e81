"""DynUNet (``model.name: dynunet``): the network, its head and norm keys, and a federated round."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import tiny_config
from monai.networks.nets import DynUNet
from PIL import Image
from torch import nn

from fedseg.algorithms import build_algorithm
from fedseg.algorithms.fedper import head_keys
from fedseg.config import LossConfig, TrainConfig, config_from_dict
from fedseg.config.model import DynUNetConfig
from fedseg.data.base import SegmentationSet
from fedseg.engine.trainer import Trainer
from fedseg.losses import DeepSupervisionLoss, build_loss
from fedseg.models import MODELS, build_model
from fedseg.models.dynunet import DeepSupervisedDynUNet, deep_outputs
from fedseg.runtime.inference import predict_file
from fedseg.runtime.sim import run_inprocess

FILTERS = [4, 8, 16]


def _config(dims: int, **over: Any) -> DynUNetConfig:
    layout = {"kernels": [[3] * dims] * 3, "pool_strides": [[2] * dims] * 2, "filters": FILTERS}
    return DynUNetConfig.model_validate({**layout, **over})


def _model(dims: int = 2, classes: int = 3, **over: Any) -> DeepSupervisedDynUNet:
    torch.manual_seed(0)
    model = build_model(_config(dims, **over), dims, 1, classes)
    assert isinstance(model, DeepSupervisedDynUNet)
    return model


def test_registered_with_its_config() -> None:
    assert "dynunet" in MODELS.names()
    cfg = _config(2)
    assert cfg.channels == FILTERS and cfg.strides == [2, 2] and cfg.norm == "instance"
    assert cfg.arguments() == {"kernels": [[3, 3]] * 3, "pool_strides": [[2, 2]] * 2, "filters": FILTERS,
                               "dropout": 0.0, "deep_supervision": True, "deep_supr_num": 1, "res_block": False}
    assert DynUNetConfig.model_validate(cfg.model_dump(mode="json")) == cfg  # config.yaml round trip
    # nnU-Net's widths by default: 32 doubling, capped at 320 in 3D
    wide = DynUNetConfig(kernels=[[3, 3, 3]] * 7, pool_strides=[[2, 2, 2]] * 6)
    assert wide.channels == [32, 64, 128, 256, 320, 320, 320]


@pytest.mark.parametrize("dims", [2, 3])
def test_forward_backward_with_deep_supervision(dims: int) -> None:
    model = _model(dims, kernels=[[3] * dims] * 4, pool_strides=[[2] * dims] * 3, filters=[4, 8, 16, 16])
    x = torch.randn(2, 1, *([16] * dims))
    logits = model(x)
    assert logits.shape == (2, 3, *([16] * dims))  # output shape = input shape
    extra = deep_outputs(logits)  # every decoder level below full resolution, highest first
    assert [tuple(t.shape) for t in extra] == [(2, 3, *([8] * dims)), (2, 3, *([4] * dims))]
    target = torch.randint(0, 3, (2, 1, *([16] * dims)))
    DeepSupervisionLoss(build_loss(LossConfig(), 3))(logits, target).backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    # the lowest output weighs 0 (nnU-Net): its head is in the graph but learns nothing
    assert all(not g.any() for n, g in grads.items() if n.startswith("deep_supervision_heads.1."))  # type: ignore[union-attr]
    assert grads["deep_supervision_heads.0.conv.conv.weight"].abs().sum() > 0  # type: ignore[union-attr]
    model.eval()
    with torch.no_grad():
        assert deep_outputs(model(x)) == () and model(x).shape == logits.shape


def test_same_network_as_monai_without_aliased_keys() -> None:
    model = _model(2)
    keys = list(model.state_dict())
    assert not [k for k in keys if k.startswith("skip_layers")]
    assert len({t.data_ptr() for t in model.state_dict().values()}) == len(keys)  # one name per tensor
    reference = DynUNet(2, 1, 3, kernel_size=[[3, 3]] * 3, strides=[[1, 1], [2, 2], [2, 2]],
                        upsample_kernel_size=[[2, 2], [2, 2]], filters=FILTERS, deep_supervision=True,
                        deep_supr_num=1)
    missing, unexpected = reference.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("skip_layers.") for k in missing)
    x = torch.randn(2, 1, 16, 16)
    stacked = reference.train()(x)  # MONAI: (B, 1 + n, C, H, W), extra outputs upsampled by nearest
    logits = model.train()(x)
    assert torch.equal(logits, stacked[:, 0])  # bit for bit (assert_close imports torch.distributed: 5 s)
    low = deep_outputs(logits)[0]
    assert torch.equal(F.interpolate(low, size=(16, 16)), stacked[:, 1])
    assert torch.equal(model.eval()(x), reference.eval()(x))


def _prefixed(model: nn.Module, prefixes: tuple[str, ...]) -> set[str]:
    return {k for k in model.state_dict() if k.startswith(prefixes)}


@pytest.mark.parametrize("name", ["fedper", "fedrep"])
def test_head_keys_are_what_fedper_and_fedrep_keep_local(name: str) -> None:
    model = _model(2)
    head = _prefixed(model, ("upsamples.1.", "output_block.", "deep_supervision_heads."))
    assert head_keys(model, []) == head
    assert build_algorithm({"name": name}).local_keys(model) == head
    assert {k.split(".")[0] for k in head} == {"upsamples", "output_block", "deep_supervision_heads"}
    plain = _model(2, deep_supervision=False)
    assert head_keys(plain, []) == _prefixed(plain, ("upsamples.1.", "output_block."))


def test_fedbn_keeps_every_instance_norm_local() -> None:
    model = _model(3, res_block=True)
    norms = [n for n, m in model.named_modules() if isinstance(m, nn.InstanceNorm3d)]
    # residual input, down and bottleneck blocks: 3 norms each; the 2 decoder blocks: 2 each
    assert len(norms) == 3 * 3 + 2 * 2
    expected = {f"{n}.{p}" for n in norms for p in ("weight", "bias")}  # affine; no running statistics
    assert build_algorithm({"name": "fedbn"}).local_keys(model) == expected


def _tiny_run(tmp_path: Path, algorithm: str, **model: Any) -> dict[str, Any]:
    cfg = tiny_config(algorithm, rounds=1)
    cfg["model"] = {"name": "dynunet", "filters": [4, 8, 16], **model}
    cfg["train"] = {**cfg["train"], "patch_size": [16, 16]}
    run_inprocess(config_from_dict(cfg), tmp_path / "run", write_report=False)
    resolved: dict[str, Any] = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["model"]
    return resolved


def test_one_fedavg_round_derives_its_layout_and_records_it(tmp_path: Path) -> None:
    resolved = _tiny_run(tmp_path, "fedavg")
    # 16x16 patches, isotropic: two poolings of 2 (nnU-Net stops at a 4-voxel bottleneck)
    assert resolved["kernels"] == [[3, 3]] * 3 and resolved["pool_strides"] == [[2, 2]] * 2
    assert resolved["channels"] == [4, 8, 16] and resolved["strides"] == [2, 2]
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()


class _Shapes(nn.Module):
    """A base loss that records the grids it is called on."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base, self.calls = base, []  # type: list[tuple[int, ...]]

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        assert logits.shape[2:] == target.shape[2:]
        self.calls.append(tuple(logits.shape[2:]))
        out: torch.Tensor = self.base(logits, target)
        return out


def test_the_trainer_trains_every_output() -> None:
    masks = torch.zeros(4, 1, 16, 16, dtype=torch.long)
    masks[:, :, 4:12, 4:12] = 1
    data = SegmentationSet(images=masks.float() + 0.1 * torch.randn(4, 1, 16, 16), masks=masks,
                           spacing=torch.ones(4, 2, dtype=torch.float64), ids=[f"c{i}" for i in range(4)])
    spy = _Shapes(build_loss(LossConfig(), 3))
    trainer = Trainer(data, DeepSupervisionLoss(spy), TrainConfig(batch_size=2), epochs=1,
                      device=torch.device("cpu"), seed=0, state={})
    trainer.fit(_model(2))
    assert spy.calls == [(16, 16), (8, 8)] * 2  # two batches, each: full resolution, then the extra output


@pytest.mark.slow
def test_fedper_never_sends_the_head(tmp_path: Path, sent_updates: list[Any]) -> None:
    _tiny_run(tmp_path, "fedper")
    head = head_keys(_model(2), [])
    assert sent_updates and all(not head & set(update.params) for update in sent_updates)
    assert all(set(update.params) == set(_model(2).state_dict()) - head for update in sent_updates)


@pytest.mark.slow
def test_trains_under_sample_level_dp(tmp_path: Path) -> None:
    """Opacus's per-sample hooks refuse in-place activations; the weight-0 output still gets a gradient."""
    cfg = tiny_config(rounds=1, privacy={"sample": {"enabled": True, "noise_multiplier": 1.0, "max_grad_norm": 1.0}})
    cfg["model"] = {"name": "dynunet", "filters": FILTERS, "kernels": [[3, 3]] * 3, "pool_strides": [[2, 2]] * 2}
    run_inprocess(config_from_dict(cfg), tmp_path / "run", write_report=False)
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()


@pytest.mark.slow
def test_predict_pads_a_whole_image_to_the_pooling_and_crops_back(tmp_path: Path) -> None:
    """Whole images (no patch): padded to the per-level strides' product, full-resolution output only."""
    cfg = tiny_config(rounds=1)
    cfg["model"] = {"name": "dynunet", "filters": FILTERS, "kernels": [[1, 3], [3, 3], [3, 3]],
                    "pool_strides": [[1, 2], [2, 2]]}
    run_inprocess(config_from_dict(cfg), tmp_path / "run", write_report=False)
    grey = np.full((19, 23), 100, dtype=np.uint8)
    grey[5:12, 6:15] = 220
    Image.fromarray(grey).save(tmp_path / "scan.png")
    result = predict_file(tmp_path / "run", [tmp_path / "scan.png"], tmp_path / "out" / "mask.png")
    assert result.shape == (19, 23) and sum(result.voxels.values()) == 19 * 23
