"""The semi-supervised VAE M2 (Kingma, Rezende, Mohamed and Welling 2014).

Generative model: p(y) uniform over K classes, p(z) = N(0, I), p(x|y,z) through a likelihood.
Inference: a classifier q(y|x) and an encoder q(z|x,y). A batch may mix labelled examples (y >= 0)
and unlabelled ones (y == -1, ``data.batch.UNLABELLED``):

- labelled:   -L(x,y) = E_q(z|x,y)[-log p(x|y,z)] + KL(q(z|x,y) || p(z)) - log p(y)
- unlabelled: -U(x)   = sum_y q(y|x) (-L(x,y)) - H(q(y|x))   (y summed out, every class enumerated)

plus the classification term on the labelled examples. Kingma et al. add alpha * E_labelled[-log
q(y|x)] to the bound summed over the whole data set (N examples) with alpha = 0.1 * N; per example
that is ``config.alpha`` = 0.1 times the mean cross-entropy of the labelled examples. Here each
training batch stands in for the data set:

    loss = mean over the batch of -bound  +  alpha * mean over its labelled examples of -log q(y|x)

so ``--alpha`` is the weight of one unit of mean cross-entropy against one nat of the per-example
bound, whatever the batch size or the number of labels (in expectation over an epoch this is
Kingma et al.'s objective with their alpha = ``--alpha`` * N). Their 0.1 learns slowly in short
runs: MNIST with 100 labels (hidden 500 softplus, 50 latent dims, labelled share 0.1), validation
accuracy after 3 epochs 68.4% / 75.6% / 78.6% / 77.9% for alpha 0.1 / 1 / 10 / 50, after 15 epochs
83.2% / 84.0% / 84.6% for alpha 1 / 10 / 50; the default is 1. The trainer puts labelled examples in
every batch (``labelled_per_batch``: a share of the batch, default ``LABELLED_SHARE``, or
``config.extra["labelled_per_batch"]``), cycling the few labels through each epoch.

The loss reports "elbo", a bound on log p(x) per example: U(x) for unlabelled examples and
L(x,y) <= log p(x,y) <= log p(x) for labelled ones (each decoded at its own class only, K times
cheaper than enumerating), with "recon" and "kl" its two parts (y's KL, or -log p(y), in "kl");
``elbo_terms`` (what ``metrics.evaluate`` reports) gives U(x) for every example, labels ignored.
Validation also logs "accuracy" (of q(y|x) on the labelled examples) and "ce" (their mean
-log q(y|x)). ``selection_metric`` makes the trainer
keep the weights with the best validation accuracy. ``log_weights`` sums y out exactly.

The first layers that see y are split into an x part, computed once per example, and a per-class
vector (``nn.Embedding``: a one-hot times a weight matrix), so enumerating the K classes costs K
passes through the layers after the first one of the encoder, not K passes over x.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.distributions import Distribution, constraints

from ..data.batch import UNLABELLED
from ..data.spec import DataSpec
from ..errors import UsageError
from ..functional.kl import gaussian_log_prob_at_eps
from ..modules.blocks import DECODERS, activation, conv_stack, mlp
from ..modules.likelihoods import LIKELIHOODS
from ..modules.priors import PRIORS
from .base import MODELS, BaseModel, ModelConfig

#: Default share of each training batch taken by labelled examples (cycled through the epoch).
#: digits, 100 labels, 30 epochs: 0.3 against 0.1 raised the test accuracy from 91.7% to 92.8% and
#: the share of class-k samples that the model's classifier labels k from 36% to 85%.
LABELLED_SHARE = 0.3
#: Width of the dense layer after the conv features (arch "conv"), where y joins x or z.
CONV_DENSE = 256


def conv_trunk(shape: tuple[int, ...], hidden: list[int] | None, act: str) -> tuple[nn.Sequential, int]:
    """Stride-2 3x3 convolutions (``blocks.conv_stack``) then flatten: (B, *shape) -> (B, F); returns (net, F)."""
    convs, features = conv_stack(shape, hidden, act)
    return nn.Sequential(*convs, nn.Flatten()), features


class ClassMixture(Distribution):
    """sum_y p(y) p(x|y,z) with p(y) uniform: the decoder with the class summed out.

    ``components`` has batch shape (K * B,), class-major (row k * B + b is class k of example b);
    the mixture has batch shape (B,) and the components' event shape.
    """

    arg_constraints: dict = {}
    support = constraints.real

    def __init__(self, components: Distribution, num_classes: int) -> None:
        self.components, self.k = components, num_classes
        b = components.batch_shape[0] // num_classes
        super().__init__(torch.Size([b]), components.event_shape, validate_args=False)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        v = value.expand(self.k, *value.shape).reshape(-1, *value.shape[1:])
        lp = self.components.log_prob(v).view(self.k, -1)
        return torch.logsumexp(lp, 0) - math.log(self.k)

    @property
    def mean(self) -> torch.Tensor:
        return self.components.mean.view(self.k, -1, *self.event_shape).mean(0)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        s = self.components.sample(sample_shape).view(*sample_shape, self.k, -1, *self.event_shape)
        pick = torch.randint(self.k, (*sample_shape, 1, s.shape[len(sample_shape) + 1]), device=s.device)
        pick = pick.view(*pick.shape, *([1] * len(self.event_shape))).expand(*pick.shape, *self.event_shape)
        return s.gather(len(sample_shape), pick).squeeze(len(sample_shape))


@MODELS.register("m2")
class M2(BaseModel):
    """Classifier q(y|x), encoder q(z|x,y), decoder p(x|y,z), p(z) = N(0, I), p(y) uniform.

    Shapes: x (B, *spec.shape); y (B,) int64 with -1 for unlabelled; z (B, D), D = latent_dim;
    K = spec.num_classes. MLP: the classifier is x -> hidden... -> K; the encoder's first layer
    takes [x, onehot(y)], the decoder's first layer [z, onehot(y)], both mirroring ``hidden``.
    Conv: conv features of x (``hidden`` = channels) then a dense layer of ``CONV_DENSE`` units.
    """

    batch_fields = ("y",)
    selection_metric = "val_accuracy"

    def __init__(self, config: ModelConfig, spec: DataSpec) -> None:
        super().__init__(config, spec)
        if not spec.num_classes or spec.num_classes < 2:
            raise UsageError("--model m2 needs labelled data with at least two classes (a class-per-subfolder "
                             "folder, a CSV --label-column, an .npz with y, or a named dataset); "
                             "use --labels-per-class N to hide most of them")
        if config.free_bits > 0:
            raise UsageError("--free-bits is not offered by --model m2; drop it (use --kl-warmup instead)")
        if config.alpha < 0:
            raise UsageError(f"--alpha must be >= 0, got {config.alpha}")
        share = float(config.extra.get("labelled_per_batch", LABELLED_SHARE))
        if not share > 0:
            raise UsageError(f"labelled_per_batch must be positive (a share below 1 or a count), got {share}")
        self.labelled_per_batch = share
        self.num_classes = k = int(spec.num_classes)
        self.latent_dim = d = config.latent_dim
        act = config.activation
        self.likelihood = LIKELIHOODS.get(config.likelihood)(**config.extra.get("likelihood_args", {}))
        self.prior = PRIORS.get(config.prior)(d)
        if config.arch == "mlp":
            hidden = [int(h) for h in config.hidden]
            dim = spec.dim
            self.classifier = nn.Sequential(nn.Flatten(), mlp([dim, *hidden, k], act))
            self.enc_x = nn.Sequential(nn.Flatten(), nn.Linear(dim, hidden[0]))
            self.enc_rest = nn.Sequential(activation(act), mlp([*hidden, 2 * d], act))
            width, rest = hidden[-1], hidden[:-1]
        elif config.arch == "conv":
            trunk, feat = conv_trunk(spec.shape, config.hidden, act)
            self.classifier = nn.Sequential(trunk, nn.Linear(feat, k))
            trunk, feat = conv_trunk(spec.shape, config.hidden, act)
            self.enc_x = nn.Sequential(trunk, nn.Linear(feat, CONV_DENSE))
            self.enc_rest = nn.Sequential(activation(act), nn.Linear(CONV_DENSE, 2 * d))
            width, rest = CONV_DENSE, config.hidden
        else:
            DECODERS.get(config.arch)  # the registry's "unknown architecture ... valid: ..." line
            raise UsageError(f"--model m2 offers --arch mlp or conv, not {config.arch!r}")
        self.enc_y = nn.Embedding(k, self.enc_x[-1].out_features)  # y's columns of the first layer
        self.dec_z = nn.Linear(d, width)
        self.dec_y = nn.Embedding(k, width)
        self.dec_act = activation(act)
        self.decoder = DECODERS.get(config.arch)(spec.shape, width, rest, act, self.likelihood.num_params)
        # y's columns start as those of one linear layer over [x, onehot(y)] would, not N(0, 1)
        for emb, fan_in in ((self.enc_y, self.enc_x[-1].in_features + k), (self.dec_y, d + k)):
            nn.init.uniform_(emb.weight, -1.0 / math.sqrt(fan_in), 1.0 / math.sqrt(fan_in))

    def check_data(self, train: Any) -> None:
        """Refuse training data without a single labelled example (``train``: the training Split)."""
        if train.y is None or not bool((train.y != UNLABELLED).any()):
            raise UsageError("--model m2 needs some labelled training examples, and this data has none; "
                             "give data with labels (and --labels-per-class N to keep N per class)")

    # -- the pieces -----------------------------------------------------------------------------
    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """q(y|x): class probabilities (B, K)."""
        return torch.softmax(self.classifier(x), dim=-1)

    def _check_y(self, y: torch.Tensor, n: int) -> torch.Tensor:
        y = torch.as_tensor(y, device=self.device).long().reshape(-1)
        if len(y) != n or (len(y) and (int(y.min()) < 0 or int(y.max()) >= self.num_classes)):
            raise UsageError(f"labels must be {n} class indices in 0..{self.num_classes - 1}")
        return y

    def fill_labels(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """Labels (B,) for x: y where given, the class q(y|x) finds most likely where y is -1
        (unlabelled) or None. ``decode`` needs a class for every row; callers that decode what they
        encoded with the data's labels fill them first (``apps.generate.known_labels``)."""
        if y is None:
            return self.classifier(x).argmax(-1)
        y = torch.as_tensor(y, device=x.device)
        if bool((y == UNLABELLED).any()):
            y = torch.where(y == UNLABELLED, self.classifier(x).argmax(-1), y)
        return self._check_y(y, len(x))

    def _encode_all(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z|x,y) for every class: (mu, logvar), each (K, B, D)."""
        a = self.enc_x(x)  # (B, H): the x part of the first layer, once
        h = self.enc_rest(a.unsqueeze(0) + self.enc_y.weight.unsqueeze(1))  # (K, B, 2D)
        mu, logvar = h.chunk(2, dim=-1)
        return mu, logvar

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z|x,y) = N(mu, exp(logvar)), each (B, D); where y is -1 (unknown), at the class q(y|x)
        finds most likely. Without y: the Gaussian with the mean and variance of the mixture
        sum_y q(y|x) q(z|x,y) (the style of x whatever its class)."""
        if y is not None:
            y = self.fill_labels(x, y)
            mu, logvar = self.enc_rest(self.enc_x(x) + self.enc_y(y)).chunk(2, dim=-1)
            return mu, logvar
        q = self.classify(x).T.unsqueeze(-1)  # (K, B, 1)
        mu_k, logvar_k = self._encode_all(x)
        mu = (q * mu_k).sum(0)
        var = (q * (logvar_k.exp() + mu_k * mu_k)).sum(0) - mu * mu
        return mu, torch.log(var.clamp_min(1e-12))

    def _decode_params(self, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """Raw likelihood parameters: z (B, D) with labels y (B,) -> (B, P, *shape); with y None,
        z (K, B, D) holds one z per class (class k in row k) -> (K * B, P, *shape), class-major."""
        if y is None:
            h = self.dec_z(z) + self.dec_y.weight.unsqueeze(1)  # (K, B, W)
            h = h.reshape(-1, h.shape[-1])
        else:
            h = self.dec_z(z) + self.dec_y(y)
        return self.decoder(self.dec_act(h))

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> Distribution:
        """p(x|y,z) with batch shape (B,) and event shape spec.shape; without y, the mixture over
        the classes with p(y) uniform (``ClassMixture``)."""
        if y is not None:
            return self.likelihood.dist(self._decode_params(z, self._check_y(y, len(z))))
        every = z.expand(self.num_classes, *z.shape)
        return ClassMixture(self.likelihood.dist(self._decode_params(every, None)), self.num_classes)

    def decode_mean(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """E[x|y,z] (B, *spec.shape); without y, averaged over the classes."""
        if y is not None:
            return self.likelihood.mean(self._decode_params(z, self._check_y(y, len(z))))
        m = self.likelihood.mean(self._decode_params(z.expand(self.num_classes, *z.shape), None))
        return m.view(self.num_classes, len(z), *m.shape[1:]).mean(0)

    @torch.no_grad()
    def init_from_data(self, x: torch.Tensor) -> None:
        """Start the decoder's output at the data's marginal (as ``VAE.init_from_data``)."""
        self.decoder.set_output_bias(self.likelihood.init_params(x))

    # -- the bound ------------------------------------------------------------------------------
    def _class_terms(self, x: torch.Tensor, logits: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """One z ~ q(z|x,y) per class and example: "recon" -log p(x|y,z) (K, B), "kl_dims"
        KL(q(z|x,y) || p(z)) per dim (K, B, D), "mu" (K, B, D), and "logq" log q(y|x) (B, K)
        (from the classifier's ``logits`` when given)."""
        logq = torch.log_softmax(self.classifier(x) if logits is None else logits, dim=-1)
        mu, logvar = self._encode_all(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        params = self._decode_params(z, None)  # (K * B, P, *shape)
        # classes as samples: x broadcast against the K decodings, not copied
        recon = -self.likelihood.log_prob_k(params, x)
        return {"recon": recon, "kl_dims": self.prior.kl(mu, logvar, z), "mu": mu, "logq": logq}

    def _labelled_terms(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One z ~ q(z|x,y) at the known class: (-log p(x|y,z), KL(q(z|x,y) || p(z))), each (B,)."""
        mu, logvar = self.enc_rest(self.enc_x(x) + self.enc_y(y)).chunk(2, dim=-1)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        recon = -self.likelihood.log_prob(self._decode_params(z, y), x)
        return recon, self.prior.kl(mu, logvar, z).sum(-1)

    def _marginal(self, t: dict[str, torch.Tensor], kl_weight: float = 1.0) -> dict[str, torch.Tensor]:
        """Per example, y summed out with q(y|x): "recon", "kl_z", "kl_y" = KL(q(y|x) || p(y)),
        and "objective" = recon + kl_weight * kl_z + kl_y (each (B,))."""
        q = t["logq"].exp().T  # (K, B)
        recon = (q * t["recon"]).sum(0)
        kl_z = (q * t["kl_dims"].sum(-1)).sum(0)
        kl_y = (t["logq"].exp() * (t["logq"] + math.log(self.num_classes))).sum(-1)
        return {"recon": recon, "kl_z": kl_z, "kl_y": kl_y, "objective": recon + kl_weight * kl_z + kl_y}

    def loss(self, x: torch.Tensor, *, kl_weight: float = 1.0, y: torch.Tensor | None = None
             ) -> dict[str, torch.Tensor]:
        """The semi-supervised objective (see the module docstring), nats per example.

        Keys: "loss"; "elbo", "recon", "kl" (detached batch means of the bound on log p(x): the
        marginal U(x) for unlabelled examples, L(x,y) <= log p(x,y) <= log p(x) for labelled ones,
        which are decoded at their own class only); with labelled examples also "accuracy" and
        "ce" of q(y|x) on them.
        """
        w = self.config.beta * kl_weight
        lab = None if y is None else y != UNLABELLED
        if lab is None or not bool(lab.any()):
            m = self._marginal(self._class_terms(x), w)
            recon, kl = m["recon"].mean(), (m["kl_z"] + m["kl_y"]).mean()
            return {"loss": m["objective"].mean(), "elbo": -(recon + kl).detach(), "recon": recon.detach(),
                    "kl": kl.detach()}
        logits = self.classifier(x)
        log_k, n = math.log(self.num_classes), len(x)
        recon_l, kl_l = self._labelled_terms(x[lab], y[lab])
        objective, recon, kl = (recon_l + w * kl_l + log_k).sum(), recon_l.sum(), (kl_l + log_k).sum()
        unl = ~lab
        if bool(unl.any()):
            m = self._marginal(self._class_terms(x[unl], logits[unl]), w)
            objective = objective + m["objective"].sum()
            recon, kl = recon + m["recon"].sum(), kl + (m["kl_z"] + m["kl_y"]).sum()
        logq_l, y_l = torch.log_softmax(logits[lab], dim=-1), y[lab]
        ce = F.nll_loss(logq_l, y_l)
        recon, kl = recon / n, kl / n
        return {"loss": objective / n + self.config.alpha * ce, "elbo": -(recon + kl).detach(),
                "recon": recon.detach(), "kl": kl.detach(),
                "accuracy": (logq_l.argmax(-1) == y_l).to(x.dtype).mean().detach(), "ce": ce.detach()}

    # -- evaluation -----------------------------------------------------------------------------
    def elbo_terms(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The marginal bound U(x) per example, labels ignored (one z per class): "recon" (B,),
        "kl" (B,) = KL of z and of y, "kl_dims" (B, D) (z's part, weighted by q(y|x)),
        "kl_extra" (B,) = KL(q(y|x) || p(y)) (the part of "kl" not in "kl_dims"), "mu" (B, D) the
        mean of sum_y q(y|x) q(z|x,y)."""
        t = self._class_terms(x)
        m = self._marginal(t)
        q = t["logq"].exp().T.unsqueeze(-1)  # (K, B, 1)
        return {"recon": m["recon"], "kl": m["kl_z"] + m["kl_y"], "kl_dims": (q * t["kl_dims"]).sum(0),
                "kl_extra": m["kl_y"], "mu": (q * t["mu"]).sum(0)}

    def log_weights(self, x: torch.Tensor, k: int, y: torch.Tensor | None = None) -> torch.Tensor:
        """Importance log weights of log p(x), labels ignored: (k, B).

        w_k = log (1/K) sum_y p(x|y,z_ky) p(z_ky) / q(z_ky|x,y) with z_ky ~ q(z|x,y): the class is
        summed out exactly, so exp(w_k) is an unbiased estimate of p(x). Classes are decoded one at
        a time (k * B rows per decoder call, as for the VAE).
        """
        a = self.enc_x(x)
        out = []
        for c in range(self.num_classes):
            mu, logvar = self.enc_rest(a + self.enc_y.weight[c]).chunk(2, dim=-1)
            eps = torch.randn(k, *mu.shape, device=mu.device, dtype=mu.dtype)
            z = mu + torch.exp(0.5 * logvar) * eps  # (k, B, D)
            log_q = gaussian_log_prob_at_eps(eps, logvar).sum(-1)
            yc = torch.full((k * len(x),), c, dtype=torch.long, device=x.device)
            log_px = self.likelihood.log_prob_k(self._decode_params(z.reshape(-1, self.latent_dim), yc), x)
            out.append(log_px + self.prior.log_prob(z) - log_q)
        return torch.logsumexp(torch.stack(out), dim=0) - math.log(self.num_classes)

    # -- applications -----------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, *, y: torch.Tensor | None = None, temperature: float = 1.0, mean: bool = True
               ) -> torch.Tensor:
        """n new examples (n, *spec.shape) of classes ``y`` (n,) int64, or of classes drawn from
        p(y) when y is None: decoder means (or draws from p(x|y,z) if mean=False)."""
        y = torch.randint(self.num_classes, (n,), device=self.device) if y is None else self._check_y(y, n)
        z = self.prior.sample(n, device=self.device, temperature=temperature, dtype=self.dtype)
        params = self._decode_params(z, y)
        return self.likelihood.mean(params) if mean else self.likelihood.sample(params)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Decoder mean at z = E[z|x,y] with y the given labels or, where none is given (or -1),
        the class q(y|x) finds most likely: (B, *spec.shape)."""
        y = self.fill_labels(x, y)
        mu, _ = self.encode(x, y)
        return self.decode_mean(mu, y)
