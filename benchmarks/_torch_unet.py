"""The xfusion U-Net re-built in PyTorch (CPU), with weights copied from the JAX parameters.

Same architecture as :class:`xfusion.models.unet.UNet`: per level two 3×3 convolutions with
BatchNorm and ReLU then 2×2 max-pooling; a centre block; up-sampling as a 1×1 convolution to
``4·C`` channels followed by ``pixel_shuffle``; concatenation with the skip connection; a 1×1
head. Used by the ``unet`` benchmark as the competitor's sliding-window inference.

Channel order of the up-sampling: xfusion's ``depth_to_space`` reads channel ``(dy·2 + dx)·C + c``
(DCR), torch's ``pixel_shuffle`` reads ``c·4 + dy·2 + dx`` (CRD); the 1×1 kernels are permuted
when copied so the two networks compute the same function.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional


class ConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(cout, eps=1e-5)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(cout, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = functional.relu(self.bn1(self.conv1(x)))
        return functional.relu(self.bn2(self.conv2(x)))


class TorchUNet(nn.Module):
    """U-Net of ``widths`` levels and a ``center`` block, NCHW, regression head (linear)."""

    def __init__(
        self, in_channels: int, out_channels: int, widths: Sequence[int], center: int
    ) -> None:
        super().__init__()
        self.encoders = nn.ModuleList()
        cin = in_channels
        for w in widths:
            self.encoders.append(ConvBlock(cin, w))
            cin = w
        self.center = ConvBlock(cin, center)
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        cin = center
        for w in reversed(widths):
            self.ups.append(nn.Conv2d(cin, 4 * w, 1))
            self.decoders.append(ConvBlock(2 * w, w))
            cin = w
        self.head = nn.Conv2d(cin, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.encoders:
            x = block(x)
            skips.append(x)
            x = functional.max_pool2d(x, 2)
        x = self.center(x)
        for up, block, skip in zip(self.ups, self.decoders, reversed(skips), strict=True):
            x = functional.pixel_shuffle(up(x), 2)
            x = block(torch.cat([x, skip], dim=1))
        return self.head(x)


def _conv(module: nn.Conv2d, p: Mapping[str, Any], *, dcr_to_crd: bool = False) -> None:
    kernel = np.asarray(p["kernel"], np.float32)  # (kh, kw, cin, cout)
    bias = np.asarray(p["bias"], np.float32)
    if dcr_to_crd:
        cout = kernel.shape[-1] // 4
        # torch channel c·4 + k  <-  JAX channel k·C + c
        order = (np.arange(4)[None, :] * cout + np.arange(cout)[:, None]).ravel()
        kernel, bias = kernel[..., order], bias[order]
    module.weight.data = torch.from_numpy(np.array(kernel.transpose(3, 2, 0, 1), order="C"))
    module.bias.data = torch.from_numpy(bias.copy())


def _bn(module: nn.BatchNorm2d, p: Mapping[str, Any]) -> None:
    module.weight.data = torch.from_numpy(np.asarray(p["scale"], np.float32).copy())
    module.bias.data = torch.from_numpy(np.asarray(p["bias"], np.float32).copy())
    module.running_mean.data = torch.from_numpy(np.asarray(p["mean"], np.float32).copy())
    module.running_var.data = torch.from_numpy(np.asarray(p["var"], np.float32).copy())


def _block(block: ConvBlock, p: Mapping[str, Any]) -> None:
    _conv(block.conv1, p["conv1"])
    _bn(block.bn1, p["bn1"])
    _conv(block.conv2, p["conv2"])
    _bn(block.bn2, p["bn2"])


def from_jax(architecture: Mapping[str, Any], params: Mapping[str, Any]) -> TorchUNet:
    """Build a :class:`TorchUNet` in eval mode holding the JAX U-Net's ``params``."""
    widths = [int(w) for w in architecture["widths"]]
    net = TorchUNet(
        int(architecture["in_channels"]),
        int(architecture.get("out_channels", 1)),
        widths,
        int(architecture["center"]),
    )
    for i, block in enumerate(net.encoders):
        _block(block, params["encoders"][str(i)])
    _block(net.center, params["center"])
    for i, (up, block) in enumerate(zip(net.ups, net.decoders, strict=True)):
        _conv(up, params["ups"][str(i)], dcr_to_crd=True)
        _block(block, params["decoders"][str(i)])
    _conv(net.head, params["head"])
    return net.eval()


def sliding_window(
    net: TorchUNet,
    padded: np.ndarray,
    *,
    tile: int,
    halo: int,
    mean: np.ndarray,
    std: np.ndarray,
) -> np.ndarray:
    """Predict ``(band, H + 2·halo, W + 2·halo)`` (already padded) tile by tile; ``(out, H, W)``.

    Every ``tile × tile`` output is predicted from a ``(tile + 2·halo)²`` window; inputs are
    normalised with ``mean``/``std`` and NaN set to 0, as xfusion's ``apply_tiles`` does.
    """
    hh, ww = padded.shape[-2:]
    h, w = hh - 2 * halo, ww - 2 * halo
    size = tile + 2 * halo
    out = None
    m = torch.from_numpy(np.asarray(mean, np.float32)[None, :, None, None])
    s = torch.from_numpy(np.asarray(std, np.float32)[None, :, None, None])
    with torch.inference_mode():
        for y in range(0, h, tile):
            for x in range(0, w, tile):
                window = torch.from_numpy(padded[None, :, y : y + size, x : x + size])
                window = torch.nan_to_num((window - m) / s, nan=0.0)
                pred = net(window)[0, :, halo : halo + tile, halo : halo + tile].numpy()
                if out is None:
                    out = np.empty((pred.shape[0], h, w), np.float32)
                out[:, y : y + tile, x : x + tile] = pred
    return out


class _Prepared(nn.Module):
    """The network behind PyTorch's best CPU settings: channels-last input, optional bf16."""

    def __init__(self, net: nn.Module, *, bf16: bool) -> None:
        super().__init__()
        self.net = net
        self.bf16 = bf16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        if self.bf16:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return self.net(x).float()
        return self.net(x)


def best_cpu_settings(
    net: TorchUNet, sample: np.ndarray, *, bf16: bool = False
) -> tuple[Any, dict[str, Any]]:
    """Give the PyTorch network its best CPU settings; returns ``(callable, settings used)``.

    channels-last memory format (oneDNN's preferred layout for convolutions), eval mode under
    ``torch.inference_mode`` (in :func:`sliding_window`), oneDNN enabled, bf16 autocast when
    ``bf16``, and ``torch.compile`` (inductor, with weight freezing, which folds BatchNorm into
    the convolutions and pre-packs weights for oneDNN) where it compiles on this machine; where
    it does not, the eager network, with the reason recorded.
    """
    settings: dict[str, Any] = {
        "threads": torch.get_num_threads(),
        "channels_last": True,
        "inference_mode": True,
        "onednn_available": bool(torch.backends.mkldnn.is_available()),
        "bf16": "autocast" if bf16 else "no",
    }
    torch.backends.mkldnn.enabled = True
    net = net.eval().to(memory_format=torch.channels_last)
    prepared = _Prepared(net, bf16=bf16).eval()
    x = torch.from_numpy(np.ascontiguousarray(sample, np.float32))
    try:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        compiled = torch.compile(prepared)
        with torch.inference_mode():
            compiled(x)  # compiles here; fails here if no compiler is available
        settings["torch_compile"] = "inductor, freezing=True"
        return compiled, settings
    except Exception as err:  # any compile failure: the eager network, and why
        settings["torch_compile"] = f"not used: {type(err).__name__}: {str(err)[:200]}"
        return prepared, settings
