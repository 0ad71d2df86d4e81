from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from pydantic import ValidationError

from fedseg.config import FedBCSUNetConfig, RunConfig, config_from_dict
from fedseg.config.model import typed_model_config
from fedseg.models import MODELS, build_model
from fedseg.models.fedbcs_unet import FSR, FedBCSUNet, replace_tiny
from fedseg.models.taps import capture_outputs, offered_outputs
from fedseg.runtime.sim import run_inprocess

TINY = {"name": "fedbcs_unet", "features": [4, 8, 8, 8, 8], "fusion_channels": 6}


def _model(**over: object) -> FedBCSUNet:
    torch.manual_seed(0)
    model = build_model(FedBCSUNetConfig(**{**TINY, **over}), 2, 1, 2)  # type: ignore[arg-type]
    assert isinstance(model, FedBCSUNet)
    return model


def test_registered_with_its_config() -> None:
    assert "fedbcs_unet" in MODELS.names()
    cfg = typed_model_config({"name": "fedbcs_unet"})
    assert isinstance(cfg, FedBCSUNetConfig)
    assert cfg.features == [32, 64, 128, 256, 512] and cfg.fsr and not cfg.bn_running_stats
    # the common fields follow features: 4 poolings of 2, so images are padded to multiples of 16
    assert cfg.channels == cfg.features and cfg.strides == [2, 2, 2, 2]
    assert cfg.arguments() == {"features": [32, 64, 128, 256, 512], "fsr": True, "bn_running_stats": False,
                               "fusion_channels": 256}
    assert FedBCSUNetConfig.model_validate(cfg.model_dump(mode="json")) == cfg  # config.yaml round trip


@pytest.mark.parametrize("bad", [{"strides": [2, 2]}, {"channels": [8, 16]}, {"norm": "group"}, {"dropout": 0.1},
                                 {"num_res_units": 1},
                                 {"features": [8, 16]}, {"features": [8, 0, 16]}, {"heads": 2}])
def test_refuses_fields_it_does_not_take(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError) as err:
        typed_model_config({"name": "fedbcs_unet", **bad})
    assert next(iter(bad)) in str(err.value)


def test_common_fields_follow_an_assigned_features() -> None:
    cfg = FedBCSUNetConfig()
    cfg.features = [8, 16, 32]
    assert cfg.channels == [8, 16, 32] and cfg.strides == [2, 2]


def _fsr_reference(fsr: FSR, x: torch.Tensor) -> torch.Tensor:
    """The spec's formula on the full spectrum: Re(IFFT2(A e^{i phi})) * gamma + beta."""
    w = torch.softmax(fsr.h / 0.1, dim=0)

    def parts(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = torch.fft.fft2(t)
        amp = torch.sqrt(replace_tiny(f.real**2 + f.imag**2))
        return amp, torch.atan2(f.imag, replace_tiny(f.real))

    amp_x, phase = parts(x)
    amp_in, _ = parts(torch.nn.functional.instance_norm(x))
    y = torch.fft.ifft2(torch.polar(w[0] * amp_in + w[1] * amp_x, phase)).real
    return y * fsr.gamma.view(1, -1, 1, 1) + fsr.beta.view(1, -1, 1, 1)


def test_fsr_matches_the_full_spectrum_formula() -> None:
    torch.manual_seed(2)
    fsr = FSR(3)
    with torch.no_grad():
        fsr.h.copy_(torch.tensor([0.03, -0.01]))
        fsr.gamma.copy_(torch.tensor([1.0, 2.0, -0.5]))
        fsr.beta.copy_(torch.tensor([0.0, 0.3, -1.0]))
    x = torch.randn(2, 3, 12, 10).double()
    assert torch.allclose(fsr.double()(x), _fsr_reference(fsr.double(), x), atol=1e-10)


def test_fsr_identity_setting_returns_input_and_grad_reaches_h() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    fsr = FSR(3)
    with torch.no_grad():
        fsr.h.copy_(torch.tensor([-1e4, 0.0]))
    assert fsr.mixing_weights()[0] == 0
    assert torch.allclose(fsr(x), x, atol=1e-4, rtol=0)
    fresh = FSR(3)  # default h = 0: weights 0.5 / 0.5
    assert torch.equal(fresh.mixing_weights(), torch.tensor([0.5, 0.5]))
    out = fresh(x)
    assert not torch.allclose(out, x, atol=1e-2)  # the IN amplitude does change the map
    (out * torch.randn_like(out)).sum().backward()
    assert fresh.h.grad is not None and torch.isfinite(fresh.h.grad).all() and fresh.h.grad.abs().sum() > 0
    assert fresh.gamma.grad is not None and fresh.beta.grad is not None


def test_fsr_with_in_weight_one_takes_the_instance_normed_amplitude() -> None:
    """w_0 = 1 keeps x's phase with IN(x)'s amplitude: the DC term (the mean) vanishes, as in IN(x)."""
    torch.manual_seed(1)
    x = torch.randn(1, 2, 16, 16) * 3 + 5
    fsr = FSR(2)
    with torch.no_grad():
        fsr.h.copy_(torch.tensor([0.0, -1e4]))
    y = fsr(x)
    assert y.mean(dim=(-2, -1)).abs().max() < 1e-4
    spec = torch.fft.rfft2(y)
    expect = torch.fft.rfft2(torch.nn.functional.instance_norm(x))
    assert torch.allclose(spec.abs(), expect.abs().clamp_min(1e-5 ** 0.5), atol=1e-3)


def test_replace_tiny_replaces_small_magnitudes_by_plus_threshold() -> None:
    v = torch.tensor([0.0, -5e-6, 5e-6, -1e-5, 2e-5, -3.0])
    assert torch.equal(replace_tiny(v), torch.tensor([1e-5, 1e-5, 1e-5, -1e-5, 2e-5, -3.0]))


def test_feature_levels_have_the_spec_shapes_with_default_widths() -> None:
    torch.manual_seed(0)
    model = build_model(FedBCSUNetConfig(name="fedbcs_unet"), 2, 1, 2)
    assert isinstance(model, FedBCSUNet)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        out = model.forward_features(x)
        plain = model(x)
    assert out.logits.shape == (2, 2, 32, 32) and out.encoder.shape == (2, 768, 32, 32)
    assert out.decoder.shape == (2, 768, 8, 8)
    assert torch.equal(plain, out.logits)


def test_taps_compute_levels_only_when_hooked() -> None:
    model = _model()
    x = torch.randn(2, 1, 32, 32)
    calls = []
    for conv in [*model.encoder_fusions, *model.decoder_fusions]:
        conv.register_forward_hook(lambda *_: calls.append(1))
    logits = model(x)
    assert logits.shape == (2, 2, 32, 32) and not calls  # plain forward: no fusion work
    outputs = offered_outputs(model, ["encoder", "decoder"])
    with capture_outputs(model, outputs) as captured:
        tapped = model(x)
    assert captured["encoder"].shape == (2, 18, 32, 32) and captured["decoder"].shape == (2, 18, 8, 8)
    (captured["encoder"].sum() + captured["decoder"].sum()).backward()
    assert all(p.grad is not None for m in (model.encoder_fusions, model.decoder_fusions) for p in m.parameters())
    model.zero_grad()
    with torch.no_grad():
        ref = model.forward_features(x)
    assert torch.allclose(tapped, ref.logits) and torch.allclose(captured["encoder"], ref.encoder)
    assert torch.allclose(captured["decoder"], ref.decoder)


def test_decoder_level_is_fused_then_nearest_resized_to_dec3() -> None:
    model = _model()
    with torch.no_grad():
        _, encs, decs = model._stages(torch.randn(1, 1, 32, 32))
        d = model.decoder_level(decs)
        dec1 = decs[-1]  # full resolution, fused with dec4 then subsampled by 4 (nearest: every 4th pixel)
        up = torch.nn.functional.interpolate(decs[0], size=dec1.shape[-2:], mode="nearest")
        fused = model.decoder_fusions[-1](torch.cat((dec1, up), dim=1))
        assert torch.allclose(d[:, -6:], fused[..., ::4, ::4])
        e = model.encoder_level(encs)
        assert torch.allclose(e[:, :6], model.encoder_fusions[0](torch.cat(
            (encs[0], torch.nn.functional.interpolate(encs[-1], size=(32, 32), mode="nearest")), dim=1)))


def test_fsr_switch_and_placement() -> None:
    with_fsr, without = _model(), _model(fsr=False)
    assert [type(m).__name__ for m in with_fsr.fsr] == ["Identity", "FSR", "FSR", "FSR"]  # enc2, enc3, enc4
    assert not any(isinstance(m, FSR) for m in without.modules())
    assert not any(".h" in k or "gamma" in k for k in without.state_dict())
    assert set(without.state_dict()) < set(with_fsr.state_dict())


def test_bn_running_stats_switch() -> None:
    bns = lambda m: [b for b in m.modules() if isinstance(b, torch.nn.BatchNorm2d)]  # noqa: E731
    default, running = bns(_model()), bns(_model(bn_running_stats=True))
    assert default and all(not b.track_running_stats and not b.affine for b in default)
    assert running and all(b.track_running_stats and not b.affine for b in running)


@pytest.mark.parametrize("in_channels", [1, 3])
def test_builds_from_a_run_config_and_trains(in_channels: int) -> None:
    cfg = RunConfig.model_validate({"model": TINY})
    assert isinstance(cfg.model, FedBCSUNetConfig)
    torch.manual_seed(0)
    model = build_model(cfg.model, 2, in_channels, 3)
    logits = model(torch.randn(2, in_channels, 32, 48))
    assert logits.shape == (2, 3, 32, 48)
    logits.logsumexp(dim=1).mean().backward()
    trained = [n for n, p in model.named_parameters() if p.grad is not None]
    assert not any("fusions" in n for n in trained)  # fusion convs exist but cost nothing in plain training
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert any(n.endswith(".h") for n in trained)


def test_refuses_3d() -> None:
    with pytest.raises(ValueError, match="2D only"):
        build_model(FedBCSUNetConfig(**TINY), 3, 1, 2)  # type: ignore[arg-type]


def test_a_tiny_fedavg_run_trains_and_evaluates(tmp_path: Path) -> None:
    """The whole runtime (image-size checks, padding at inference from the derived strides) takes it."""
    cfg = tiny_config(rounds=1, model={"name": "fedbcs_unet", "features": [4, 8, 8], "fusion_channels": 4},
                      eval={"batch_size": 2})
    run_inprocess(config_from_dict(cfg), tmp_path / "run", write_report=False)
    assert (tmp_path / "run").is_dir()
