"""``vaekit train --nproc N``: the same run as ``torchrun --standalone --nproc_per_node N -m vaekit
train ...``, started from vaekit itself through PyTorch's elastic launcher (the engine of torchrun).

The launcher checks what it can before starting anything (N against this machine's GPUs or CPU
cores, NCCL without GPUs, a batch that does not split evenly): one line, exit status 2, nothing
written. When a process fails, the others are stopped and this prints one line: the worker's own
message where it gave one (a bad input: exit 2), else which process stopped and how to continue.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import uuid
from pathlib import Path
from typing import Any, Sequence

from .errors import UsageError
from .training import distributed

#: set in the workers this launcher starts: a worker whose peer died exits quietly (the launcher
#: says what happened, once)
LAUNCHED_BY_VAEKIT = "VAEKIT_LAUNCHER"


def strip_nproc(argv: Sequence[str]) -> list[str]:
    """``argv`` of ``vaekit train ...`` without ``--nproc N`` / ``--nproc=N``."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def check_launch(nproc: int, *, device: str, backend: str, batch_size: int) -> None:
    """Whether ``nproc`` processes can train here; a UsageError (one line) if not."""
    if distributed.launched():
        raise UsageError("--nproc starts the processes itself; under torchrun leave it out "
                         "(torchrun's --nproc_per_node says how many)")
    if nproc < 1:
        raise UsageError(f"--nproc must be at least 1, got {nproc}")
    from .training.trainer import resolve_device

    resolve_device(device)  # --device cuda without a GPU: the usual line
    distributed.pick_backend(device, backend)  # NCCL without GPUs, an unknown backend
    have = distributed.usable_devices(device)
    what = "GPU(s)" if distributed._wants_cuda(device) else "CPU core(s)"
    if nproc > have:
        raise UsageError(f"--nproc {nproc} is more than this machine's {have} {what}; use --nproc {have} or fewer "
                         "(several machines: torchrun --nnodes, see the README)")
    distributed.check_batch(batch_size, nproc)


def planned_config(data: str | None, *, out: str | None, config_file: str | None, resume: bool,
                   options: dict[str, Any]) -> Any:
    """The run's configuration as ``run.train`` will build it (for the launcher's checks)."""
    from .config import make_config
    from .run import read_config

    if resume and out is not None and (Path(out) / "config.json").exists():
        return make_config(None, base=read_config(out)[0], **options)
    return make_config(config_file, **({"source": data} if data is not None else {}), **options)


def launch(nproc: int, argv: Sequence[str], *, device: str) -> int:
    """Run ``python -m vaekit train ARGV`` in ``nproc`` processes on this machine; the exit status."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    env_threads = os.environ.get("OMP_NUM_THREADS")
    if not distributed._wants_cuda(device) and env_threads is None:
        # the cores are shared out: N processes with all of them each would fight over them
        os.environ["OMP_NUM_THREADS"] = str(max(1, distributed.usable_devices("cpu") // nproc))
    os.environ[LAUNCHED_BY_VAEKIT] = "1"
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.1)
    # the agent's own reports are left out: ours is one line
    quiet = [logging.getLogger(name) for name in ("torch.distributed.elastic", *logging.root.manager.loggerDict)
             if name.startswith("torch.distributed.elastic") or name.startswith("torch.distributed.launcher")]
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(logging.CRITICAL)
    try:
        elastic_launch(config, sys.executable)("-m", "vaekit", *argv)
    except ChildFailedError as e:
        return _report_failure(e, nproc, argv)
    except SignalException:  # Ctrl-C or SIGTERM: the agent passed it on; rank 0 saved and said so
        return 130
    finally:
        for q, level in zip(quiet, levels):
            q.setLevel(level)
        os.environ.pop(LAUNCHED_BY_VAEKIT, None)
        if env_threads is None:
            os.environ.pop("OMP_NUM_THREADS", None)
    return 0


def _report_failure(e: Any, nproc: int, argv: Sequence[str]) -> int:
    rank, failure = e.get_first_failure()
    codes = {f.exitcode for f in e.failures.values()}
    if 2 in codes:  # a bad input: rank 0 printed it
        return 2
    if 130 in codes and failure.exitcode in (130, -signal.SIGINT, -signal.SIGTERM):
        return 130  # interrupted: rank 0 saved and said so
    code = failure.exitcode
    if code < 0:
        try:
            how = f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            how = f"was killed by signal {-code}"
    else:
        how = f"failed with exit status {code}"
    out = _out_dir(argv)
    where = f" in {out}" if out else ""
    print(f"vaekit train: error: process {rank} of {nproc} {how}, so the run stopped; its last checkpoint{where} is "
          "intact: continue with the same command and --resume", file=sys.stderr)
    return 1


def _out_dir(argv: Sequence[str]) -> str | None:
    for i, a in enumerate(argv):
        if a == "--out" and i + 1 < len(argv):
            return str(Path(argv[i + 1]))
        if a.startswith("--out="):
            return a[6:]
    return None
