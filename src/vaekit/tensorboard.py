"""TensorBoard, an optional extra (``pip install 'vaekit[tensorboard]'``): a run's training curves and
sample grids as it trains (``vaekit train --tensorboard DIR``), and its latent codes for the embedding
projector (``vaekit embed RUN --projector DIR``).

The tensorboard package is imported only here, and only when one of these is asked for; without it
both stop with one line naming the extra, before any work is done.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from .errors import UsageError
from .io import atomic_path, write_text

if TYPE_CHECKING:
    from .training.trainer import Trainer

INSTALL = "pip install 'vaekit[tensorboard]'"
#: sample grids are logged every epoch up to this many epochs, then about this many times a run
MAX_IMAGE_STEPS = 20
N_SAMPLES, N_RECONSTRUCTIONS, N_SENTENCES = 64, 16, 8
#: the projector's points by default (it stays responsive up to about 10,000); ``--limit`` sets another
PROJECTOR_POINTS = 10_000
#: the largest sprite side TensorBoard's projector takes (a WebGL texture), in pixels
SPRITE_MAX_PX = 8192

#: record keys of metrics.jsonl without a train_/val_ prefix -> their tags
_TAGS = {"lr": "train/lr", "kl_weight": "train/kl_weight", "step": "train/steps",
         "skipped_steps": "train/skipped_steps", "skipped_by_player": "train/skipped_steps",
         "critic_won": "train/critic_won", "best_epoch": "val/best_epoch",
         "samples_per_s": "speed/examples_per_s", "epoch_time_s": "speed/epoch_time_s"}


def require_tensorboard(flag: str) -> None:
    """Raise a one-line UsageError (exit 2) when the tensorboard package is not installed."""
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise UsageError(f"{flag} needs the tensorboard package: {INSTALL}") from None


def has_events(log_dir: str | Path) -> bool:
    """Whether ``log_dir`` already holds TensorBoard event files (a log TensorBoard shows as a run)."""
    d = Path(log_dir)
    return d.is_dir() and any(p.name.startswith("events.out.tfevents.") for p in d.iterdir())


def check_log_dir(log_dir: str | Path, *, resume: bool) -> None:
    """Before training: tensorboard is installed and ``log_dir`` can take this run's log. A new
    run needs a folder without event files (TensorBoard would draw two runs' curves as one); a
    resumed run appends to its own."""
    require_tensorboard("--tensorboard")
    d = Path(log_dir)
    if d.exists() and not d.is_dir():
        raise UsageError(f"--tensorboard {d} is a file; give a folder for the TensorBoard log")
    if not resume and has_events(d):
        raise UsageError(f"--tensorboard {d} already holds a TensorBoard log; give each run a folder of its own "
                         f"(e.g. tb/NAME, then tensorboard --logdir tb), or add --resume to continue that run")


def scalar_tags(rec: dict[str, Any]) -> dict[str, float]:
    """The numbers of one metrics.jsonl record as TensorBoard tags: ``train_elbo`` -> "train/elbo",
    ``val_kl`` -> "val/kl", lr, KL weight, steps -> "train/...", throughput -> "speed/...";
    ``best_epoch`` as 1-based "val/best_epoch" (the epoch numbers of the log and the CLI), a
    per-player count as "train/skipped_steps/PLAYER". The epoch itself is the global step."""
    out: dict[str, float] = {}
    for key, value in rec.items():
        if key == "epoch":
            continue
        prefix, _, rest = key.partition("_")
        tag = _TAGS.get(key) or (f"{prefix}/{rest}" if prefix in ("train", "val") and rest else f"other/{key}")
        if isinstance(value, dict):
            out.update({f"{tag}/{k}": float(v) for k, v in value.items() if isinstance(v, (int, float))})
        elif isinstance(value, (int, float)):
            out[tag] = float(value) + (1.0 if key == "best_epoch" else 0.0)
    return out


class TensorBoardLogger:
    """A trainer callback (``cb(trainer, record)``, see ``training.trainer.Trainer``) that writes each
    finished epoch to a TensorBoard log: every number of its metrics.jsonl record (``scalar_tags``)
    at global step = epochs done (1, 2, ...), and, every epoch up to ``MAX_IMAGE_STEPS`` epochs (then
    about that many times a run, and at the last epoch), pictures from the validated weights: a grid
    of samples from the prior (the same z every time) and test reconstructions for image runs, sample
    sentences for text runs (other runs: the scalars only).

    The writer opens at the first epoch. A log that already holds events (a resumed run) gets
    ``purge_step`` at that epoch, so epochs logged before an earlier checkpoint was restored are
    replaced, not doubled; a log started by a resumed run first gets the earlier epochs' scalars
    from the trainer's history. Pictures are drawn under a forked RNG in eval mode: training goes
    on exactly as without the log. Call ``close()`` when training ends.
    """

    def __init__(self, log_dir: str | Path, *, config: dict[str, Any] | None = None, seed: int = 0) -> None:
        require_tensorboard("--tensorboard")
        self.log_dir = Path(log_dir)
        self.config, self.seed = config, seed
        self._fresh = not has_events(self.log_dir)  # checked before this session writes anything
        self.writer: Any = None

    def __call__(self, trainer: "Trainer", rec: dict[str, Any]) -> None:
        step = int(rec["epoch"]) + 1
        if self.writer is None:
            self._open(trainer, step)
        for tag, value in scalar_tags(rec).items():
            self.writer.add_scalar(tag, value, step)
        epochs = trainer.cfg.epochs
        every = max(1, math.ceil(epochs / MAX_IMAGE_STEPS))
        if step % every == 0 or step == epochs:
            self._examples(trainer, step)
        self.writer.flush()  # every epoch (not every 2 min): a killed run's log ends at its last checkpoint

    def _open(self, trainer: "Trainer", step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(self.log_dir), purge_step=None if self._fresh else step)
        if not self._fresh:
            return
        for old in trainer.history[:-1]:  # a log added on --resume: the curves from the start
            for tag, value in scalar_tags(old).items():
                self.writer.add_scalar(tag, value, int(old["epoch"]) + 1)
        if self.config is not None:  # four spaces: a code block in TensorBoard's markdown
            text = "\n".join("    " + line for line in json.dumps(self.config, indent=2).splitlines())
            self.writer.add_text("config", text, step)

    def _examples(self, trainer: "Trainer", step: int) -> None:
        from .apps.generate import figure_samples, reconstruct, seeded
        from .figures import grid_array, reconstruction_grid
        from .metrics import _eval_context

        model, data = trainer.eval_model, trainer.data
        spec = model.spec
        if callable(getattr(model, "complete", None)) or not (spec.is_image or spec.kind == "tokens"):
            return  # completion models, tables and series: the scalars only
        shown = data.test if len(data.test) else data.val
        with _eval_context(model, self.seed, None):
            if spec.kind == "tokens":
                from .data.text import ids_to_text

                with seeded(self.seed):  # the same z every time
                    ids = model.generate_tokens(model.prior_sample(N_SENTENCES), greedy=True)
                lines = ids_to_text(ids, None, data.source["vocab"], data.source["tokens"])
                self.writer.add_text("samples", "\n".join(f"{i + 1}. {s or '(empty)'}" for i, s in enumerate(lines)),
                                     step)
                return
            xs, _, nrow = figure_samples(model, shown[:N_SAMPLES] if len(shown) else None, n=N_SAMPLES,
                                         seed=self.seed, mean=True)
            self.writer.add_image("images/samples", grid_array(xs, nrow, kind=spec.kind), step, dataformats="HWC")
            if len(shown):
                part = shown[:N_RECONSTRUCTIONS]
                x_hat, _ = reconstruct(model, part)
                self.writer.add_image("images/reconstructions", reconstruction_grid(part.x, x_hat, kind=spec.kind),
                                      step, dataformats="HWC")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


# -- the embedding projector ---------------------------------------------------------------------
def _tsv_cell(value: Any) -> str:
    return " ".join(str(value).split()) or "-"  # no tabs or line breaks inside a cell, never empty


def sprite(images: Any, kind: str | None = None, *, max_px: int = SPRITE_MAX_PX) -> tuple[np.ndarray, int]:
    """The projector's thumbnails: images (N, C, H, W), data units -> (a square uint8 sprite
    (S, S, C') with ceil(sqrt(N)) thumbnails a row, the thumbnail side in pixels). Each image is
    padded to a square (black) and, when ceil(sqrt(N)) of them would not fit in ``max_px``,
    shrunk (area average) to ``max_px // ceil(sqrt(N))`` pixels: 10,000 points get up to 81 px."""
    from .figures import display_images, image_grid

    a = display_images(images, kind)
    n, _, h, w = a.shape
    cols = math.ceil(math.sqrt(n))
    side = max(h, w)
    if side != h or side != w:
        a = np.pad(a, ((0, 0), (0, 0), ((side - h) // 2, side - h - (side - h) // 2),
                       ((side - w) // 2, side - w - (side - w) // 2)))
    cell = max(1, min(side, max_px // cols))
    if cell < side:
        a = torch.nn.functional.interpolate(torch.from_numpy(a), size=(cell, cell), mode="area").numpy()
    grid = image_grid(a, nrow=cols, pad=0, pad_value=0.0)  # (rows * cell, cols * cell, C')
    square = np.zeros((cols * cell, cols * cell, grid.shape[2]), dtype=np.uint8)
    square[: grid.shape[0]] = grid
    return square, cell


def write_projector(out_dir: str | Path, codes: torch.Tensor, *, metadata: dict[str, Sequence[Any]],
                    images: Any = None, kind: str | None = None, name: str = "latent",
                    description: str | None = None) -> dict[str, Any]:
    """Write ``codes`` (N, D) for TensorBoard's embedding projector into ``out_dir``:
    tensors.tsv (N rows of D values), metadata.tsv (one row per point; a header row when there is
    more than one column, as the projector reads it), sprite.png (``sprite``, when ``images``
    (N, C, H, W) are given) and projector_config.pbtxt naming them as the tensor ``name``. These
    replace earlier ones of the same names; other files in the folder are left alone, so it may be
    a run's --tensorboard folder. A folder without event files also gets one (with ``description``
    as text), which makes TensorBoard list it as a run. Returns what was written."""
    require_tensorboard("--projector")
    from google.protobuf import text_format
    from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig

    d = Path(out_dir)
    if d.exists() and not d.is_dir():
        raise UsageError(f"--projector {d} is a file; give a folder")
    mat = codes.detach().to("cpu", torch.float64).numpy()
    n = len(mat)
    cols = {k: list(v) for k, v in metadata.items()}
    if any(len(v) != n for v in cols.values()):
        raise ValueError(f"every metadata column needs {n} values, got {({k: len(v) for k, v in cols.items()})}")
    d.mkdir(parents=True, exist_ok=True)
    with atomic_path(d / "tensors.tsv") as tmp:
        np.savetxt(tmp, mat.reshape(n, -1), fmt="%.7g", delimiter="\t")
    config = ProjectorConfig()
    emb = config.embeddings.add()
    emb.tensor_name, emb.tensor_path = name, "tensors.tsv"
    emb.tensor_shape.extend(list(mat.reshape(n, -1).shape))
    result: dict[str, Any] = {"projector": str(d), "points": n, "dims": int(mat.reshape(n, -1).shape[1]),
                              "metadata": list(cols), "sprite": None}
    if cols:
        rows = [[_tsv_cell(v[i]) for v in cols.values()] for i in range(n)]
        lines = ([list(cols)] if len(cols) > 1 else []) + rows
        write_text(d / "metadata.tsv", "".join("\t".join(r) + "\n" for r in lines))
        emb.metadata_path = "metadata.tsv"
    if images is not None:
        from .figures import save_png

        grid, cell = sprite(images, kind)
        save_png(d / "sprite.png", grid)
        emb.sprite.image_path = "sprite.png"
        emb.sprite.single_image_dim.extend([cell, cell])
        result["sprite"] = {"size": grid.shape[0], "thumbnail": cell}
    write_text(d / "projector_config.pbtxt", text_format.MessageToString(config))
    if not has_events(d):
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(str(d)) as writer:
            writer.add_text("projector", description or f"{n} points of {name} for the projector tab")
    return result
