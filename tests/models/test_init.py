from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

from fedseg.models.init import InitCheckpointError, load_init_checkpoint, read_init_checkpoint


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Conv2d(2, 2, 1))


def _numbered(model: nn.Module) -> dict[str, torch.Tensor]:
    """A state dict with hand-checkable values: entry i of tensor j is 100 j + i (int buffers: j)."""
    out = {}
    for j, (k, v) in enumerate(model.state_dict().items()):
        if v.is_floating_point():
            out[k] = (100 * j + torch.arange(v.numel(), dtype=v.dtype)).reshape(v.shape)
        else:
            out[k] = torch.full_like(v, j)
    return out


@pytest.mark.parametrize("wrap", [None, "state_dict", "model", "global_params"])
def test_loads_exactly_the_stored_weights(tmp_path: Path, wrap: str | None) -> None:
    want = _numbered(_model())
    path = tmp_path / "init.pt"
    torch.save(want if wrap is None else {wrap: want, "round": 3, "note": "x"}, path)
    model = _model(seed=1)
    digest = load_init_checkpoint(model, path)
    got = model.state_dict()
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert torch.equal(got[key], value), key
    assert len(digest) == 64 and digest == read_init_checkpoint(path)[1]


def test_missing_unexpected_and_misshaped_keys_are_named(tmp_path: Path) -> None:
    state = _numbered(_model())
    state.pop("0.weight")
    state["head.weight"] = torch.zeros(1)
    state["2.weight"] = torch.zeros(3, 2, 1, 1)
    path = tmp_path / "other.pt"
    torch.save(state, path)
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(InitCheckpointError) as err:
        load_init_checkpoint(model, path)
    msg = str(err.value)
    assert str(path) in msg
    assert "missing from the file: 0.weight" in msg
    assert "does not have: head.weight" in msg
    assert "2.weight (3, 2, 1, 1) vs model (2, 2, 1, 1)" in msg
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing half-loaded


def test_many_missing_keys_are_counted_not_all_listed(tmp_path: Path) -> None:
    model = nn.Sequential(*[nn.Linear(1, 1) for _ in range(8)])
    path = tmp_path / "empty_ish.pt"
    torch.save({"unrelated": torch.zeros(1)}, path)
    with pytest.raises(InitCheckpointError, match=r"16 model key\(s\) missing .*\(\+11 more\)"):
        load_init_checkpoint(model, path)


def test_missing_and_corrupt_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(InitCheckpointError, match=r"no such file .*nowhere\.pt"):
        load_init_checkpoint(_model(), tmp_path / "nowhere.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(InitCheckpointError, match=r"bad\.pt: not a readable torch checkpoint"):
        load_init_checkpoint(_model(), bad)
    good = tmp_path / "cut.pt"
    torch.save(_numbered(_model()), good)
    good.write_bytes(good.read_bytes()[:200])
    with pytest.raises(InitCheckpointError, match=r"cut\.pt: not a readable torch checkpoint"):
        load_init_checkpoint(_model(), good)


@pytest.mark.parametrize("content", [[torch.zeros(1)], {}, {"weights": [1, 2]}])
def test_files_without_a_state_dict_are_refused(tmp_path: Path, content: object) -> None:
    path = tmp_path / "odd.pt"
    torch.save(content, path)
    with pytest.raises(InitCheckpointError, match=r"odd\.pt: .*(not a state dict|empty dict)"):
        load_init_checkpoint(_model(), path)


class _Touch:
    """Unpickling this runs code: it creates ``marker`` (what a malicious checkpoint would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return Path.touch, (self.marker,)


def test_a_pickle_that_runs_code_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": _numbered(_model()), "payload": _Touch(marker)}, path)
    with pytest.raises(InitCheckpointError, match=r"evil\.pt: refused by torch.load\(weights_only=True\)"):
        load_init_checkpoint(_model(), path)
    assert not marker.exists()


@pytest.mark.skipif(importlib.util.find_spec("safetensors") is not None, reason="safetensors is installed")
def test_safetensors_without_the_package_says_so(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"\x00" * 16)
    with pytest.raises(InitCheckpointError, match="needs the 'safetensors' package"):
        load_init_checkpoint(_model(), path)


@pytest.mark.skipif(importlib.util.find_spec("safetensors") is None, reason="safetensors is not installed")
def test_safetensors_file_loads(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    want = _numbered(_model())
    path = tmp_path / "w.safetensors"
    save_file(want, str(path))
    model = _model(seed=1)
    load_init_checkpoint(model, path)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in want.items())
