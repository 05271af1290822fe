"""The perceptual (feature-space) reconstruction term of DFC-VAE (Hou et al. 2017).

x and the decoder's mean x_hat go through a frozen feature network; the term is the squared
distance between their hidden activations at several layers. It is added to the pixel
log-likelihood's loss (``models.vae.VAE.loss``), so the ELBO a run reports stays the true one.

The feature net's weights are buffers here, not parameters: the optimizer (built from
``model.parameters()``) never sees them, no gradient is kept for them, and they are saved with the
model's state dict, so a run needs nothing but its own directory to be loaded again.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from .feature_nets import build_feature_net

#: --perceptual-weight default (``config.TrainConfig.perceptual_weight``). The term sums half the
#: squared difference over every activation of the net's ReLU layers (~38,000 values on 28x28
#: images). With the reference CNN of Fashion-MNIST, a 3x3 box blur of the test images costs ~200 in
#: this term against ~35 nats of Bernoulli log-likelihood, and the mean image ~900 against ~200 nats:
#: at weight 1 the feature term outweighs the pixels several times over, and on MNIST its samples
#: carried a grid-like texture (sample FD 580 at 4 minutes against 295 at 0.1; on Fashion-MNIST 0.1
#: and 1 tied, 138 and 136). At 0.1 it still sharpens: the 30-minute Fashion-MNIST run beat the pixel
#: VAE's sample FD (BENCHMARKS.md, "Sharper samples").
DEFAULT_WEIGHT = 0.1


def freeze_as_buffers(net: nn.Module) -> nn.Module:
    """Turn every parameter of ``net`` into a buffer of the same name (no grad): frozen for good."""
    for m in net.modules():
        for name, p in list(m._parameters.items()):
            del m._parameters[name]
            if p is not None:
                m.register_buffer(name, p.detach().clone())
    return net.eval()


class PerceptualLoss(nn.Module):
    """weight * sum_l 0.5 * ||phi_l(x) - phi_l(x_hat)||^2 per example, phi_l the output of the l-th
    ReLU of the frozen feature net (``modules.feature_nets``); shapes x, x_hat (B, *input_shape) -> (B,).

    Built from ``spec`` = {"weight": w, "net": the feature net's metadata ("architecture",
    "input_shape", "num_classes", "arch_args")}; the weights come with the model's state dict.
    """

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__()
        meta = spec["net"]
        self.weight = float(spec.get("weight", DEFAULT_WEIGHT))
        self.net = freeze_as_buffers(build_feature_net(meta["architecture"], tuple(meta["input_shape"]),
                                                       meta["num_classes"], meta.get("arch_args")))

    def train(self, mode: bool = True) -> "PerceptualLoss":
        super().train(mode)
        self.net.eval()  # frozen: dropout stays off whatever the model's mode
        return self

    def forward(self, x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = self.net.layers(x)
        out = self.net.layers(x_hat)  # gradient flows to x_hat (the decoder), never into the net
        term = torch.zeros(len(x), device=x.device, dtype=x_hat.dtype)
        for a, b in zip(out, target):
            term = term + 0.5 * (a - b).pow(2).flatten(1).sum(1)
        return self.weight * term
