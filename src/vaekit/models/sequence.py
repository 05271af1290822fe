"""The VAE and IWAE on sequences: a recurrent encoder and an autoregressive recurrent decoder
(``modules.recurrent``; ``--arch gru|lstm``), with missing values masked out of the likelihood.

Examples are (T, D) windows or sequences with a mask of the same shape (1: observed); the
log-likelihood log p(x|z) = sum_t sum_d m_td log p(x_td | x_<t, z) counts observed values only, so
padding and missing values never enter a loss. Everything else is the VAE's (and, for ``--model
iwae``, the IWAE's): the prior, KL warm-up, beta, free bits, the k-sample bound, the trainer,
evaluation and resume. ``build_model`` picks these classes for sequence data (``SEQUENCE`` below).

``--model cvae`` (``SequenceCVAE``): the conditional VAE of ``models.cvae`` on sequences labelled one
class each (an ``.npz`` with y). The label, one-hot, joins the encoder's summary before its
mean/log-variance head, and z in the decoder (its initial state and every step's input); the prior
is N(0, I), or a learned p(z|y) with ``--conditional-prior``. Every method takes ``y=`` beside
``mask=``, as the CVAE's do. The shared code below carries the embedded condition h (None for the
unconditional models) through a few hooks (``_condition``, ``_kl``, ``_log_prior``, ``_prior_z``).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F

from ..data.spec import DataSpec
from ..errors import UsageError
from ..functional.kl import gaussian_log_prob, gaussian_log_prob_at_eps, kl_normal_normal
from ..modules.recurrent import CELLS, DEFAULT_HIDDEN, RecurrentDecoder, RecurrentEncoder
from .base import ModelConfig
from .cvae import CVAE, ConditionEmbedding, conditional_prior_net
from .iwae import IWAE
from .vae import VAE

#: sequence versions of the registered models, by --model (build_model picks them for sequence data)
SEQUENCE: dict[str, type] = {}


class _SequenceModel:
    """What the sequence VAE and IWAE share: networks, the masked likelihood, generation."""

    batch_fields = ("mask",)
    #: p(x|z) is autoregressive: scoring x needs x itself (teacher forcing), so apps call
    #: ``log_likelihood(x, z)`` and ``reconstruct`` rather than decoding z alone
    autoregressive = True

    def _networks(self, config: ModelConfig, spec: DataSpec) -> tuple[torch.nn.Module, torch.nn.Module]:
        if config.arch not in CELLS:
            raise UsageError(f"sequence data takes --arch {' | '.join(CELLS)}, not {config.arch!r}")
        steps, channels = spec.shape
        hidden = list(config.hidden or DEFAULT_HIDDEN)
        vocab = spec.vocab_size if spec.kind == "tokens" else None
        e = self._cond_dim(spec)
        try:
            return (RecurrentEncoder(channels, config.latent_dim, hidden, config.arch, vocab=vocab, cond_dim=e),
                    RecurrentDecoder(channels, steps, config.latent_dim, hidden, self.likelihood.num_params,
                                     config.arch, word_dropout=config.word_dropout, vocab=vocab, cond_dim=e))
        except ValueError as e:
            raise UsageError(str(e)) from None

    # -- the condition (none here; see SequenceCVAE) -------------------------------------------------
    def _cond_dim(self, spec: DataSpec) -> int:
        """Width E of the embedded condition h the networks take (0: unconditional)."""
        return 0

    def _condition(self, **cond: torch.Tensor | None) -> torch.Tensor | None:
        """The embedded condition h (B, E) from the batch fields a conditional model reads; None here."""
        if any(v is not None for v in cond.values()):
            raise UsageError(f"this model is not conditional; it takes no {', '.join(cond)}")
        return None

    def _kl(self, mu: torch.Tensor, logvar: torch.Tensor, z: torch.Tensor, h: torch.Tensor | None) -> torch.Tensor:
        """KL(q(z|x[,y]) || p(z[|y])) per dimension, (B, D)."""
        return self.prior.kl(mu, logvar, z)

    def _log_prior(self, z: torch.Tensor, h: torch.Tensor | None) -> torch.Tensor:
        """log p(z[|y]) of z (..., B, D): (..., B) nats."""
        return self.prior.log_prob(z)

    def _prior_z(self, n: int, temperature: float, h: torch.Tensor | None) -> torch.Tensor:
        """n draws from p(z[|y]) with the standard deviation scaled by ``temperature``: (n, D)."""
        return self.prior.sample(n, device=self.device, temperature=temperature, dtype=self.dtype)

    def _training_mask(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor | None:
        """The mask a training batch uses: with --inject-missing p, each observed value is marked
        missing with probability p (afresh every batch; only while training)."""
        rate = self.config.inject_missing
        if not (self.training and rate > 0):
            return mask
        keep = (torch.rand_like(x) >= rate).to(x.dtype)
        return keep if mask is None else mask.to(x.dtype) * keep

    @staticmethod
    def _trim(x: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x and mask cut after the batch's last observed step: padded sentences of a batch are
        as long as its longest, not the data's (steps past it would only be masked out)."""
        if mask is None:
            return x, mask
        seen = mask.flatten(2).amax(-1).amax(0) > 0  # (T,)
        t = int(seen.nonzero().max()) + 1 if bool(seen.any()) else 1
        return (x, mask) if t == x.shape[1] else (x[:, :t], mask[:, :t])

    # -- the masked likelihood -------------------------------------------------------------------
    def _log_px(self, params: torch.Tensor, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """sum over observed (t, d) of log p(x_td | params): (B,) nats."""
        lp = self.likelihood.log_prob_elements(params, x)  # (B, T, D)
        if mask is not None:
            lp = lp * mask.to(lp.dtype)
        return lp.flatten(1).sum(1)

    def _teacher_log_px(self, z: torch.Tensor, x: torch.Tensor, mask: torch.Tensor | None,
                        h: torch.Tensor | None = None) -> torch.Tensor:
        """log p(x | z), teacher-forced: (B,) nats. For sentences the output layer and softmax (the
        vocabulary-sized part of the step) run at the observed tokens only, not at the padding after
        each sentence's end; the sum is the same."""
        if self.spec.kind != "tokens" or mask is None:
            return self._log_px(self._decode(z, x, mask, h), x, mask)
        states = self.decoder.states(z, x, mask, h)  # (B, T, width)
        seen = mask[..., 0] > 0  # (B, T)
        logits = self.decoder.out(states[seen])  # (N, V): one token per step
        lp = -F.cross_entropy(logits, x[..., 0][seen].long(), reduction="none")
        rows = torch.arange(x.shape[0], device=x.device).unsqueeze(1).expand_as(seen)[seen]
        return lp.new_zeros(x.shape[0]).index_add_(0, rows, lp)

    def step_log_px(self, x: torch.Tensor, z: torch.Tensor, mask: torch.Tensor | None = None,
                    score_mask: torch.Tensor | None = None, **cond: torch.Tensor | None) -> torch.Tensor:
        """log p(x_t | x_<t, z) of every step, summed over its observed channels: (B, T) nats.
        ``mask`` tells the decoder which inputs are observed; ``score_mask`` (default: ``mask``)
        which values are scored (they differ after imputing the missing ones)."""
        lp = self.likelihood.log_prob_elements(self._decode(z, x, mask, self._condition(**cond)), x)  # (B, T, D)
        keep = mask if score_mask is None else score_mask
        if keep is not None:
            lp = lp * keep.to(lp.dtype)
        return lp.sum(-1)

    def _decode(self, z: torch.Tensor, x: torch.Tensor, mask: torch.Tensor | None,
                h: torch.Tensor | None = None) -> torch.Tensor:
        return self.decoder(z, x, mask, h)

    # -- training and evaluation -----------------------------------------------------------------
    def elbo_terms(self, x: torch.Tensor, mask: torch.Tensor | None = None, **cond: torch.Tensor | None
                   ) -> dict[str, torch.Tensor]:
        x, mask = self._trim(x, mask)
        h = self._condition(**cond)
        mu, logvar = self.encoder(x, mask, h)
        z = self.reparameterize(mu, logvar)
        recon = -self._teacher_log_px(z, x, mask, h)
        kl_d = self._kl(mu, logvar, z, h)
        return {"recon": recon, "kl": kl_d.sum(-1), "kl_dims": kl_d, "mu": mu}

    def log_weights(self, x: torch.Tensor, k: int, mask: torch.Tensor | None = None, **cond: torch.Tensor | None
                    ) -> torch.Tensor:
        log_px, log_p, log_q = self.log_weight_terms(x, k, mask=mask, **cond)
        return log_px + log_p - log_q

    def log_weight_terms(self, x: torch.Tensor, k: int, path: Callable[[torch.Tensor], torch.Tensor] | None = None,
                         mask: torch.Tensor | None = None, **cond: torch.Tensor | None
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The VAE's k-sample terms (``VAE.log_weight_terms``, ``path`` included) on the batch trimmed
        to its last observed step, under the condition when the model has one."""
        x, mask = self._trim(x, mask)
        h = self._condition(**cond)
        if h is None:
            return VAE.log_weight_terms(self, x, k, path, mask=mask)
        mu, logvar = self.encoder(x, mask, h)
        eps = torch.randn(k, *mu.shape, device=mu.device, dtype=mu.dtype)
        z = mu + torch.exp(0.5 * logvar) * eps  # (k, B, D)
        if path is None:
            log_q = gaussian_log_prob_at_eps(eps, logvar).sum(-1)
        else:
            z = path(z)
            log_q = gaussian_log_prob(z, mu.detach(), logvar.detach()).sum(-1)
        return self._log_px_k(z.reshape(-1, mu.shape[-1]), x, mask, h), self._log_prior(z, h), log_q

    def _log_px_k(self, z: torch.Tensor, x: torch.Tensor, mask: torch.Tensor | None = None,
                  h: torch.Tensor | None = None) -> torch.Tensor:
        """Each of the k samples (k * B rows) teacher-forced by its own example: (k, B)."""
        b = x.shape[0]
        k = z.shape[0] // b

        def rep(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.unsqueeze(0).expand(k, *t.shape).reshape(k * b, *t.shape[1:])

        return self._teacher_log_px(z, rep(x), rep(mask), rep(h)).view(k, b)

    def encode(self, x: torch.Tensor, mask: torch.Tensor | None = None, **cond: torch.Tensor | None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(x, mask, self._condition(**cond))

    # -- the generative model alone ----------------------------------------------------------------
    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor, mask: torch.Tensor | None = None,
                       **cond: torch.Tensor | None) -> torch.Tensor:
        return self._teacher_log_px(z, x, mask, self._condition(**cond))

    # -- applications --------------------------------------------------------------------------------
    def decode_mean(self, z: torch.Tensor, mask: torch.Tensor | None = None, **cond: torch.Tensor | None
                    ) -> torch.Tensor:
        """Free-running sequences from z: each step fed the previous step's mean, (B, T, D) (a
        mask, which apps may pass along, plays no part: nothing is observed)."""
        h = self._condition(**cond)
        return self.likelihood.mean(self.decoder.generate(z, self.likelihood.mean, cond=h))

    @torch.no_grad()
    def sample(self, n: int, *, temperature: float = 1.0, mean: bool = True, **cond: torch.Tensor | None
               ) -> torch.Tensor:
        """n sequences (n, T, D) from the prior (for a conditional model: one per row of the condition)."""
        h = self._condition(**cond)
        if h is not None and len(h) != n:
            raise UsageError(f"sample(n={n}) needs one condition per example, got {len(h)}")
        z = self._prior_z(n, temperature, h)
        if mean:
            return self.likelihood.mean(self.decoder.generate(z, self.likelihood.mean, cond=h))
        _, drawn = self.decoder.generate(z, self.likelihood.sample, values=True, cond=h)
        return drawn

    @torch.no_grad()
    def generate_tokens(self, z: torch.Tensor, *, temperature: float = 1.0, greedy: bool = False) -> torch.Tensor:
        """Token ids (B, T, 1) decoded from z: each step's token drawn from softmax(logits /
        temperature) (or the most likely one, ``greedy``) and fed to the next step."""
        if greedy:
            pick = self.likelihood.mean
        else:
            def pick(p: torch.Tensor) -> torch.Tensor:
                return self.likelihood.sample(p / temperature)
        _, tokens = self.decoder.generate(z, pick, values=True)
        return tokens

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, mask: torch.Tensor | None = None, **cond: torch.Tensor | None
                    ) -> torch.Tensor:
        """One-step-ahead means at the posterior mean, teacher-forced by x: (B, T, D)."""
        h = self._condition(**cond)
        mu, _ = self.encoder(x, mask, h)
        return self.likelihood.mean(self._decode(mu, x, mask, h))

    @torch.no_grad()
    def init_from_data(self, x: torch.Tensor) -> None:
        """Start the decoder's output at the data's per-channel marginal."""
        self.decoder.set_output_bias(self.likelihood.init_params(x))

    def check_data(self, train: Any) -> None:
        shape = tuple(train.x.shape[1:])
        if shape != tuple(self.spec.shape):
            raise UsageError(f"the model takes sequences shaped {tuple(self.spec.shape)}, the data are {shape}")


class SequenceVAE(_SequenceModel, VAE):
    """The VAE's objective on sequences (see the module docstring)."""

    def loss(self, x: torch.Tensor, *, kl_weight: float = 1.0, mask: torch.Tensor | None = None,
             **cond: torch.Tensor | None) -> dict[str, torch.Tensor]:
        x, mask = self._trim(x, mask)
        mask = self._training_mask(x, mask)
        h = self._condition(**cond)
        mu, logvar = self.encoder(x, mask, h)
        z = self.reparameterize(mu, logvar)
        log_px = self._teacher_log_px(z, x, mask, h)
        kl_d = self._kl(mu, logvar, z, h)
        recon = -log_px.mean()
        kl_dims = kl_d.mean(0)
        kl = kl_dims.sum()
        kl_term = kl_dims.clamp(min=self.config.free_bits).sum() if self.config.free_bits > 0 else kl
        loss = recon + (self.config.beta * kl_weight) * kl_term
        return {"loss": loss, "elbo": -(recon + kl).detach(), "recon": recon.detach(), "kl": kl.detach()}


class SequenceIWAE(_SequenceModel, IWAE):
    """The IWAE's k-sample bound on sequences."""

    def loss(self, x: torch.Tensor, *, kl_weight: float = 1.0, mask: torch.Tensor | None = None
             ) -> dict[str, torch.Tensor]:
        return IWAE.loss(self, x, kl_weight=kl_weight, mask=self._training_mask(x, mask))


class SequenceCVAE(SequenceVAE):
    """The conditional VAE on sequences labelled one class each: q(z|x,y), p(x|z,y) autoregressive,
    p(z) = N(0, I) or, with ``--conditional-prior``, a learned p(z|y) (see the module docstring).

    Shapes: x, mask (B, T, D); y (B,) int64 class indices; h = one-hot(y) (B, K); z (B, L).
    """

    batch_fields = ("mask", "y")

    def __init__(self, config: ModelConfig, spec: DataSpec) -> None:
        _need_labels(spec)
        super().__init__(config, spec)
        self.cond = ConditionEmbedding(spec, config.activation)  # y -> one-hot
        self.prior_net = conditional_prior_net(self.cond, config) if config.conditional_prior else None

    # the CVAE's: the condition from y, the conditional prior's parameters and draws, log p(z|y),
    # the refusal of unlabelled training examples
    condition = CVAE.condition
    prior_params = CVAE.prior_params
    prior_sample = CVAE.prior_sample
    log_prior = CVAE.log_prior

    def _cond_dim(self, spec: DataSpec) -> int:
        return int(spec.num_classes or 0)

    def _condition(self, y: torch.Tensor | None = None) -> torch.Tensor:
        k = int(self.spec.num_classes)
        if y is None:
            raise UsageError("this run is conditional on class labels, and these sequences have none of its classes: "
                             "give an .npz with x and labels y of the training classes (or name one with --label "
                             "where the verb takes it)")
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= k):
            raise UsageError(f"labels y must be class indices 0..{k - 1} (the run's {k} classes), got "
                             f"{int(y.min())}..{int(y.max())}")
        return self.condition(y)

    def _kl(self, mu: torch.Tensor, logvar: torch.Tensor, z: torch.Tensor, h: torch.Tensor | None) -> torch.Tensor:
        p = self.prior_params(h)
        return self.prior.kl(mu, logvar, z) if p is None else kl_normal_normal(mu, logvar, *p)

    def _log_prior(self, z: torch.Tensor, h: torch.Tensor | None) -> torch.Tensor:
        p = self.prior_params(h)
        return self.prior.log_prob(z) if p is None else gaussian_log_prob(z, *p).sum(-1)

    def _prior_z(self, n: int, temperature: float, h: torch.Tensor | None) -> torch.Tensor:
        z = super()._prior_z(n, temperature, h)
        p = self.prior_params(h)
        return z if p is None else p[0] + torch.exp(0.5 * p[1]) * z

    def check_data(self, train: Any) -> None:
        super().check_data(train)
        CVAE.check_data(self, train)


def _need_labels(spec: DataSpec) -> None:
    """One line naming why, when sequences give the conditional model no labels to condition on."""
    if spec.kind == "tokens":
        raise UsageError("--model cvae needs a class label per sequence, and sentences (--tokens) have none; "
                         "use --model vae or iwae for text")
    if not spec.num_classes:
        raise UsageError("--model cvae needs a class label per sequence, and these sequences have none (the windows "
                         "of a series (--window) carry no labels); give an .npz with x (N, T, D) and labels y (N,), "
                         "or use --model vae")
    if spec.num_classes < 2:
        raise UsageError("--model cvae needs at least two classes, and the labels y of these sequences hold one; "
                         "use --model vae")


SEQUENCE.update(vae=SequenceVAE, iwae=SequenceIWAE, cvae=SequenceCVAE)
