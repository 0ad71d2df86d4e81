from __future__ import annotations

import pytest
import torch

from fedseg.config import ModelConfig
from fedseg.models import MODELS, build_model
from fedseg.registry import UnknownNameError

SMALL = {"channels": [4, 8, 16], "strides": [2, 2]}


@pytest.mark.parametrize(
    ("spatial_dims", "shape"),
    [(2, (2, 1, 32, 32)), (2, (1, 3, 16, 24)), (3, (2, 1, 16, 16, 16)), (3, (1, 2, 8, 16, 12))],
)
@pytest.mark.parametrize("norm", ["batch", "instance", "group", "none"])
def test_output_shape_is_logits_per_class(spatial_dims: int, shape: tuple[int, ...], norm: str) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(norm=norm, **SMALL)
    model = build_model(cfg, spatial_dims=spatial_dims, in_channels=shape[1], out_channels=3).eval()
    with torch.no_grad():
        out = model(torch.randn(shape))
    assert out.shape == (shape[0], 3, *shape[2:])
    assert out.dtype == torch.float32


def test_no_residual_units_and_dropout() -> None:
    cfg = ModelConfig(num_res_units=0, dropout=0.2, norm="group", **SMALL)
    model = build_model(cfg, spatial_dims=2, in_channels=1, out_channels=2).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 16, 16)).shape == (1, 2, 16, 16)


def test_norm_none_has_no_norm_layers() -> None:
    model = build_model(ModelConfig(norm="none", **SMALL), spatial_dims=2, in_channels=1, out_channels=2)
    norm_types = (torch.nn.BatchNorm2d, torch.nn.InstanceNorm2d, torch.nn.GroupNorm)
    assert not any(isinstance(m, norm_types) for m in model.modules())


def test_instance_norm_is_affine() -> None:
    model = build_model(ModelConfig(norm="instance", **SMALL), spatial_dims=3, in_channels=1, out_channels=2)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.InstanceNorm3d)]
    assert norms and all(m.affine for m in norms)


def test_unknown_model_name_lists_allowed() -> None:
    with pytest.raises(UnknownNameError, match="unet"):
        build_model(ModelConfig(name="unte"), spatial_dims=2, in_channels=1, out_channels=2)
    assert "unet" in MODELS


@pytest.mark.parametrize("spatial_dims", [1, 4])
def test_bad_spatial_dims(spatial_dims: int) -> None:
    with pytest.raises(ValueError, match=rf"got {spatial_dims}"):
        build_model(ModelConfig(**SMALL), spatial_dims=spatial_dims, in_channels=1, out_channels=2)


def test_bad_channels() -> None:
    with pytest.raises(ValueError, match="in_channels"):
        build_model(ModelConfig(**SMALL), spatial_dims=2, in_channels=0, out_channels=2)


def test_builders_take_plain_arguments() -> None:
    """The registered builder equals build_model on the typed config: same argument names, same weights."""
    from fedseg.config import UNetConfig

    cfg = UNetConfig(norm="instance", **SMALL)
    torch.manual_seed(0)
    via_config = build_model(cfg, 2, 1, 2)
    torch.manual_seed(0)
    direct = MODELS.get("unet")(2, 1, 2, channels=[4, 8, 16], strides=[2, 2], num_res_units=1, norm="instance",
                                dropout=0.0)
    assert all(torch.equal(a, b) for a, b in zip(via_config.state_dict().values(), direct.state_dict().values(),
                                                 strict=True))


def test_models_and_losses_do_not_import_the_config() -> None:
    """Schemas stay in fedseg.config; models and losses take plain arguments (MONAI style)."""
    import ast
    from pathlib import Path

    src = Path(__file__).resolve().parents[2] / "src" / "fedseg"
    offenders = []
    for path in sorted(p for pkg in ("models", "losses") for p in (src / pkg).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.relative_to(src)}: {n}" for n in names if n.startswith("fedseg.config")]
    assert not offenders
