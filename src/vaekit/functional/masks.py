"""Which part of an example is given and which is missing: the masks of structured-output completion.

A mask is a bool tensor shaped like the data, True where a value is *missing* (to be completed)
and False where it is given (vaekit's convention everywhere: ``vaekit impute --mask`` marks the
missing values white). Image masks are the same for every channel.

Modes (``GIVEN_MODES``):

- ``"1"``, ``"2"``, ``"3"``: the MNIST quadrant layouts of Sohn, Lee and Yan (2015), as pyro's
  ``examples/cvae`` reproduces them: 1 quadrant given (bottom left), 2 (the left half), 3 (all
  but the bottom right). Fixed, so every example gets the same mask.
- ``"random"``: 1, 2 or 3 of the four quadrants given (each number equally likely), which
  quadrants at random.
- ``"rect"``: a random axis-aligned rectangle is missing, each side 1/4 to 3/4 of the image's
  (for vectors: a contiguous block of 1/4 to 3/4 of the values).
- ``"pixels"``: each value is missing independently with a rate drawn per example, uniform in
  [0.1, 0.9].

Every draw is a function of a (B, m) tensor of uniforms (``uniforms_needed``): ``torch.rand`` in
training, or ``content_uniforms`` in evaluation, which derives them from each example's own values
so that repeated calls on the same example (the chunks of an importance-sampled NLL, the ELBO
pass and the NLL pass) see the same mask. The draws use only fixed-shape tensor operations (no
host synchronisation), so they can be recorded in a CUDA graph.
"""

from __future__ import annotations

import math

import torch

GIVEN_MODES = ("1", "2", "3", "random", "rect", "pixels")
IMAGE_ONLY = ("1", "2", "3", "random")
#: Named patterns for a whole mask (True = missing), by the part that is missing or given.
NAMED_PATTERNS = ("q1", "q2", "q3", "top", "bottom", "left", "right")


def quadrant_index(h: int, w: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Quadrant of each pixel, int64 (H, W): 0 top left, 1 top right, 2 bottom left, 3 bottom
    right; the split is at H // 2 and W // 2 (the lower/right parts get the odd row/column)."""
    rows = (torch.arange(h, device=device) >= h // 2).long()
    cols = (torch.arange(w, device=device) >= w // 2).long()
    return 2 * rows[:, None] + cols[None, :]


def paper_mask(given: int, h: int, w: int, device: torch.device | str | None = None) -> torch.Tensor:
    """The missing part, bool (H, W), of Sohn et al.'s layout with ``given`` (1, 2 or 3) quadrants given."""
    if given not in (1, 2, 3):
        raise ValueError(f"the quadrant layouts give 1, 2 or 3 quadrants, not {given}")
    kept = {1: (2,), 2: (0, 2), 3: (0, 1, 2)}[given]  # bottom left; left half; all but bottom right
    q = quadrant_index(h, w, device)
    return ~torch.isin(q, torch.tensor(kept, device=q.device))


def named_mask(name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """A named pattern as a mask, bool ``shape`` (True = missing): "q1"/"q2"/"q3" the paper's layouts
    with 1/2/3 quadrants given; "top"/"bottom"/"left"/"right" that half missing (images only)."""
    if name not in NAMED_PATTERNS:
        raise ValueError(f"unknown mask pattern {name!r}; valid: {', '.join(NAMED_PATTERNS)}")
    if len(shape) != 3:
        raise ValueError(f"mask pattern {name!r} needs images (C, H, W), got shape {tuple(shape)}")
    h, w = shape[1], shape[2]
    if name.startswith("q"):
        m = paper_mask(int(name[1]), h, w)
    else:
        q = quadrant_index(h, w)
        half = {"top": (0, 1), "bottom": (2, 3), "left": (0, 2), "right": (1, 3)}[name]
        m = torch.isin(q, torch.tensor(half))
    return m.expand(*shape).clone()


def uniforms_needed(mode: str, shape: tuple[int, ...]) -> int:
    """How many uniforms ``draw_masks`` reads per example for ``mode`` and data ``shape``."""
    if mode in ("1", "2", "3"):
        return 0
    if mode == "random":
        return 5  # the number of quadrants given, then a random score per quadrant
    if mode == "rect":
        return 4 if len(shape) == 3 else 2
    if mode == "pixels":
        return 1 + _positions(shape)
    raise ValueError(f"unknown mask mode {mode!r}; valid: {', '.join(GIVEN_MODES)}")


def _positions(shape: tuple[int, ...]) -> int:
    """Positions a mask chooses among: pixels (H * W) for images, values for vectors."""
    return shape[1] * shape[2] if len(shape) == 3 else math.prod(shape)


def _span(u_size: torch.Tensor, u_start: torch.Tensor, n: int, device: torch.device) -> torch.Tensor:
    """(B, n) bool: a random run of 1/4 to 3/4 of n positions (at least 1) at a random start."""
    length = (n / 4 + u_size * (n / 2)).floor().clamp(1, n)
    start = (u_start * (n - length + 1)).floor()
    i = torch.arange(n, device=device, dtype=u_size.dtype)
    return (i >= start[:, None]) & (i < (start + length)[:, None])


def draw_masks(mode: str, shape: tuple[int, ...], u: torch.Tensor) -> torch.Tensor:
    """Masks for a batch, bool (B, *shape), True = missing, from uniforms ``u`` (B, m) in [0, 1)
    with m >= ``uniforms_needed(mode, shape)``. See the module docstring for the modes."""
    b, device = u.shape[0], u.device
    image = len(shape) == 3
    if mode in IMAGE_ONLY and not image:
        raise ValueError(f"mask mode {mode!r} takes image quadrants; data of shape {tuple(shape)} "
                         "need 'rect' or 'pixels'")
    if mode in ("1", "2", "3"):
        m = paper_mask(int(mode), shape[1], shape[2], device).expand(b, *shape[1:])
    elif mode == "random":
        k = 1 + (u[:, 0] * 3).floor().clamp(max=2)  # 1, 2 or 3 quadrants given
        # the k quadrants with the lowest random scores are given
        rank = u[:, 1:5].argsort(1).argsort(1)  # (B, 4): each quadrant's rank
        given_q = rank < k[:, None]
        q = quadrant_index(shape[1], shape[2], device).flatten()
        m = ~given_q[:, q].view(b, shape[1], shape[2])
    elif mode == "rect" and image:
        rows = _span(u[:, 0], u[:, 1], shape[1], device)
        cols = _span(u[:, 2], u[:, 3], shape[2], device)
        m = rows[:, :, None] & cols[:, None, :]
    elif mode == "rect":
        m = _span(u[:, 0], u[:, 1], math.prod(shape), device).view(b, *shape)
    elif mode == "pixels":
        rate = 0.1 + 0.8 * u[:, :1]
        m = u[:, 1:1 + _positions(shape)] < rate
        m = m.view(b, *shape[1:]) if image else m.view(b, *shape)
    else:
        raise ValueError(f"unknown mask mode {mode!r}; valid: {', '.join(GIVEN_MODES)}")
    if image:  # one mask for every channel
        m = m[:, None].expand(b, *shape)
    return m.contiguous()


def content_uniforms(x: torch.Tensor, m: int) -> torch.Tensor:
    """(B, m) float64 numbers in [0, 1) that depend only on each example's values in ``x`` (B, ...).

    A fixed hash, not a random draw: the same example gives the same numbers in every call,
    whatever the batch around it (NaN values count as 0). Spread well enough to pick masks.
    """
    flat = torch.nan_to_num(x.detach().flatten(1).double())
    i = torch.arange(flat.shape[1], device=x.device, dtype=torch.float64)
    key = (flat * torch.sin(i * 0.7071 + 0.3)).sum(1) + 0.137 * flat.sum(1)  # (B,)
    j = torch.arange(max(m, 1), device=x.device, dtype=torch.float64)
    v = torch.sin(key[:, None] * 12.9898 + j * 78.233 + 0.5) * 43758.5453
    return (v - v.floor())[:, :m]
