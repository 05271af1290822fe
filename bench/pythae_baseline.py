"""Baseline: the "seed tutorial" MNIST VAE trained with pythae 0.1.2 on CPU.

Run (from the repository root; any python3 >= 3.10 works as the launcher):

    /work/main/.venv/bin/python bench/pythae_baseline.py --epochs 10 --out bench/out/pythae.json

The first run creates bench/.envs/pythae/ (python -m venv), installs torch==2.13.0 first and
then pythae==0.1.2 under a constraints file pinning torch, so pythae is never a vaekit
dependency. The script then re-runs itself inside that env (hidden --_worker flag) and prints
ONE JSON object on stdout (pythae's logs and progress bars go to stderr).

Model: encoder 784-400(ReLU)-{mu, log_var}(20), decoder 20-400(ReLU)-784 + sigmoid,
VAEConfig(reconstruction_loss="bce", latent_dim=20), Adam lr 1e-3, batch 128 (train and eval),
the full 60000 training images, pythae's own eval loop on the 10000 test images, CPU.

Loss units: pythae 0.1.2 VAE.loss_function computes
    F.binary_cross_entropy(recon, x, reduction="none").sum(dim=-1) + KL(q(z|x) || N(0, I)),
then .mean(dim=0): a sum over the 784 pixels and a mean over the batch, i.e. nats per example.
test_neg_elbo below is that -ELBO with ONE posterior sample z ~ q(z|x) per test image (the usual
single-sample estimate; pythae's forward always samples, also in eval mode), averaged exactly
over the 10000 test images. It is computed in an on_epoch_end callback with the global torch
RNG state saved and restored, so training randomness is what a plain pythae user gets; its cost
is excluded from train time, time-to-quality and wall_s_end_to_end (reported as extra_eval_s).

Timing: train_s is one epoch's pythae train loop (on_train_step_begin -> on_eval_step_begin:
data loader, forward/backward/Adam, loss.item(), tqdm), so train_samples_per_s excludes every
evaluation. wall_s_end_to_end runs from this worker process's start (/proc) to the return of the
pipeline: imports, IDX loading, pythae's preprocessing and sanity checks, all epochs with pythae's
own per-epoch eval + best-model deepcopy (the last one is the final test evaluation), and its
final model save; minus extra_eval_s. time_to_neg_elbo_100_s sums train_s up to the first epoch
with test_neg_elbo <= 100 (null if never reached). With --stop-at NATS training ends after the
first epoch whose test_neg_elbo <= NATS (stopped_early: true; pythae's final save is skipped).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ENV_DIR = HERE / ".envs" / "pythae"
ENV_PY = ENV_DIR / "bin" / "python"
READY = ENV_DIR / ".bench-ready"
TORCH, PYTHAE = "torch==2.13.0", "pythae==0.1.2"
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def _seconds_since_process_start(fallback_t0: float) -> float:
    """Wall seconds since this process was exec'd (Linux /proc), else since fallback_t0."""
    try:
        stat = Path("/proc/self/stat").read_text()
        start_ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22: starttime
        return time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return time.perf_counter() - fallback_t0


_T0 = time.perf_counter()


def ensure_env() -> float | None:
    """Create bench/.envs/pythae if needed; return seconds spent creating it (None if cached)."""
    if READY.exists():
        return None
    t = time.perf_counter()
    print(f"[pythae_baseline] creating {ENV_DIR} ...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(ENV_DIR)], check=True)
    pip = [str(ENV_PY), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run(pip + [TORCH], check=True)  # the local CPU wheel (find-links), first
    constraints = ENV_DIR / "constraints.txt"
    constraints.write_text(TORCH + "\n")
    subprocess.run(pip + ["-c", str(constraints), PYTHAE], check=True)
    READY.write_text(f"{TORCH}\n{PYTHAE}\n")
    return time.perf_counter() - t


def check_data(data_dir: str) -> None:
    names = ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz")
    if not all((Path(data_dir) / n).is_file() for n in names):
        sys.exit(f"pythae_baseline: MNIST IDX .gz files not found in {data_dir} (use --data-dir)")


def launcher(argv: list[str]) -> None:
    check_data(parse_args(argv).data_dir)
    env_s = ensure_env()
    proc = subprocess.run([str(ENV_PY), str(Path(__file__).resolve()), "--_worker", *argv],
                          stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        sys.exit(proc.returncode)
    result = json.loads(proc.stdout)
    result["env_setup_s"] = None if env_s is None else round(env_s, 1)
    emit(result, parse_args(argv).out)


def emit(result: dict, out: str | None) -> None:
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")


def worker(args: argparse.Namespace) -> dict:
    import contextlib
    import datetime
    import platform
    import shutil
    import tempfile
    from importlib.metadata import version

    import numpy as np
    import torch
    from torch import nn
    from pythae.data.datasets import DatasetOutput
    from pythae.models import VAE, VAEConfig
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder
    from pythae.pipelines import TrainingPipeline
    from pythae.trainers import BaseTrainerConfig
    from pythae.trainers.training_callbacks import TrainingCallback

    sys.path.insert(0, str(HERE))
    from _mnist import load_mnist

    import_s = _seconds_since_process_start(_T0)
    if not torch.__version__.startswith(TORCH.split("==")[1]):
        print(f"pythae_baseline: WARNING torch {torch.__version__} in {ENV_DIR}", file=sys.stderr)

    check_data(args.data_dir)
    x_train, _ = load_mnist(args.data_dir, "train")
    x_test, _ = load_mnist(args.data_dir, "test")
    assert x_train.shape == (60000, 784) and x_test.shape == (10000, 784)
    data_load_s = _seconds_since_process_start(_T0) - import_s

    class Encoder(BaseEncoder):
        def __init__(self):
            BaseEncoder.__init__(self)
            self.fc1 = nn.Linear(784, 400)
            self.fc_mu, self.fc_logvar = nn.Linear(400, 20), nn.Linear(400, 20)

        def forward(self, x):
            h = torch.relu(self.fc1(x.reshape(-1, 784)))
            return ModelOutput(embedding=self.fc_mu(h), log_covariance=self.fc_logvar(h))

    class Decoder(BaseDecoder):
        def __init__(self):
            BaseDecoder.__init__(self)
            self.fc3, self.fc4 = nn.Linear(20, 400), nn.Linear(400, 784)

        def forward(self, z):
            return ModelOutput(reconstruction=torch.sigmoid(self.fc4(torch.relu(self.fc3(z)))))

    test_t = torch.from_numpy(x_test)

    class Bench(TrainingCallback):
        """Times each train loop; measures one-sample test -ELBO after each epoch."""

        def __init__(self):
            self.epochs, self.extra_eval_s, self.setup_s = [], 0.0, None
            self._train_t0 = self._eval_t0 = 0.0

        def on_train_step_begin(self, training_config, **kw):  # start of an epoch's train loop
            if self.setup_s is None:  # imports + data + pipeline preprocessing/sanity checks
                self.setup_s = _seconds_since_process_start(_T0)
            self._train_t0 = time.perf_counter()

        def on_eval_step_begin(self, training_config, **kw):  # train loop done, eval starts
            self._eval_t0 = time.perf_counter()
            self.epochs.append({"epoch": len(self.epochs) + 1,
                                "train_s": self._eval_t0 - self._train_t0})

        def on_epoch_end(self, training_config, **kw):  # after pythae's eval + best deepcopy
            t, model = time.perf_counter(), kw["model"]
            self.epochs[-1]["pythae_eval_s"] = t - self._eval_t0
            rng, was_training = torch.get_rng_state(), model.training
            torch.manual_seed(12345)
            model.eval()
            with torch.no_grad():
                total = sum(model(DatasetOutput(data=xb)).loss.item() * len(xb)
                            for xb in test_t.split(1000))
            model.train(was_training)
            torch.set_rng_state(rng)
            self.epochs[-1]["test_neg_elbo"] = total / len(test_t)
            self.extra_eval_s += time.perf_counter() - t
            if args.stop_at is not None and self.epochs[-1]["test_neg_elbo"] <= args.stop_at:
                raise _Reached

        def on_log(self, training_config, logs, **kw):
            self.epochs[-1]["pythae_train_loss"] = logs.get("train_epoch_loss")
            self.epochs[-1]["pythae_eval_loss"] = logs.get("eval_epoch_loss")

    torch.manual_seed(args.seed)
    model = VAE(VAEConfig(input_dim=(784,), latent_dim=20, reconstruction_loss="bce"),
                encoder=Encoder(), decoder=Decoder())
    out_dir = tempfile.mkdtemp(prefix="pythae_bench_")  # pythae saves best/final model here
    config = BaseTrainerConfig(output_dir=out_dir, num_epochs=args.epochs, learning_rate=1e-3,
                               per_device_train_batch_size=128, per_device_eval_batch_size=128,
                               optimizer_cls="Adam", seed=args.seed, no_cuda=True)
    bench, stopped = Bench(), False
    with contextlib.redirect_stdout(sys.stderr):  # keep stdout for the JSON only
        try:
            TrainingPipeline(model=model, training_config=config)(
                train_data=x_train, eval_data=x_test, callbacks=[bench])
        except _Reached:
            stopped = True
    wall = _seconds_since_process_start(_T0) - bench.extra_eval_s
    shutil.rmtree(out_dir, ignore_errors=True)

    cum, t100 = 0.0, None
    for e in bench.epochs:
        cum += e["train_s"]
        if t100 is None and e["test_neg_elbo"] <= 100.0:
            t100 = cum
        for k in ("train_s", "pythae_eval_s", "test_neg_elbo", "pythae_train_loss",
                  "pythae_eval_loss"):
            e[k] = None if e.get(k) is None else round(float(e[k]), 4)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor() or "unknown")
    return {
        "library": "pythae", "model": "mnist seed-tutorial VAE 784-400-20, bce",
        "train_samples_per_s": round(len(x_train) * len(bench.epochs) / cum, 1),
        "wall_s_end_to_end": round(wall, 2),
        "epochs": len(bench.epochs), "stopped_early": stopped,
        "per_epoch": bench.epochs,
        "time_to_neg_elbo_100_s": None if t100 is None else round(t100, 2),
        "test_neg_elbo_estimator": "one z ~ q(z|x) per test image, nats/example (BCE sum + KL)",
        "extra_eval_s": round(bench.extra_eval_s, 2),
        "import_s": round(import_s, 2), "data_load_s": round(data_load_s, 2),
        "setup_s": round(bench.setup_s, 2),
        "torch_version": torch.__version__, "pythae_version": version("pythae"),
        "numpy_version": np.__version__, "python_version": platform.python_version(),
        "cpu_model": cpu, "cpu_count": os.cpu_count(),
        "torch_num_threads": torch.get_num_threads(),
        "torch_num_interop_threads": torch.get_num_interop_threads(),
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


class _Reached(Exception):
    """Raised from the epoch-end callback once --stop-at is reached, to end pythae's loop."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--data-dir", default=str(DEFAULT_DATA))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="also write the JSON result to this file")
    p.add_argument("--stop-at", type=float, default=None, help="stop after the first epoch with test -ELBO <= this")
    p.add_argument("--_worker", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


if __name__ == "__main__":
    _args = parse_args(sys.argv[1:])
    if _args._worker:
        print(json.dumps(worker(_args)))
    else:
        launcher(sys.argv[1:])
