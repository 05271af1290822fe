"""Encoder and decoder networks: MLP and convolutional, for any data shape.

Encoders map x (B, *shape) to (mu, logvar), each (B, latent_dim).
Decoders map z (B, latent_dim) to raw likelihood parameters (B, P, *shape).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..errors import UsageError
from ..functional.amp import widen
from ..registry import Registry

ACTIVATIONS = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "leaky_relu": nn.LeakyReLU,
    "softplus": nn.Softplus,
}

ENCODERS: Registry = Registry("architecture")
DECODERS: Registry = Registry("architecture")


def activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise UsageError(f"unknown activation {name!r}; valid: {', '.join(sorted(ACTIVATIONS))}")
    return ACTIVATIONS[name]()


def mlp(sizes: list[int], act: str, final_act: bool = False) -> nn.Sequential:
    """Linear layers through ``sizes`` with ``act`` between them (and after the last if asked)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2 or final_act:
            layers.append(activation(act))
    return nn.Sequential(*layers)


@ENCODERS.register("mlp")
class MLPEncoder(nn.Module):
    """Flatten, hidden layers, then one linear head giving [mu, logvar].

    ``cond_dim`` > 0 (conditional models): a condition vector c (B, cond_dim) is concatenated to
    the flattened x before the first layer; ``forward(x, c)`` then needs it.
    """

    def __init__(self, shape: tuple[int, ...], latent_dim: int, hidden: list[int], act: str = "relu",
                 cond_dim: int = 0) -> None:
        super().__init__()
        self.net = mlp([math.prod(shape) + cond_dim, *hidden, 2 * latent_dim], act)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        h = x.reshape(x.shape[0], -1)
        if c is not None:
            h = torch.cat([h, c.to(h.dtype)], dim=1)
        h = widen(self.net(h))  # (B, 2D); float32 under mixed precision: q's noise, z and log q in full precision
        mu, logvar = h.chunk(2, dim=-1)
        return mu, logvar


@DECODERS.register("mlp")
class MLPDecoder(nn.Module):
    """z -> hidden layers (in reverse order) -> P * prod(shape) outputs, viewed as (B, P, *shape)."""

    def __init__(self, shape: tuple[int, ...], latent_dim: int, hidden: list[int], act: str, num_params: int) -> None:
        super().__init__()
        self.shape, self.num_params = tuple(shape), num_params
        self.net = mlp([latent_dim, *reversed(hidden), num_params * math.prod(shape)], act)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(z.shape[0], self.num_params, *self.shape)

    @torch.no_grad()
    def set_output_bias(self, params: torch.Tensor) -> None:
        """Make the output equal ``params`` (P, *shape) when the last hidden layer is silent."""
        self.net[-1].bias.copy_(params.reshape(-1))


def conv_plan(shape: tuple[int, ...], hidden: list[int] | None) -> tuple[list[int], list[tuple[int, int]]]:
    """Channels per stride-2 conv layer and the spatial size before each, for an image (C, H, W).

    With no ``hidden``, downsample until the smaller side is <= 4, channels 32, 64, ... up to 256.
    """
    if len(shape) != 3:
        raise UsageError(f"--arch conv needs image data (C, H, W); this data has shape {tuple(shape)}: use --arch mlp")
    _, h, w = shape
    if min(h, w) < 8:
        raise UsageError(f"--arch conv needs images of at least 8x8, got {h}x{w}: use --arch mlp or --image-size")
    if hidden is None:
        n, s = 0, min(h, w)
        while s > 4:
            s, n = (s + 1) // 2, n + 1
        hidden = [min(32 * 2**i, 256) for i in range(n)]
    sizes = []
    for _ in hidden:
        sizes.append((h, w))
        h, w = (h + 1) // 2, (w + 1) // 2
    sizes.append((h, w))
    return list(hidden), sizes


def conv_stack(shape: tuple[int, ...], hidden: list[int] | None, act: str) -> tuple[nn.Sequential, int]:
    """Stride-2 3x3 convolutions with activations (``conv_plan``): (B, *shape) -> (B, C, h, w);
    returns (net, C * h * w), the number of features once flattened."""
    channels, sizes = conv_plan(shape, hidden)
    layers: list[nn.Module] = []
    c_in = shape[0]
    for c in channels:
        layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), activation(act)]
        c_in = c
    h, w = sizes[-1]
    return nn.Sequential(*layers), c_in * h * w


@ENCODERS.register("conv")
class ConvEncoder(nn.Module):
    """Stride-2 3x3 convolutions, then a linear head giving [mu, logvar].

    ``cond_dim`` > 0 (conditional models): a condition vector c (B, cond_dim) is concatenated to
    the flattened conv features before the head; ``forward(x, c)`` then needs it.
    """

    def __init__(self, shape: tuple[int, ...], latent_dim: int, hidden: list[int] | None, act: str = "relu",
                 cond_dim: int = 0) -> None:
        super().__init__()
        self.conv, features = conv_stack(shape, hidden, act)
        self.head = nn.Linear(features + cond_dim, 2 * latent_dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.conv(x).flatten(1)
        if c is not None:
            h = torch.cat([h, c.to(h.dtype)], dim=1)
        mu, logvar = widen(self.head(h)).chunk(2, dim=-1)  # (float32 under mixed precision, as MLPEncoder's)
        return mu, logvar


@DECODERS.register("conv")
class ConvDecoder(nn.Module):
    """Linear to the smallest feature map, transposed convolutions back to exactly (H, W)."""

    def __init__(self, shape: tuple[int, ...], latent_dim: int, hidden: list[int] | None, act: str, num_params: int) -> None:
        super().__init__()
        channels, sizes = conv_plan(shape, hidden)
        self.shape, self.num_params = tuple(shape), num_params
        self.start = (channels[-1], *sizes[-1])
        self.fc = nn.Sequential(nn.Linear(latent_dim, math.prod(self.start)), activation(act))
        layers: list[nn.Module] = []
        outs = list(reversed(channels[:-1])) + [channels[0]]
        c_in = channels[-1]
        for c_out, (th, tw), (sh, sw) in zip(outs, reversed(sizes[:-1]), reversed(sizes[1:])):
            # kernel 3, stride 2, padding 1: out = 2 * in - 1 + output_padding, so the padding
            # picks the exact target size (odd or even) recorded on the way down.
            pad = (th - (2 * sh - 1), tw - (2 * sw - 1))
            layers += [nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=pad), activation(act)]
            c_in = c_out
        self.deconv = nn.Sequential(*layers)
        self.out = nn.Conv2d(c_in, num_params * shape[0], 3, padding=1)

    @torch.no_grad()
    def set_output_bias(self, params: torch.Tensor) -> None:
        """Per-channel bias from ``params`` (P, C, H, W), averaged over the image."""
        self.out.bias.copy_(params.mean(dim=(-2, -1)).reshape(-1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z).view(z.shape[0], *self.start)
        h = self.out(self.deconv(h))  # (B, P*C, H, W)
        return h.view(z.shape[0], self.num_params, *self.shape)
