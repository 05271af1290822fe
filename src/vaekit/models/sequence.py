"""The VAE and IWAE on sequences: a recurrent encoder and an autoregressive recurrent decoder
(``modules.recurrent``; ``--arch gru|lstm``), with missing values masked out of the likelihood.

Examples are (T, D) windows or sequences with a mask of the same shape (1: observed); the
log-likelihood log p(x|z) = sum_t sum_d m_td log p(x_td | x_<t, z) counts observed values only, so
padding and missing values never enter a loss. Everything else is the VAE's (and, for ``--model
iwae``, the IWAE's): the prior, KL warm-up, beta, free bits, the k-sample bound, the trainer,
evaluation and resume. ``build_model`` picks these classes for sequence data (``SEQUENCE`` below).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F

from ..data.spec import DataSpec
from ..errors import UsageError
from ..modules.recurrent import CELLS, DEFAULT_HIDDEN, RecurrentDecoder, RecurrentEncoder
from .base import ModelConfig
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
        try:
            return (RecurrentEncoder(channels, config.latent_dim, hidden, config.arch, vocab=vocab),
                    RecurrentDecoder(channels, steps, config.latent_dim, hidden, self.likelihood.num_params,
                                     config.arch, word_dropout=config.word_dropout, vocab=vocab))
        except ValueError as e:
            raise UsageError(str(e)) from None

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

    def _teacher_log_px(self, z: torch.Tensor, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """log p(x | z), teacher-forced: (B,) nats. For sentences the output layer and softmax (the
        vocabulary-sized part of the step) run at the observed tokens only, not at the padding after
        each sentence's end; the sum is the same."""
        if self.spec.kind != "tokens" or mask is None:
            return self._log_px(self._decode(z, x, mask), x, mask)
        h = self.decoder.states(z, x, mask)  # (B, T, width)
        seen = mask[..., 0] > 0  # (B, T)
        logits = self.decoder.out(h[seen])  # (N, V): one token per step
        lp = -F.cross_entropy(logits, x[..., 0][seen].long(), reduction="none")
        rows = torch.arange(x.shape[0], device=x.device).unsqueeze(1).expand_as(seen)[seen]
        return lp.new_zeros(x.shape[0]).index_add_(0, rows, lp)

    def step_log_px(self, x: torch.Tensor, z: torch.Tensor, mask: torch.Tensor | None = None,
                    score_mask: torch.Tensor | None = None) -> torch.Tensor:
        """log p(x_t | x_<t, z) of every step, summed over its observed channels: (B, T) nats.
        ``mask`` tells the decoder which inputs are observed; ``score_mask`` (default: ``mask``)
        which values are scored (they differ after imputing the missing ones)."""
        lp = self.likelihood.log_prob_elements(self._decode(z, x, mask), x)  # (B, T, D)
        keep = mask if score_mask is None else score_mask
        if keep is not None:
            lp = lp * keep.to(lp.dtype)
        return lp.sum(-1)

    def _decode(self, z: torch.Tensor, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.decoder(z, x, mask)

    # -- training and evaluation -----------------------------------------------------------------
    def elbo_terms(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        x, mask = self._trim(x, mask)
        mu, logvar = self.encoder(x, mask)
        z = self.reparameterize(mu, logvar)
        recon = -self._teacher_log_px(z, x, mask)
        kl_d = self.prior.kl(mu, logvar, z)
        return {"recon": recon, "kl": kl_d.sum(-1), "kl_dims": kl_d, "mu": mu}

    def log_weights(self, x: torch.Tensor, k: int, mask: torch.Tensor | None = None) -> torch.Tensor:
        log_px, log_p, log_q = self.log_weight_terms(x, k, mask=mask)
        return log_px + log_p - log_q

    def log_weight_terms(self, x: torch.Tensor, k: int, path: Callable[[torch.Tensor], torch.Tensor] | None = None,
                         mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The VAE's k-sample terms on the batch trimmed to its last observed step."""
        x, mask = self._trim(x, mask)
        return VAE.log_weight_terms(self, x, k, path, mask=mask)

    def _log_px_k(self, z: torch.Tensor, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Each of the k samples (k * B rows) teacher-forced by its own example: (k, B)."""
        b = x.shape[0]
        k = z.shape[0] // b
        xk = x.unsqueeze(0).expand(k, *x.shape).reshape(k * b, *x.shape[1:])
        mk = None if mask is None else mask.unsqueeze(0).expand(k, *mask.shape).reshape(k * b, *mask.shape[1:])
        return self._teacher_log_px(z, xk, mk).view(k, b)

    def encode(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(x, mask)

    # -- the generative model alone ----------------------------------------------------------------
    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self._teacher_log_px(z, x, mask)

    # -- applications --------------------------------------------------------------------------------
    def decode_mean(self, z: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Free-running sequences from z: each step fed the previous step's mean, (B, T, D) (a
        mask, which apps may pass along, plays no part: nothing is observed)."""
        return self.likelihood.mean(self.decoder.generate(z, self.likelihood.mean))

    @torch.no_grad()
    def sample(self, n: int, *, temperature: float = 1.0, mean: bool = True) -> torch.Tensor:
        z = self.prior.sample(n, device=self.device, temperature=temperature, dtype=self.dtype)
        if mean:
            return self.decode_mean(z)
        _, drawn = self.decoder.generate(z, self.likelihood.sample, values=True)
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
    def reconstruct(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """One-step-ahead means at the posterior mean, teacher-forced by x: (B, T, D)."""
        mu, _ = self.encoder(x, mask)
        return self.likelihood.mean(self._decode(mu, x, mask))

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

    def loss(self, x: torch.Tensor, *, kl_weight: float = 1.0, mask: torch.Tensor | None = None
             ) -> dict[str, torch.Tensor]:
        x, mask = self._trim(x, mask)
        mask = self._training_mask(x, mask)
        mu, logvar = self.encoder(x, mask)
        z = self.reparameterize(mu, logvar)
        log_px = self._teacher_log_px(z, x, mask)
        kl_d = self.prior.kl(mu, logvar, z)
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


SEQUENCE.update(vae=SequenceVAE, iwae=SequenceIWAE)
