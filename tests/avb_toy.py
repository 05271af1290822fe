"""A toy problem with a known, clearly non-Gaussian posterior, for AVB's tests and benchmark.

z ~ N(0, 1) (one dimension), x | z ~ N(|z|, SIGMA^2) (one dimension). The decoder is fixed and
known (|z| = relu(z) + relu(-z), written into vaekit's MLP decoder by hand and frozen), so
training the encoder alone minimises KL(q(z|x) || p(z|x)). For x well above SIGMA the posterior
has two equal modes near +x and -x: its mean is 0 and its variance about x^2, which a Gaussian
q(z|x) fitted by the ELBO (mode-seeking) cannot match -- it sits on one mode. The exact posterior
moments come from numerical integration on a grid.

``train_toy(kind, ...)`` trains the encoder of a Gaussian VAE ("vae") or of AVB ("avb", with
``adaptive_contrast``) for the same number of steps, batch size and learning rate on fresh draws
of x each step, each player with its own Adam (the trainer's ``PlayersStep`` in miniature), and
``moment_errors`` compares q's mean and variance with the posterior's.
"""

from __future__ import annotations

import torch

from vaekit.data.spec import DataSpec
from vaekit.models import ModelConfig, build_model

SIGMA = 0.3
SPEC = DataSpec((1,), "continuous")
TEST_X = (0.75, 1.0, 1.5, 2.0)


def draw_x(n: int, gen: torch.Generator | None = None) -> torch.Tensor:
    z = torch.randn(n, 1, generator=gen)
    return z.abs() + SIGMA * torch.randn(n, 1, generator=gen)


def posterior_moments(x: float, lo: float = -6.0, hi: float = 6.0, n: int = 24001) -> tuple[float, float]:
    """Mean and variance of p(z|x) by numerical integration on a grid (float64)."""
    z = torch.linspace(lo, hi, n, dtype=torch.float64)
    logp = -0.5 * z**2 - 0.5 * ((x - z.abs()) / SIGMA) ** 2
    w = torch.softmax(logp, 0)
    mean = float((w * z).sum())
    return mean, float((w * (z - mean) ** 2).sum())


def build(kind: str, *, adaptive_contrast: bool = True, hidden: int = 64, seed: int = 0):
    """The model with the known decoder written in and frozen."""
    torch.manual_seed(seed)
    opts = dict(model=kind, hidden=[hidden, hidden], latent_dim=1, likelihood="gaussian-fixed",
                extra={"likelihood_args": {"sigma": SIGMA}})
    if kind == "avb":
        opts.update(critic_hidden=[hidden, hidden], adaptive_contrast=adaptive_contrast)
    model = build_model(ModelConfig(**opts), SPEC)
    net = model.decoder.net  # Linear(1, H), ReLU, Linear(H, H), ReLU, Linear(H, 1)
    with torch.no_grad():
        for layer in (net[0], net[2], net[4]):
            layer.weight.zero_()
            layer.bias.zero_()
        net[0].weight[0, 0], net[0].weight[1, 0] = 1.0, -1.0  # relu(z), relu(-z)
        net[2].weight[0, 0], net[2].weight[0, 1] = 1.0, 1.0  # relu(relu(z) + relu(-z)) = |z|
        net[4].weight[0, 0] = 1.0
    for p in model.decoder.parameters():
        p.requires_grad_(False)
    return model


def train_toy(kind: str, *, steps: int = 1500, batch: int = 256, lr: float = 1e-3, seed: int = 0,
              adaptive_contrast: bool = True, hidden: int = 64):
    """Train the encoder (and AVB's adversary) on fresh draws of x; returns the model in eval mode."""
    model = build(kind, adaptive_contrast=adaptive_contrast, hidden=hidden, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    players = model.players() or {"model": {"params": list(model.parameters())}}
    opts = {name: torch.optim.Adam([p for p in spec["params"] if p.requires_grad], lr=lr)
            for name, spec in players.items()}

    def update(player: str, loss: torch.Tensor) -> bool:
        opt = opts[player]
        params = opt.param_groups[0]["params"]
        for p, g in zip(params, torch.autograd.grad(loss, params, allow_unused=True)):
            p.grad = g
        opt.step()
        return True

    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny networks: one thread is several times faster on shared cores
    try:
        _loop(model, kind, steps, batch, gen, update)
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def _loop(model, kind, steps, batch, gen, update) -> None:
    for _ in range(steps):
        x = draw_x(batch, gen)
        if kind == "avb":
            model.train_step(x, update=update)
        else:
            update("model", model.loss(x)["loss"])


@torch.no_grad()
def q_moments(model, x: float, n: int = 4000) -> tuple[float, float]:
    """Mean and variance of q(z|x): AVB's from n draws, the Gaussian encoder's in closed form."""
    xt = torch.tensor([[x]])
    if hasattr(model, "draw"):
        z = model.draw(xt, n)[:, 0, 0].double()
        return float(z.mean()), float(z.var())
    mu, logvar = model.encode(xt)
    return float(mu[0, 0]), float(logvar[0, 0].exp())


def moment_errors(model, xs=TEST_X) -> dict[str, float]:
    """Mean over ``xs`` of |mean_q - mean_post| and of |var_q - var_post|."""
    dm, dv = [], []
    for x in xs:
        m, v = posterior_moments(x)
        mq, vq = q_moments(model, x)
        dm.append(abs(mq - m))
        dv.append(abs(vq - v))
    return {"mean_err": sum(dm) / len(dm), "var_err": sum(dv) / len(dv)}


if __name__ == "__main__":  # a quick look: python tests/avb_toy.py
    import time

    for x in TEST_X:
        print("posterior", x, posterior_moments(x))
    for kind, ac in (("vae", True), ("avb", True), ("avb", False)):
        t0 = time.perf_counter()
        m = train_toy(kind, adaptive_contrast=ac)
        print(kind, "AC" if ac else "", moment_errors(m), f"{time.perf_counter() - t0:.1f}s",
              [tuple(round(v, 3) for v in q_moments(m, x)) for x in TEST_X])

