"""Recurrent encoder and decoder for sequences (T steps of D values), after Fabius and van Amersfoort
(2014) and Bowman et al. (2016).

Encoder: a bidirectional GRU or LSTM reads [x_t * m_t, m_t] (the values with missing ones zeroed,
and the mask, so a missing value is not mistaken for a zero); the last states of both directions
give q(z|x) = N(mu, diag(exp(logvar))).

Decoder: autoregressive. z sets the initial state of every layer (through a linear map and tanh)
and is also fed at every step; the step-t input is the previous step's values and mask, so p(x|z)
= prod_t p(x_t | x_<t, z). Training and scoring use teacher forcing: the whole sequence goes
through one ``nn.GRU``/``nn.LSTM`` call (no Python loop over time). ``word_dropout`` (Bowman et al.)
blanks each previous-step input with that probability while training, so the decoder must lean on z
rather than on its inputs (against posterior collapse). Generation runs step by step, feeding back
the decoder's mean.

Conditioning (the sequence CVAE): with ``cond_dim`` E > 0 both networks take a condition h (B, E)
(e.g. a one-hot class label), ``cond``: the encoder concatenates it to its summary (both directions'
final states) before the mean/log-variance head, the decoder to z, so it sets the initial state and
is fed at every step. With ``cond_dim`` 0 (the default) the networks are the unconditional ones.

Shapes: x and mask (B, T, D); z (B, L); h (B, E); the decoder returns the likelihood's raw parameters
(B, P, T, D).
"""

from __future__ import annotations

import torch
from torch import nn

CELLS = {"gru": nn.GRU, "lstm": nn.LSTM}
#: recurrent hidden widths when --hidden is not given
DEFAULT_HIDDEN = [128]


def _check_widths(hidden: list[int]) -> tuple[int, int]:
    """(width, layers): one width for every layer (stacked RNN layers share it)."""
    widths = [int(h) for h in hidden]
    if len(set(widths)) != 1:
        raise ValueError(f"recurrent layers share one width; --hidden {widths} mixes widths (e.g. 128,128)")
    return widths[0], len(widths)


class _StepInputs(nn.Module):
    """What the networks read at a step: [x_t * m_t, m_t] for values, or [embed(token_t) * m_t, m_t]
    for tokens (``vocab``: the vocabulary's size; x holds ids, (B, T, 1))."""

    def __init__(self, channels: int, vocab: int | None, width: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width) if vocab else None
        self.size = (width + 1) if vocab else 2 * channels

    def forward(self, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        if self.embed is not None:
            return torch.cat([self.embed(x[..., 0].long()) * m, m], -1)
        return torch.cat([x * m, m], -1)


def _need_cond(cond: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    if cond is None:
        raise ValueError("this network is conditional (cond_dim > 0) and got no condition")
    return cond.to(like.dtype)


class RecurrentEncoder(nn.Module):
    def __init__(self, channels: int, latent_dim: int, hidden: list[int], cell: str = "gru",
                 vocab: int | None = None, cond_dim: int = 0) -> None:
        super().__init__()
        self.width, self.layers = _check_widths(hidden)
        self.cell, self.cond_dim = cell, int(cond_dim)
        self.inputs = _StepInputs(channels, vocab, self.width)
        self.rnn = CELLS[cell](self.inputs.size, self.width, num_layers=self.layers, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * self.width + self.cond_dim, 2 * latent_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, cond: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        m = torch.ones_like(x) if mask is None else mask.to(x.dtype)
        inp = self.inputs(x, m)
        lengths = None
        if mask is not None:  # trailing steps with nothing observed (padding) are not read at all
            seen = m.amax(-1) > 0  # (B, T)
            t = x.shape[1]
            last = t - torch.flip(seen, [1]).to(torch.int8).argmax(1)  # one past the last observed step
            lengths = torch.where(seen.any(1), last, torch.ones_like(last))
            if bool((lengths == t).all()):
                lengths = None
        if lengths is None:
            _, h = self.rnn(inp)
        else:
            packed = nn.utils.rnn.pack_padded_sequence(inp, lengths.cpu(), batch_first=True, enforce_sorted=False)
            _, h = self.rnn(packed)
        if self.cell == "lstm":
            h = h[0]
        # h: (layers * 2, B, width); the last layer's forward and backward final states
        last = torch.cat([h[-2], h[-1]], -1)
        if self.cond_dim:
            last = torch.cat([last, _need_cond(cond, last)], -1)
        mu, logvar = self.head(last).chunk(2, -1)
        return mu, logvar


class RecurrentDecoder(nn.Module):
    """p(x_t | x_<t, z) for every t by teacher forcing; ``generate`` for free running."""

    autoregressive = True

    def __init__(self, channels: int, steps: int, latent_dim: int, hidden: list[int], num_params: int,
                 cell: str = "gru", word_dropout: float = 0.0, vocab: int | None = None, cond_dim: int = 0) -> None:
        super().__init__()
        self.width, self.layers = _check_widths(hidden)
        self.cell, self.channels, self.steps, self.num_params = cell, channels, steps, num_params
        self.word_dropout = float(word_dropout)
        self.cond_dim = int(cond_dim)
        code = latent_dim + self.cond_dim  # [z, h]: what sets the initial state and is fed at every step
        self.init = nn.Linear(code, self.layers * self.width * (2 if cell == "lstm" else 1))
        self.inputs = _StepInputs(channels, vocab, self.width)
        self.rnn = CELLS[cell](self.inputs.size + code, self.width, num_layers=self.layers, batch_first=True)
        self.out = nn.Linear(self.width, num_params * channels)

    def _code(self, z: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """[z, h] for a conditional decoder, z for an unconditional one."""
        return torch.cat([z, _need_cond(cond, z)], -1) if self.cond_dim else z

    def _state(self, z: torch.Tensor):
        h = torch.tanh(self.init(z)).view(z.shape[0], -1, self.layers, self.width).permute(1, 2, 0, 3).contiguous()
        return (h[0], h[1]) if self.cell == "lstm" else h[0]  # each (layers, B, width)

    def _params(self, out: torch.Tensor) -> torch.Tensor:
        b, t, _ = out.shape
        return self.out(out).view(b, t, self.num_params, self.channels).permute(0, 2, 1, 3)  # (B, P, T, D)

    def forward(self, z: torch.Tensor, x: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                cond: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced parameters (B, P, T, D) of every step given x; without x, ``generate``."""
        if x is None:
            return self.generate(z, cond=cond)
        return self._params(self.states(z, x, mask, cond))

    def states(self, z: torch.Tensor, x: torch.Tensor, mask: torch.Tensor | None = None,
               cond: torch.Tensor | None = None) -> torch.Tensor:
        """The top layer's teacher-forced states (B, T, width), before the output layer ``out``
        (a caller that needs the parameters of some steps only applies ``out`` to those)."""
        b, t, d = x.shape
        z = self._code(z, cond)
        m = torch.ones_like(x) if mask is None else mask.to(x.dtype)
        prev = self.inputs(x, m)
        prev = torch.cat([prev.new_zeros(b, 1, prev.shape[-1]), prev[:, :-1]], 1)  # step t sees step t - 1 (none at t = 0)
        if self.training and self.word_dropout > 0:
            keep = (torch.rand(b, t, 1, device=x.device) >= self.word_dropout).to(x.dtype)
            prev = prev * keep
        inp = torch.cat([prev, z.unsqueeze(1).expand(b, t, z.shape[-1])], -1)
        out, _ = self.rnn(inp, self._state(z))
        return out

    def generate(self, z: torch.Tensor, mean_of=None, steps: int | None = None, *, values: bool = False,
                 cond: torch.Tensor | None = None):
        """Free-running parameters (B, P, T, D): each step's input is the previous step's value,
        ``mean_of(params)`` (the likelihood's mean; the first parameter when not given). With
        ``values``: (parameters, the values fed back (B, T, D))."""
        z = self._code(z, cond)
        b, steps = z.shape[0], steps or self.steps
        state = self._state(z)
        prev = z.new_zeros(b, 1, self.inputs.size)
        ones = z.new_ones(b, 1, self.channels)
        zin = z.unsqueeze(1)
        outs, fed = [], []
        for _ in range(steps):
            o, state = self.rnn(torch.cat([prev, zin], -1), state)
            p = self._params(o)  # (B, P, 1, D)
            outs.append(p)
            value = (mean_of(p) if mean_of is not None else p[:, 0]).reshape(b, 1, self.channels)
            fed.append(value)
            prev = self.inputs(value, ones)
        params = torch.cat(outs, 2)
        return (params, torch.cat(fed, 1)) if values else params

    def set_output_bias(self, params: torch.Tensor) -> None:
        """params (P, T, D): the per-channel average over time becomes the output bias."""
        with torch.no_grad():
            self.out.bias.copy_(params.mean(1).reshape(-1))
