"""The M2 of pyro's examples/vae/ss_vae_M2.py, rewritten against pyro's public API; run by
bench_peer_pyro_m2.py inside bench/.envs/pyro (never imported by vaekit).

Same model, guide and recipe as pyro's example with its defaults: MLPs of one hidden layer of 500
softplus units (hidden weights initialised N(0, 0.001) as its custom MLP does), z of 50 dims,
Bernoulli pixels, q(z|x,y) with an exp scale, the class enumerated in parallel by TraceEnum_ELBO,
the auxiliary classification loss (Kingma et al.'s alpha) as a second SVI scaled by 46, Adam
(lr 0.00042, betas 0.9/0.999), batches of 200, and a labelled batch every
int(N / labelled) batches (pyro's "periodic_interval_batches"). Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np
import torch
import torch.nn as nn

import pyro
import pyro.distributions as dist
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO, config_enumerate
from pyro.optim import Adam


def cat_broadcast(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Concatenate on the last axis after broadcasting the leading (batch / enumeration) axes."""
    shape = torch.broadcast_shapes(a.shape[:-1], b.shape[:-1])
    return torch.cat([a.expand(*shape, a.shape[-1]), b.expand(*shape, b.shape[-1])], dim=-1)


def hidden_layer(n_in: int, n_out: int) -> nn.Linear:
    layer = nn.Linear(n_in, n_out)
    layer.weight.data.normal_(0, 0.001)
    layer.bias.data.normal_(0, 0.001)
    return layer


class SSVAE(nn.Module):
    def __init__(self, x_dim: int = 784, k: int = 10, z_dim: int = 50, hidden: int = 500, aux: float = 46.0):
        super().__init__()
        self.k, self.z_dim, self.aux = k, z_dim, aux
        self.encoder_y = nn.Sequential(hidden_layer(x_dim, hidden), nn.Softplus(), nn.Linear(hidden, k),
                                       nn.Softmax(dim=-1))
        self.encoder_z = nn.Sequential(hidden_layer(x_dim + k, hidden), nn.Softplus())
        self.z_loc, self.z_scale = nn.Linear(hidden, z_dim), nn.Linear(hidden, z_dim)
        self.decoder = nn.Sequential(hidden_layer(z_dim + k, hidden), nn.Softplus(), nn.Linear(hidden, x_dim),
                                     nn.Sigmoid())

    def model(self, xs, ys=None):
        pyro.module("ss_vae", self)
        with pyro.plate("data", xs.shape[0]):
            zs = pyro.sample("z", dist.Normal(xs.new_zeros(xs.shape[0], self.z_dim), 1.0).to_event(1))
            ys = pyro.sample("y", dist.OneHotCategorical(xs.new_ones(xs.shape[0], self.k) / self.k), obs=ys)
            loc = self.decoder(cat_broadcast(zs, ys))
            pyro.sample("x", dist.Bernoulli(loc, validate_args=False).to_event(1), obs=xs)

    def guide(self, xs, ys=None):
        with pyro.plate("data", xs.shape[0]):
            if ys is None:
                ys = pyro.sample("y", dist.OneHotCategorical(self.encoder_y(xs)))
            h = self.encoder_z(cat_broadcast(xs, ys))
            pyro.sample("z", dist.Normal(self.z_loc(h), torch.exp(self.z_scale(h))).to_event(1))

    def model_classify(self, xs, ys=None):
        pyro.module("ss_vae", self)
        with pyro.plate("data", xs.shape[0]):
            if ys is not None:
                with pyro.poutine.scale(scale=self.aux):
                    pyro.sample("y_aux", dist.OneHotCategorical(self.encoder_y(xs)), obs=ys)

    def guide_classify(self, xs, ys=None):
        pass


def accuracy(net: SSVAE, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float(torch.cat([net.encoder_y(x[i:i + 1000]).argmax(-1) for i in range(0, len(x), 1000)])
                     .eq(y).double().mean())


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True, help=".npz with train_x, train_y (-1 unlabelled), val_x, val_y, test_x, test_y")
    p.add_argument("--budget-s", type=float, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=200)
    args = p.parse_args()
    # labelled steps have no site to enumerate (y is observed), as in pyro's example: not a problem
    warnings.filterwarnings("ignore", message="TraceEnum_ELBO found no sample sites")
    pyro.set_rng_seed(args.seed)
    d = np.load(args.data)
    tx, ty = torch.from_numpy(d["train_x"]), torch.from_numpy(d["train_y"])
    eye = torch.eye(10)
    lab = ty >= 0
    xs_sup, ys_sup, xs_uns = tx[lab], eye[ty[lab]], tx[~lab]
    val = (torch.from_numpy(d["val_x"]), torch.from_numpy(d["val_y"]))
    test = (torch.from_numpy(d["test_x"]), torch.from_numpy(d["test_y"]))
    net = SSVAE()
    opt = Adam({"lr": 0.00042, "betas": (0.9, 0.999)})
    svi = SVI(net.model, config_enumerate(net.guide, "parallel", expand=True), opt,
              loss=TraceEnum_ELBO(max_plate_nesting=1))
    svi_aux = SVI(net.model_classify, net.guide_classify, opt, loss=Trace_ELBO())
    bs = args.batch_size
    periodic = max(1, int(len(tx) / len(xs_sup)))
    t_start, train_s, seen, epochs, best = time.perf_counter(), 0.0, 0, 0, (-1.0, None, 0)
    while True:
        t0 = time.perf_counter()
        up, sp = torch.randperm(len(xs_uns)), torch.randperm(len(xs_sup))
        n_uns, n_sup = -(-len(xs_uns) // bs), -(-len(xs_sup) // bs)
        u = s = 0
        for i in range(n_uns + n_sup):
            if (i % periodic == 1 and s < n_sup) or u >= n_uns:
                idx = sp[s * bs:(s + 1) * bs]
                xs, ys = xs_sup[idx], ys_sup[idx]
                svi.step(xs, ys)
                svi_aux.step(xs, ys)
                s += 1
            else:
                xs = xs_uns[up[u * bs:(u + 1) * bs]]
                svi.step(xs)
                u += 1
            seen += len(xs)
        dt = time.perf_counter() - t0
        train_s, epochs = train_s + dt, epochs + 1
        acc = accuracy(net, *val)
        if acc > best[0]:
            best = (acc, 100.0 * (1 - accuracy(net, *test)), epochs)
        if time.perf_counter() - t_start + dt > args.budget_s:
            break
    print(json.dumps({"examples_per_s": seen / train_s, "epochs": epochs, "best_epoch": best[2],
                      "val_accuracy": best[0], "test_error": best[1], "train_s": time.perf_counter() - t_start,
                      "pyro_version": pyro.__version__, "torch_version": torch.__version__}))


if __name__ == "__main__":
    main()
