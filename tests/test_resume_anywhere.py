"""Resume from any moment: kill -9 at random times, SIGTERM, damaged checkpoints."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from cli_helpers import cli as run_cli

ARGS = ["--data", "digits", "--hidden", "48", "--latent-dim", "6", "--batch-size", "4", "--seed", "5",
        "--checkpoint-every", "0.05", "--quiet"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


#: per model: the flags added to ARGS and the epochs of the SIGKILL test (the VAE-GAN's steps cost
#: ~10x the VAE's hand-derived ones: larger batches and fewer epochs keep its test as short)
KILLED = {"vae": ([], 40), "vaegan": (["--model", "vaegan", "--critic-hidden", "16", "--batch-size", "16"], 15)}


def _train(out: Path, epochs: int, resume: bool = False, extra: list[str] = ()) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "vaekit.cli", "train", *ARGS, *extra, "--epochs", str(epochs), "--out", str(out)]
    return subprocess.Popen(cmd + (["--resume"] if resume else []), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def _weights(path: Path) -> dict:
    return {k: v for k, v in load_file(str(path)).items() if k.startswith(("model.", "average.", "optim."))}


def _assert_same(a: Path, b: Path) -> None:
    wa, wb = _weights(a / "last.safetensors"), _weights(b / "last.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert (wa[k] == wb[k]).all(), k
    ma, mb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert all((ma[k] == mb[k]).all() for k in ma)


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None


@pytest.mark.parametrize("model", sorted(KILLED))
def test_sigkill_at_random_moments_then_resume_equals_uninterrupted(tmp_path, model):
    """Ten kills: two at random moments of start-up (before any checkpoint of that process), eight
    at a random moment after the process wrote its first checkpoint (so the kill lands inside
    training however slow the machine is to start). For a VAE and for a VAE-GAN (three players,
    three optimizers, the equilibrium rule's skipped updates)."""
    # VAE: ~0.15 s an epoch after ~2 s of start-up: kills land in several epochs before it ends
    extra, epochs = KILLED[model]
    ref = _train(tmp_path / "ref", epochs, extra=extra)
    assert ref.wait(timeout=300) == 0, ref.stderr.read()
    rng = random.Random(0)
    run = tmp_path / "killed"
    last = run / "last.safetensors"
    kills = inside = 0
    for attempt in range(10):
        before = _mtime(last)
        p = _train(run, epochs, resume=attempt > 0, extra=extra)
        if attempt in (0, 5):
            time.sleep(rng.uniform(0.2, 1.5))
        else:
            deadline = time.monotonic() + 120
            while _mtime(last) == before and p.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.5))
        if p.poll() is not None:  # finished before this kill
            break
        p.send_signal(signal.SIGKILL)
        p.wait()
        kills += 1
        if last.exists():
            from safetensors import safe_open
            import json
            with safe_open(str(last), "pt") as f:
                inside += bool(json.loads(f.metadata()["trainer_state"]).get("epoch_pos"))
    assert kills >= 6
    assert inside >= 1  # at least one kill landed after a checkpoint taken inside an epoch
    p = _train(run, epochs, resume=True, extra=extra)
    assert p.wait(timeout=300) == 0, p.stderr.read()
    _assert_same(tmp_path / "ref", run)
    rows = (run / "metrics.jsonl").read_text().splitlines()
    assert [int(r.split('"epoch": ')[1].split(",")[0]) for r in rows] == list(range(epochs))
    if model == "vaegan":
        assert any(k.startswith("optim.discriminator.") for k in _weights(run / "last.safetensors"))


def test_sigterm_writes_a_checkpoint_inside_the_epoch_and_resume_is_exact(tmp_path):
    ref = _train(tmp_path / "ref", 12)
    assert ref.wait(timeout=300) == 0
    p = _train(tmp_path / "run", 12)
    deadline = time.monotonic() + 120  # a loaded machine may take long to start: wait for the first checkpoint
    while not (tmp_path / "run" / "last.safetensors").exists() and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    assert p.poll() is None, "the run finished before it could be stopped"
    p.send_signal(signal.SIGTERM)
    err = p.stderr.read()
    assert p.wait(timeout=60) == 130 and "--resume" in err and "Traceback" not in err
    assert (tmp_path / "run" / "last.safetensors").exists()
    p = _train(tmp_path / "run", 12, resume=True)
    assert p.wait(timeout=300) == 0, p.stderr.read()
    _assert_same(tmp_path / "ref", tmp_path / "run")


def test_sigterm_while_starting_up_is_one_line_and_exit_130(tmp_path):
    p = _train(tmp_path / "run", 12)
    time.sleep(0.3)  # the CLI is still importing or loading data
    p.send_signal(signal.SIGTERM)
    err = p.stderr.read()
    code = p.wait(timeout=60)
    # a signal during Python's own start-up (before vaekit's handler exists) is a bare kill, -15
    assert code in (130, -signal.SIGTERM) and "Traceback" not in err


def test_a_damaged_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys):
    out = tmp_path / "r"
    tiny = ["--data", "digits", "--hidden", "16", "--latent-dim", "3", "--quiet", "--out", str(out)]
    assert run_cli(capsys, "train", *tiny, "--epochs", "2")[0] == 0
    last, prev = out / "last.safetensors", out / "last.previous.safetensors"
    assert prev.exists() and last.exists()
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # truncated
    code, _, err = run_cli(capsys, "train", *tiny, "--epochs", "3", "--resume")
    assert code == 0 and "last.safetensors" in err and "previous checkpoint" in err
    # with the previous one damaged too there is nothing to resume from: one line, exit 2
    for f in (out / "last.safetensors", out / "last.previous.safetensors"):
        f.write_bytes(b"garbage")
    code, _, err = run_cli(capsys, "train", *tiny, "--epochs", "4", "--resume")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "corrupt" in err and "move both aside" in err
    (out / "last.previous.safetensors").unlink()  # one damaged checkpoint and no other: the same advice
    code, _, err = run_cli(capsys, "train", *tiny, "--epochs", "4", "--resume")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "no previous checkpoint" in err and "move it aside" in err
    (out / "last.safetensors").rename(out / "damaged.safetensors")  # as advised: the run starts again
    code, _, err = run_cli(capsys, "train", *tiny, "--epochs", "1", "--resume")
    assert code == 0 and (out / "last.safetensors").exists()


@pytest.mark.parametrize("value", ["-1", "-0.5"])
def test_checkpoint_every_must_be_a_non_negative_number(tmp_path, capsys, value):
    code, _, err = run_cli(capsys, "train", "--data", "digits", "--checkpoint-every", value, "--out", str(tmp_path / "r"))
    assert code == 2 and "--checkpoint-every" in err and not (tmp_path / "r").exists()


def test_resume_of_a_run_that_saved_nothing_starts_it(tmp_path, capsys):
    """Killed before even its config was written: the same command with --resume starts the run."""
    out = tmp_path / "r"
    tiny = ["--data", "digits", "--hidden", "16", "--latent-dim", "3", "--quiet", "--out", str(out), "--epochs", "1"]
    code, _, err = run_cli(capsys, "train", *tiny, "--resume")
    assert code == 0 and "nothing to resume" in err and (out / "model.safetensors").exists()
    # without the data flag there is no run to start: one line, exit 2
    code, _, err = run_cli(capsys, "train", "--out", str(tmp_path / "none"), "--resume")
    assert code == 2 and len(err.strip().splitlines()) == 1


_SIGTERM_IN_A_FINALIZER = """
import os, signal, sys, time, weakref
from vaekit import cli

def _terminate():
    os.kill(os.getpid(), signal.SIGTERM)
    sum(range(1000))  # Python runs the handler here, inside the finalizer

class Closes:
    def __del__(self):
        _terminate()

class Plain:
    pass

def _work(args):
    if sys.argv[2] == "__del__":
        Closes()  # collected at once: its __del__ sends the signal
    else:
        weakref.finalize(Plain(), _terminate)
    time.sleep(20)  # a command that ran on would sleep here and exit 0
    os._exit(0)

cli._check_outputs_spare_inputs = _work
sys.exit(cli.main(["train", "--data", "digits", "--out", sys.argv[1]]))
"""


@pytest.mark.parametrize("finalizer", ["__del__", "weakref.finalize"])
def test_sigterm_caught_inside_a_finalizer_still_stops_the_command_with_one_line(tmp_path, finalizer):
    """A finalizer (a progress bar's __del__) swallows exceptions, so a SIGTERM that Python handles
    inside one must not be lost or print 'Exception ignored ... Traceback'."""
    started = time.monotonic()
    r = subprocess.run([sys.executable, "-c", _SIGTERM_IN_A_FINALIZER, str(tmp_path / "run"), finalizer], env=ENV, capture_output=True, text=True,
                       timeout=60)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 130 and len(lines) == 1 and "interrupted" in lines[0], r.stderr
    assert time.monotonic() - started < 15


def test_an_interrupt_while_an_error_is_reported_is_still_one_line_and_130(tmp_path, capsys, monkeypatch):
    """A signal that lands while main() reports a bad input (inside its except clause) is caught as
    an interrupt, not a traceback out of main()."""
    from vaekit import cli as vaekit_cli

    def interrupted(e):
        raise KeyboardInterrupt

    monkeypatch.setattr(vaekit_cli, "_other_rank_says_it", interrupted)
    try:
        code, _, err = run_cli(capsys, "train", "--data", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "r"))
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped main()")
    assert code == 130 and err.strip().splitlines() == ["vaekit: interrupted; training progress is saved (continue "
                                                         "with the same command and --resume)"]
