"""pythae 0.1.2's Adversarial_AE or VAEGAN on the arrays bench_peer_pythae.py gives it; run by that script
inside bench/.envs/pythae (never imported by vaekit, never run in vaekit's venv).

Networks (the same sizes are given to vaekit): encoder 784-400(ReLU)-{mu, log_var}(20), decoder
20-400(ReLU)-784 + sigmoid (vaekit's default MLP), and pythae's default discriminator shape, an MLP of
one hidden layer of 256 ReLU units and a sigmoid output (``Discriminator_MLP``), on z (20 -> 256 -> 1)
for the AAE and on x (784 -> 256 -> 1) for the VAE-GAN; ``--hidden`` / ``--critic-hidden`` change the
widths. Everything else is pythae's own: the models' losses, ``TrainingPipeline`` with pythae's
``AdversarialTrainer`` (AAE) or ``CoupledOptimizerAdversarialTrainer`` (VAE-GAN), Adam for every
player, its data loader, progress bar and logging. Two settings differ from pythae's defaults, both
as options here: the AAE's reconstruction loss is "bce" (pythae defaults to "mse"; vaekit's MNIST
likelihood is Bernoulli), and the VAE-GAN's feature-space reconstruction reads the discriminator's
last HIDDEN layer (``--recon-layer``; pythae's default -1 reads its last layer, the one-unit sigmoid
score, which leaves no feature space to reconstruct in; give -1 for pythae's literal default).

Timing: an epoch's training time runs from pythae's ``on_train_step_begin`` (start of the epoch's
train loop) to its last ``on_train_step_end`` (after the last batch's optimizer steps and .item()
calls), so model building, data preprocessing, pythae's checks, the per-epoch best-model deepcopy
and the final save are all outside it. examples_per_s = examples trained on / summed epoch times.

After training, ``--n-samples`` decoder means (sigmoid outputs) of prior draws z ~ N(0, I) from the
trained (last-epoch) model are written to ``--samples-out`` as float32 (n, 784). Prints one JSON
object on stdout; pythae's logs and bars go to stderr.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time

import numpy as np
import torch
from torch import nn


def int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def build(args: argparse.Namespace, in_dim: int):
    from pythae.models import VAEGAN, Adversarial_AE, Adversarial_AE_Config, VAEGANConfig
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseDiscriminator, BaseEncoder

    def mlp(widths: list[int]) -> list[nn.Module]:
        out: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            out += [nn.Linear(a, b), nn.ReLU()]
        return out

    class Encoder(BaseEncoder):
        def __init__(self):
            BaseEncoder.__init__(self)
            self.body = nn.Sequential(*mlp([in_dim, *args.hidden]))
            self.mu = nn.Linear(args.hidden[-1], args.latent_dim)
            self.log_var = nn.Linear(args.hidden[-1], args.latent_dim)

        def forward(self, x):
            h = self.body(x.reshape(x.shape[0], -1))
            return ModelOutput(embedding=self.mu(h), log_covariance=self.log_var(h))

    class Decoder(BaseDecoder):
        def __init__(self):
            BaseDecoder.__init__(self)
            self.body = nn.Sequential(*mlp([args.latent_dim, *args.hidden[::-1]]), nn.Linear(args.hidden[0], in_dim),
                                      nn.Sigmoid())

        def forward(self, z):
            return ModelOutput(reconstruction=self.body(z))

    class Discriminator(BaseDiscriminator):
        """pythae's Discriminator_MLP (Linear+ReLU layers, then Linear(., 1)+Sigmoid) with chosen widths,
        and its forward contract (``output_layer_levels`` -> ``embedding_layer_i``)."""

        def __init__(self, d_in: int):
            BaseDiscriminator.__init__(self)
            widths = [d_in, *args.critic_hidden]
            self.layers = nn.ModuleList([nn.Sequential(nn.Linear(a, b), nn.ReLU())
                                         for a, b in zip(widths[:-1], widths[1:])])
            self.layers.append(nn.Sequential(nn.Linear(widths[-1], 1), nn.Sigmoid()))
            self.depth = len(self.layers)

        def forward(self, z, output_layer_levels=None):
            output = ModelOutput()
            levels = output_layer_levels or []
            max_depth = self.depth if (not levels or -1 in levels) else max(levels)
            out = z.reshape(z.shape[0], -1)
            for i in range(max_depth):
                out = self.layers[i](out)
                if i + 1 in levels:
                    output[f"embedding_layer_{i + 1}"] = out
                if i + 1 == self.depth:
                    output["embedding"] = out
            return output

    if args.model == "aae":
        cfg = Adversarial_AE_Config(input_dim=(in_dim,), latent_dim=args.latent_dim, reconstruction_loss=args.aae_recon)
        return Adversarial_AE(cfg, encoder=Encoder(), decoder=Decoder(), discriminator=Discriminator(args.latent_dim))
    layer = len(args.critic_hidden) if args.recon_layer is None else args.recon_layer
    cfg = VAEGANConfig(input_dim=(in_dim,), latent_dim=args.latent_dim, reconstruction_layer=layer)
    return VAEGAN(cfg, encoder=Encoder(), decoder=Decoder(), discriminator=Discriminator(in_dim))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help=".npz with train_x (N, D) float32 in [0, 1]")
    p.add_argument("--model", choices=["aae", "vaegan"], required=True)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3, help="every player's Adam learning rate")
    p.add_argument("--hidden", type=int_list, default=[400])
    p.add_argument("--latent-dim", type=int, default=20)
    p.add_argument("--critic-hidden", type=int_list, default=[256])
    p.add_argument("--aae-recon", choices=["bce", "mse"], default="bce")
    p.add_argument("--recon-layer", type=int, default=None,
                   help="VAE-GAN: discriminator layer of the feature reconstruction (default: its last hidden "
                        "layer; -1: pythae's default, the output layer)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-samples", type=int, default=10000)
    p.add_argument("--samples-out", required=True)
    args = p.parse_args()

    from importlib.metadata import version

    from pythae.pipelines import TrainingPipeline
    from pythae.trainers import AdversarialTrainerConfig, CoupledOptimizerAdversarialTrainerConfig
    from pythae.trainers.training_callbacks import TrainingCallback

    x = np.load(args.data)["train_x"].astype(np.float32)
    torch.manual_seed(args.seed)
    model = build(args, x.shape[1])

    class Timer(TrainingCallback):
        def __init__(self):
            self.epochs: list[dict] = []
            self.t0 = self.t_last = 0.0
            self.steps = 0

        def on_train_step_begin(self, training_config, **kw):
            self.t0 = self.t_last = time.perf_counter()
            self.steps = 0

        def on_train_step_end(self, training_config, **kw):
            self.t_last = time.perf_counter()
            self.steps += 1

        def on_log(self, training_config, logs, **kw):
            self.epochs.append({"epoch": len(self.epochs) + 1, "train_s": self.t_last - self.t0, "steps": self.steps,
                                **{k: float(v) for k, v in logs.items() if isinstance(v, (int, float))}})

    out_dir = tempfile.mkdtemp(prefix="pythae_peer_")
    common = dict(output_dir=out_dir, num_epochs=args.epochs, per_device_train_batch_size=args.batch_size,
                  per_device_eval_batch_size=args.batch_size, learning_rate=args.lr, optimizer_cls="Adam",
                  seed=args.seed, no_cuda=True, keep_best_on_train=True)  # no eval set: keep_best_on_train avoids
    if args.model == "aae":                                         # pythae's unbound best_model at the end
        config = AdversarialTrainerConfig(**common, autoencoder_learning_rate=args.lr,
                                          discriminator_learning_rate=args.lr)
    else:
        config = CoupledOptimizerAdversarialTrainerConfig(**common, encoder_learning_rate=args.lr,
                                                          decoder_learning_rate=args.lr,
                                                          discriminator_learning_rate=args.lr)
    timer = Timer()
    t_start = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        pipeline = TrainingPipeline(model=model, training_config=config)
        pipeline(train_data=x, eval_data=None, callbacks=[timer])
    wall = time.perf_counter() - t_start
    shutil.rmtree(out_dir, ignore_errors=True)
    trainer = pipeline.trainer
    trainer_name = type(trainer).__name__
    trained = trainer.model  # the live, last-epoch model (pythae trains in place)

    trained.eval()
    gen = torch.Generator().manual_seed(args.seed + 1)
    with torch.no_grad():
        z = torch.randn(args.n_samples, args.latent_dim, generator=gen)
        samples = torch.cat([trained.decoder(zb).reconstruction for zb in z.split(1000)])
    np.save(args.samples_out, samples.reshape(args.n_samples, -1).numpy().astype(np.float32))

    train_s = sum(e["train_s"] for e in timer.epochs)
    seen = len(x) * len(timer.epochs)
    mc = trained.model_config
    print(json.dumps({
        "library": "pythae", "pythae_version": version("pythae"), "torch_version": torch.__version__,
        "numpy_version": np.__version__, "python_version": platform.python_version(),
        "torch_num_threads": torch.get_num_threads(), "model": args.model, "pythae_model": trained.model_name,
        "trainer": trainer_name, "epochs": len(timer.epochs), "train_n": len(x), "batch_size": args.batch_size,
        "lr": args.lr, "examples_per_s": seen / train_s if train_s > 0 else None, "train_loop_s": train_s,
        "wall_s_pipeline": wall, "per_epoch": timer.epochs,
        "per_epoch_examples_per_s": [len(x) / e["train_s"] for e in timer.epochs if e["train_s"] > 0],
        "model_config": {k: v for k, v in vars(mc).items() if isinstance(v, (int, float, str, bool, type(None)))},
        "optimizers": {n: repr(getattr(trainer, n)) for n in ("autoencoder_optimizer", "encoder_optimizer",
                                                               "decoder_optimizer", "discriminator_optimizer")
                       if hasattr(trainer, n)},
        "networks": {"encoder": repr(trained.encoder), "decoder": repr(trained.decoder),
                     "discriminator": repr(trained.discriminator)},
        "n_samples": args.n_samples, "samples": args.samples_out, "pid": os.getpid(),
    }))


if __name__ == "__main__":
    main()
