"""Named auxiliary outputs: captured with gradients, hooks always removed, clear errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedseg.models.taps import AuxOutputError, capture_outputs, check_captured, offered_outputs


class _Net(nn.Module):
    aux_outputs = {"hidden": "body.0", "tap": "tap"}

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
        self.tap = nn.Identity()  # exposes a tensor that is no module's output
        self.pair = nn.LSTM(4, 2, batch_first=True)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x)
        return self.head(self.tap(h * 2))


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def test_captured_outputs_carry_gradients_and_hooks_are_removed() -> None:
    net = _Net()
    x = torch.randn(5, 3)
    with capture_outputs(net, offered_outputs(net)) as captured:
        net(x)
        check_captured(captured, offered_outputs(net))
        captured["hidden"].sum().backward()
    expected = net.body[0](x)
    torch.testing.assert_close(captured["hidden"], expected)
    torch.testing.assert_close(captured["tap"], torch.relu(expected) * 2)
    assert net.body[0].weight.grad is not None and _hooks(net) == 0


def test_offered_names_are_checked() -> None:
    assert offered_outputs(_Net(), ["tap"]) == {"tap": "tap"}
    with pytest.raises(AuxOutputError, match="offers no auxiliary output 'hiden'.*Did you mean 'hidden'"):
        offered_outputs(_Net(), ["hiden"])
    assert offered_outputs(nn.Linear(2, 2)) == {}


def test_errors_name_the_output_and_leave_no_hook() -> None:
    net = _Net()
    with pytest.raises(AuxOutputError, match="no module 'body.9'.*Did you mean"):
        with capture_outputs(net, {"a": "body.0", "b": "body.9"}):
            pass
    assert _hooks(net) == 0
    with pytest.raises(AuxOutputError, match="'pair' returned a tuple"):
        with capture_outputs(net, {"p": "pair"}):
            net.pair(torch.randn(1, 2, 4))
    assert _hooks(net) == 0
    with pytest.raises(AuxOutputError, match="ran more than once"):
        with capture_outputs(net, {"h": "body.1"}):
            net(torch.randn(1, 3))
            net(torch.randn(1, 3))  # the caller did not clear between passes
    with capture_outputs(net, {"p": "pair"}) as captured:
        net(torch.randn(1, 3))
        with pytest.raises(AuxOutputError, match=r"'p' \(module\(s\) 'pair'\) were not computed"):
            check_captured(captured, {"p": "pair"})
    assert _hooks(net) == 0
