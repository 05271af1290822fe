"""Time one IWAE training step (loss, backward, Adam) on MNIST-sized data, autograd path (or, with
``--run``, one step of any trained MLP run's model through its loss).

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_iwae_step.py [--k 50] [--batch 100] [--layers 1|2]
        [--steps 30] [--precision highest|medium] [--gradient-estimator reparam|dreg] [--glibc-default] [--keep-denormals] [--profile]
        [--run RUN_DIR [--data-dir DIR]]

Architecture: Burda et al. 2015 (tanh, Bernoulli): 1 layer 784-200-200-50; 2 layers adds
[100, 100] -> z2 (50) on z1 (100). Random binary data and fresh weights, or with ``--run`` a
trained run's model (its ``model.safetensors``, layers and k) stepped on its own training images
(dynamically binarized runs: binarized afresh each step): subnormal numbers, and so the time of a
step at fp32 without flushing them, depend on the weights and the data. The trainer's CPU memory setting (``vaekit.training.memory.keep_freed_memory``) is
applied unless ``--glibc-default``, and so are its float settings (``vaekit.numerics.float_mode``:
the precision, subnormals flushed to zero unless ``--keep-denormals``). Prints one JSON object: median and mean seconds per step, and the implied seconds per
60,000-image epoch, and the median CPU seconds per step (user + system of this process: less
disturbed than wall time when other jobs share the cores). ``--profile`` prints torch.profiler's table of the most expensive operators
(the profiler inflates small operators; use it for ranking, not for totals).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def build(layers: int, k: int, estimator: str = "reparam"):
    from vaekit.data.spec import DataSpec
    from vaekit.models import ModelConfig, build_model

    kw = dict(model="iwae", k=k, hidden=[200, 200], activation="tanh", likelihood="bernoulli",
              gradient_estimator=estimator)
    kw.update(latent_dim=100, latent_dim2=50, hidden2=[100, 100]) if layers == 2 else kw.update(latent_dim=50)
    return build_model(ModelConfig(**kw), DataSpec((1, 28, 28), "binary"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--k", type=int, default=50)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--layers", type=int, default=1, choices=[1, 2])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--precision", default="highest", choices=["highest", "high", "medium"],
                   help="torch float32 matmul precision (medium: bfloat16 matmuls on AMX CPUs)")
    p.add_argument("--gradient-estimator", default="reparam", choices=["reparam", "dreg"])
    p.add_argument("--glibc-default", action="store_true", help="leave malloc as it is (no keep_freed_memory)")
    p.add_argument("--keep-denormals", action="store_true", help="do not flush subnormal floats to zero")
    p.add_argument("--run", default=None, help="a trained MLP run directory, VAE or IWAE (default: fresh IWAE weights, random data)")
    p.add_argument("--data-dir", default=None, help="with --run: where its data is (default: the saved path)")
    p.add_argument("--profile", action="store_true")
    a = p.parse_args()
    if not a.glibc_default:
        from vaekit.training.memory import keep_freed_memory

        keep_freed_memory()
    from vaekit.numerics import float_mode

    with float_mode(a.precision, flush_denormals=not a.keep_denormals):
        run(a)


def run(a: argparse.Namespace) -> None:
    torch.manual_seed(0)
    if a.run:
        from vaekit.run import load, load_run_data, read_config

        cfg, _, _ = read_config(a.run)
        m = load(a.run)
        m.config.gradient_estimator = a.gradient_estimator
        a.layers, a.k = (2 if cfg.model.latent_dim2 else 1), (m.config.k if cfg.model.model == "iwae" else 1)
        data = load_run_data(cfg, a.data_dir)
        xs = data.train.x[: (a.steps + 5) * a.batch].reshape(a.steps + 5, a.batch, *data.spec.shape)
        if data.dynamic_binarize:
            xs = (torch.rand(xs.shape) < xs).to(xs.dtype)
    else:
        m = build(a.layers, a.k, a.gradient_estimator)
        xs = (torch.rand(a.steps + 5, a.batch, 1, 28, 28) < 0.3).float()
    m.train()
    from vaekit.training.optim import Adam

    opt = Adam(m.parameters(), lr=1e-3)

    def step(x):
        out = m.loss(x)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()

    for i in range(5):
        step(xs[i])
    times, cpu = [], []
    for i in range(a.steps):
        t0, c0 = time.perf_counter(), time.process_time()
        step(xs[5 + i])
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    med = statistics.median(times)
    print(json.dumps({"run": a.run, "layers": a.layers, "k": a.k, "batch": a.batch, "threads": torch.get_num_threads(),
                      "precision": a.precision, "flush_denormals": not a.keep_denormals,
                      "gradient_estimator": a.gradient_estimator,
                      "median_step_s": round(med, 4), "mean_step_s": round(statistics.mean(times), 4),
                      "median_cpu_step_s": round(statistics.median(cpu), 4),
                      "epoch_s_60k": round(med * 60000 / a.batch, 1)}))
    if a.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for i in range(5):
                step(xs[i])
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


if __name__ == "__main__":
    main()
