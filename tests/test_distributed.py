"""Data-parallel training (training/distributed.py, vaekit/launch.py) on this CPU with gloo.

Two processes of a small model on the digits: both ranks end with the same weights, within 1e-5 of
one process with the same global batch and seed; only rank 0 writes; a run whose rank 1 is killed
after an epoch stops with one line and, resumed, ends exactly where the uninterrupted run does;
bad inputs are one line and exit 2, before anything starts.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vaekit.cli import main
from vaekit.training.distributed import GlobalBatchNoise

HOOKS = Path(__file__).parent / "dist_hooks"
ARGS = ["--data", "digits", "--device", "cpu", "--epochs", "3", "--batch-size", "64", "--hidden", "64",
        "--latent-dim", "4", "--seed", "3", "--checkpoint-every", "0", "--quiet"]
RUN_FILES = {"config.json", "metrics.jsonl", "model.safetensors", "last.safetensors", "last.previous.safetensors",
             "evaluation.json", "report.html", "reconstructions.png", "samples.png", "training_curves.png",
             "kl_per_dim.png"}


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = os.pathsep.join([str(HOOKS), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


def _torchrun(out: Path, *extra: str, **env: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "vaekit", "train", *ARGS, "--out", str(out), *extra]
    return subprocess.run(cmd, env=_env(**env), capture_output=True, text=True, timeout=300)


def _vaekit(*args: str, **env: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "vaekit", "train", *args]
    return subprocess.run(cmd, env=_env(**env), capture_output=True, text=True, timeout=300)


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], prefix: str = "") -> float:
    keys = [k for k in a if k.startswith(prefix)]
    assert keys and set(keys) == {k for k in b if k.startswith(prefix)}
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in keys)


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    """One uninterrupted two-process run (torchrun, as the README's command), its ranks' weights dumped."""
    d = tmp_path_factory.mktemp("two")
    r = _torchrun(d / "run", VAEKIT_TEST_DUMP=str(d))
    assert r.returncode == 0, r.stderr[-3000:]
    return d


def test_two_processes_agree_and_match_one(two, tmp_path):
    r0, r1 = load_file(str(two / "rank0.safetensors")), load_file(str(two / "rank1.safetensors"))
    assert all(torch.equal(r0[k], r1[k]) for k in r0)  # every rank holds the same model and Adam state
    one = _vaekit(*ARGS, "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    a, b = load_file(str(two / "run" / "last.safetensors")), load_file(str(tmp_path / "one" / "last.safetensors"))
    assert _max_diff(a, b, "model.") < 1e-5
    assert _max_diff(a, b, "optim.") < 1e-5
    # only rank 0 wrote: one record per epoch, the one-process files and nothing else
    run = two / "run"
    assert {p.name for p in run.iterdir()} == RUN_FILES
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    ones = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in recs] == [0, 1, 2] and [r["step"] for r in recs] == [r["step"] for r in ones]
    assert recs[-1]["train_loss"] == pytest.approx(ones[-1]["train_loss"], abs=1e-4)  # global, not rank 0's half
    assert recs[-1]["val_elbo"] == pytest.approx(ones[-1]["val_elbo"], abs=0.2)  # reduced over both halves


def test_killed_rank_stops_with_one_line_and_resume_ends_where_uninterrupted_does(two, tmp_path):
    out = tmp_path / "run"
    r = _vaekit("--nproc", "2", *ARGS, "--out", str(out), VAEKIT_TEST_KILL_AFTER="1")
    assert r.returncode == 1
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "process 1 of 2 was killed by SIGKILL" in lines[0] and "--resume" in lines[0], r.stderr
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1  # epoch 1 saved whole
    load_file(str(out / "last.safetensors"))
    r = _vaekit("--nproc", "2", "--out", str(out), "--resume", "--quiet")
    assert r.returncode == 0, r.stderr
    a, b = load_file(str(two / "run" / "last.safetensors")), load_file(str(out / "last.safetensors"))
    assert _max_diff(a, b, "model.") == 0.0 and _max_diff(a, b, "optim.") == 0.0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3


@pytest.mark.parametrize("extra, says", [
    (["--nproc", "0"], "--nproc must be at least 1"),
    (["--nproc", "999"], "is more than this machine's"),
    (["--nproc", "2", "--batch-size", "63"], "does not split evenly over 2 processes"),
])
def test_bad_launch_is_one_line_exit_2_nothing_written(tmp_path, capsys, extra, says):
    out = tmp_path / "run"
    assert main(["train", "--data", "digits", "--out", str(out), "--device", "cpu", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0]
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="NCCL is available here")
def test_nccl_without_gpu_is_one_line(tmp_path, capsys):
    for extra in (["--nproc", "2"], []):
        assert main(["train", "--data", "digits", "--out", str(tmp_path / "r"), "--dist-backend", "nccl", *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "nccl needs GPUs" in err[0]
    assert not (tmp_path / "r").exists()


def test_under_torchrun_an_uneven_batch_is_one_line(tmp_path, capsys, monkeypatch):
    """What each process of ``torchrun ... -m vaekit train --batch-size 63`` finds (rank 0 says it)."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main(["train", "--data", "digits", "--out", str(tmp_path / "r"), "--batch-size", "63"]) == 2
    assert "does not split evenly" in capsys.readouterr().err
    monkeypatch.setenv("RANK", "1")
    assert main(["train", "--data", "digits", "--out", str(tmp_path / "r"), "--batch-size", "63"]) == 2
    assert capsys.readouterr().err == ""
    assert main(["train", "--data", "digits", "--nproc", "2"]) == 2  # --nproc inside torchrun: no
    assert not (tmp_path / "r").exists()


def test_global_batch_noise_gives_each_process_its_rows():
    """Rows [lo, hi) of a batch of n draw what one process draws for those rows."""
    n, lo, hi = 10, 4, 7
    mu = torch.zeros(n, 6)[:, :3]  # a non-contiguous view, as the encoder's chunk is
    draws = [lambda m: torch.randn_like(mu[:m]), lambda m: torch.randn(5, m, 3), lambda m: torch.rand((m, 2)),
             lambda m: torch.randint(0, 9, (m,)), lambda m: torch.empty(m, 4).normal_(1.0, 2.0),
             lambda m: torch.randn(2, 2)]  # the last has no batch dimension: drawn as it is
    torch.manual_seed(0)
    full = [f(n) for f in draws]
    torch.manual_seed(0)
    with GlobalBatchNoise(lo, hi, n):
        part = [f(hi - lo) for f in draws]
    for f, p in zip(full, part):
        if f.shape[0] == n:
            assert torch.equal(f[lo:hi], p)
        elif f.dim() == 3:
            assert torch.equal(f[:, lo:hi], p)
        else:
            assert torch.equal(f, p)


def test_two_processes_streaming_from_disk_train_the_in_memory_model(tmp_path):
    """Two processes reading a .npy a batch at a time (--data-in-memory no) end with the weights of two
    processes given the same data in memory."""
    import numpy as np
    from sklearn.datasets import load_digits

    np.save(tmp_path / "digits.npy", (load_digits().images / 16).astype(np.float32))
    args = ["--data", str(tmp_path / "digits.npy"), "--device", "cpu", "--epochs", "2", "--batch-size", "64",
            "--hidden", "32", "--latent-dim", "3", "--seed", "1", "--quiet"]
    outs = {}
    for mode in ("no", "yes"):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "vaekit",
               "train", *args, "--data-in-memory", mode, "--out", str(tmp_path / mode)]
        r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        outs[mode] = load_file(str(tmp_path / mode / "model.safetensors"))
    assert all(torch.equal(outs["no"][k], outs["yes"][k]) for k in outs["yes"])


def test_two_processes_train_the_hand_derived_aae_as_one_does(tmp_path):
    """The several-player hand-derived step under data parallelism: each player's gradients averaged
    over the processes before its update, the same weights as one process with the same batch."""
    aae = [*ARGS, "--epochs", "2", "--model", "aae", "--encoder", "gaussian", "--critic-hidden", "32"]  # (the last --epochs counts)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "vaekit", "train", *aae, "--out", str(tmp_path / "two")],
                       env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    one = _vaekit(*aae, "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    a, b = load_file(str(tmp_path / "two" / "last.safetensors")), load_file(str(tmp_path / "one" / "last.safetensors"))
    assert any(k.startswith("optim.discriminator.") for k in a)
    assert _max_diff(a, b, "model.") < 1e-4


_SIGTERM_AS_A_LOST_PEER_UNWINDS = """
import os, signal, sys, time
from vaekit import cli
from vaekit.training.distributed import World, raise_if_peer_lost

def _work(args):
    try:
        raise_if_peer_lost(World(rank=0, size=2), RuntimeError("Connection reset by peer"))
    finally:
        os.kill(os.getpid(), signal.SIGTERM)  # the agent's SIGTERM to the processes left, as this one unwinds
        time.sleep(0.5)

cli._check_outputs_spare_inputs = _work
sys.exit(cli.main(["train", "--data", "digits", "--out", sys.argv[1]]))
"""


def test_the_agents_sigterm_does_not_turn_a_lost_peer_into_interrupted(tmp_path):
    """Rank 0 of a launched run whose peer died stays silent (the launcher says which process stopped)
    with the lost peer's exit status, even when the agent's SIGTERM lands while it unwinds."""
    env = {**_env(), "RANK": "0", "WORLD_SIZE": "2", "VAEKIT_LAUNCHER": "1"}
    r = subprocess.run([sys.executable, "-c", _SIGTERM_AS_A_LOST_PEER_UNWINDS, str(tmp_path / "run")], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stderr.strip() == "", (r.returncode, r.stderr)
