"""Reference classifiers whose hidden layers serve as features: the small CNN for images and an
MLP for flat data, registered by architecture name in ``FEATURE_NETS``.

They are trained on the user's own labelled data (``vaekit.apps.feature_net``): pretrained ImageNet
networks cannot be downloaded everywhere, and their features say little about 28x28 grey digits.
Uses: the penultimate layer embeds samples and test data for the classifier Frechet distance and
precision/recall (``apps.sample_quality``); the hidden layers give the perceptual reconstruction
loss (``modules.perceptual``).

Every net has ``features`` (an ``nn.Sequential`` ending in the penultimate layer) and ``head``
(dropout + the class logits), so ``net.head(net.features(x))`` are the logits.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..registry import Registry

#: name -> class; each class takes (input_shape, num_classes, **arch_args).
FEATURE_NETS: Registry = Registry("feature network architecture")


class _FeatureNet(nn.Module):
    """Shared methods. Shapes: x (B, *input_shape); logits (B, K); embedding (B, F)."""

    features: nn.Sequential
    head: nn.Sequential
    arch_name = ""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        self.input_shape, self.num_classes = tuple(int(s) for s in input_shape), int(num_classes)
        self.arch_args: dict[str, Any] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (B, K)."""
        return self.head(self.features(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate layer's activations (B, F): the features sample quality is measured in."""
        return self.features(x)

    def layers(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The output of every ReLU of ``features``, input side first: [(B, C1, H1, W1), ...,
        (B, F)]; the perceptual loss compares these."""
        out = []
        for m in self.features:
            x = m(x)
            if isinstance(m, nn.ReLU):
                out.append(x)
        return out


@FEATURE_NETS.register("small-cnn")
class SmallCNN(_FeatureNet):
    """conv(32)-pool-conv(64)-pool-fc(128)-dropout-fc(K), 3x3 convolutions with padding 1 and 2x2
    max pooling; input (B, C, H, W) with H, W >= 4. ``embed`` is the 128-d fc layer."""

    arch_name = "small-cnn"

    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__(input_shape, num_classes)
        if len(self.input_shape) != 3 or min(self.input_shape[1:]) < 4:
            raise ValueError(f"small-cnn needs images (C, H, W) of at least 4x4, got shape {self.input_shape}")
        c, h, w = self.input_shape
        self.features = nn.Sequential(
            nn.Conv2d(c, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(64 * (h // 4) * (w // 4), 128), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(128, num_classes))


@FEATURE_NETS.register("mlp")
class FeatureMLP(_FeatureNet):
    """flatten-fc(h1)-ReLU-...-fc(hn)-ReLU-dropout-fc(K) for flat data (or images taken as
    vectors); ``embed`` is the last hidden layer. ``hidden`` defaults to (256, 128)."""

    arch_name = "mlp"

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, hidden: list[int] | None = None) -> None:
        super().__init__(input_shape, num_classes)
        hidden = [int(h) for h in (hidden or [256, 128])]
        self.arch_args = {"hidden": hidden}
        d = 1
        for s in self.input_shape:
            d *= s
        mods: list[nn.Module] = [nn.Flatten()]
        for h in hidden:
            mods += [nn.Linear(d, h), nn.ReLU()]
            d = h
        self.features = nn.Sequential(*mods)
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(d, num_classes))


def default_architecture(input_shape: tuple[int, ...]) -> str:
    """"small-cnn" for images (C, H, W) of at least 4x4 pixels, else "mlp"."""
    return "small-cnn" if len(input_shape) == 3 and min(input_shape[1:]) >= 4 else "mlp"


def build_feature_net(arch: str, input_shape: tuple[int, ...], num_classes: int,
                      arch_args: dict[str, Any] | None = None) -> _FeatureNet:
    """A new (untrained) net of the registered architecture ``arch``; UsageError for an unknown name."""
    return FEATURE_NETS.get(arch)(tuple(input_shape), int(num_classes), **(arch_args or {}))


def _register_onnx() -> None:
    from .onnx_graph import OnnxGraphNet  # a graph read from an .onnx file (apps.onnx_import)

    FEATURE_NETS.register(OnnxGraphNet.arch_name)(OnnxGraphNet)


_register_onnx()
