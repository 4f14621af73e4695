"""Small CPU convolutions take the direct kernel: the bits of PyTorch's own non-oneDNN path, large ones unchanged."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from library.lora.module import LoRAHost, LoRAModule
from library.models import build_tiny_bundle
from library.training.conv_path import SMALL_CONV_MAX_MACS, conv_macs, install_small_conv_path

pytestmark = pytest.mark.filterwarnings("ignore:TF32 acceleration:UserWarning")


def _conv(cin: int, cout: int, k: int, stride: int = 1, **kwargs) -> nn.Conv2d:
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, k, stride, k // 2, **kwargs)
    conv.weight.requires_grad_(False)  # frozen base weights, as in training
    conv.bias.requires_grad_(False)
    return conv


def _run(conv: nn.Module, shape: tuple[int, ...], dtype: torch.dtype = torch.float32):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=dtype).requires_grad_()
    y = conv(x)
    y.backward(torch.linspace(-1, 1, y.numel(), dtype=dtype).view_as(y))
    return y, x.grad


@pytest.mark.parametrize("k,stride", [(3, 1), (3, 2), (1, 1)])
def test_small_convolution_equals_pytorch_without_onednn(k, stride):
    conv = _conv(32, 32, k, stride)
    with torch.backends.mkldnn.flags(enabled=False):
        want_y, want_grad = _run(conv, (2, 32, 16, 16))
    assert install_small_conv_path(conv) == 1
    y, grad = _run(conv, (2, 32, 16, 16))
    assert type(y.grad_fn).__name__ == "SlowConv2DBackward0"  # the direct kernel, forward and backward
    assert torch.equal(y, want_y) and torch.equal(grad, want_grad)


def test_wide_convolutions_on_small_grids_take_the_direct_path():
    wide = _conv(512, 512, 3)  # SD1.5's low-resolution levels: many channels, 8x8 or fewer positions
    x = torch.empty(1, 512, 8, 8)
    assert conv_macs(x, wide.weight, (1, 1)) > SMALL_CONV_MAX_MACS
    with torch.backends.mkldnn.flags(enabled=False):
        want, _ = _run(wide, (1, 512, 8, 8))
    install_small_conv_path(wide)
    got, _ = _run(wide, (1, 512, 8, 8))
    assert type(got.grad_fn).__name__ == "SlowConv2DBackward0" and torch.equal(got, want)
    y, _ = _run(wide, (1, 512, 16, 16))  # 256 positions and 604M multiply-adds: oneDNN's
    assert type(y.grad_fn).__name__ == "ConvolutionBackward0"


def test_large_half_precision_and_grouped_convolutions_keep_pytorchs_choice():
    big = _conv(320, 320, 3)
    x = torch.empty(1, 320, 32, 32)
    assert conv_macs(x, big.weight, (1, 1)) > SMALL_CONV_MAX_MACS
    grouped, bf16 = _conv(32, 32, 3, groups=4), _conv(32, 32, 3).to(torch.bfloat16)
    plain = [_run(c, s, d)[0] for c, s, d in ((grouped, (2, 32, 8, 8), torch.float32),
                                              (bf16, (2, 32, 8, 8), torch.bfloat16))]
    install_small_conv_path(big), install_small_conv_path(grouped), install_small_conv_path(bf16)
    routed = [_run(grouped, (2, 32, 8, 8))[0], _run(bf16, (2, 32, 8, 8), torch.bfloat16)[0]]
    assert all(type(y.grad_fn).__name__ == "ConvolutionBackward0" for y in routed)
    assert all(torch.equal(a, b) for a, b in zip(plain, routed))
    y, _ = _run(big, (1, 320, 32, 32))
    assert type(y.grad_fn).__name__ == "ConvolutionBackward0"


def test_reflect_padding_still_pads():
    conv = _conv(8, 8, 3, padding_mode="reflect")
    want, _ = _run(conv, (1, 8, 6, 6))
    install_small_conv_path(conv)
    got, _ = _run(conv, (1, 8, 6, 6))
    assert torch.equal(got, want)


def test_lora_host_folded_conv_takes_the_direct_path_and_trains_the_adapter():
    base = _conv(32, 32, 1)
    install_small_conv_path(base)
    host = LoRAHost(base)
    adapter = LoRAModule("lora_unet_proj_in", base, rank=4, alpha=1.0)
    nn.init.normal_(adapter.lora_up.weight)
    host.adapters.append(adapter)
    y, _ = _run(host, (2, 32, 16, 16))
    assert type(y.grad_fn).__name__ == "SlowConv2DBackward0"
    assert adapter.lora_down.weight.grad is not None and adapter.lora_down.weight.grad.abs().sum() > 0
    with torch.no_grad():
        x = torch.randn(2, 32, 16, 16, generator=torch.Generator().manual_seed(1))
        want = F.conv2d(x, base.weight, base.bias) + adapter.delta(x)
        assert (host(x) - want).abs().max() < 1e-5


def test_installed_on_every_plain_tiny_unet_conv_once():
    unet = build_tiny_bundle(0).unet
    n_conv = sum(type(m) is nn.Conv2d for m in unet.modules())
    g = torch.Generator().manual_seed(0)
    x, cond, t = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 77, 32, generator=g), torch.tensor([10, 900])
    with torch.no_grad():
        before = unet(x, t, cond).sample
        assert install_small_conv_path(unet) == n_conv > 0
        assert install_small_conv_path(unet) == 0  # already installed
        after = unet(x, t, cond).sample
    assert (before - after).abs().max() < 1e-4
