"""TensorBoard: ``train --tensorboard DIR`` logs every metrics.jsonl number and sample grids, a resumed
run appends to its log without doubled steps, and ``embed --projector DIR`` writes what the projector
reads. Without the tensorboard package both stop with one line (exit 2) before any work."""

import json
import math
import shutil
import sys

import numpy as np
import pytest
from PIL import Image

from cli_helpers import cli
from vaekit.tensorboard import PROJECTOR_POINTS, scalar_tags, sprite

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

TINY = ("--data", "digits", "--hidden", "16", "--latent-dim", "2", "--batch-size", "64", "--quiet")


def _log(folder):
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def _records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """A 2-epoch image run logged to tb/."""
    d = tmp_path_factory.mktemp("tb")
    from vaekit.cli import main

    assert main(["train", *TINY, "--epochs", "2", "--out", str(d / "run"), "--tensorboard", str(d / "tb")]) == 0
    return d


def test_every_metric_is_a_scalar_with_one_value_per_epoch(logged):
    acc, records = _log(logged / "tb"), _records(logged / "run")
    assert {"train/elbo", "val/elbo", "train/recon", "val/recon", "train/kl", "val/kl", "train/kl_weight", "train/lr",
            "speed/examples_per_s"} <= set(acc.Tags()["scalars"])
    for rec in records:
        for tag, value in scalar_tags(rec).items():
            events = [e for e in acc.Scalars(tag) if e.step == rec["epoch"] + 1]
            assert len(events) == 1, tag
            assert math.isclose(events[0].value, value, rel_tol=1e-6, abs_tol=1e-6), tag
    assert [e.step for e in acc.Scalars("train/elbo")] == [1, 2]


def test_an_image_run_logs_samples_and_reconstructions(logged):
    acc = _log(logged / "tb")
    for tag in ("images/samples", "images/reconstructions"):
        events = acc.Images(tag)
        assert [e.step for e in events] == [1, 2]
        assert events[-1].width > 32 and events[-1].height > 32
    assert "config/text_summary" in acc.Tags()["tensors"]


def test_logging_leaves_training_unchanged(logged, tmp_path, capsys):
    assert cli(capsys, "train", *TINY, "--epochs", "2", "--out", tmp_path / "plain")[0] == 0
    timing = ("samples_per_s", "epoch_time_s")
    strip = lambda rows: [{k: v for k, v in r.items() if k not in timing} for r in rows]  # noqa: E731
    assert strip(_records(tmp_path / "plain")) == strip(_records(logged / "run"))


def test_resume_appends_without_doubled_steps(tmp_path, capsys):
    run, tb, tb2 = tmp_path / "run", tmp_path / "tb", tmp_path / "tb2"
    assert cli(capsys, "train", *TINY, "--epochs", "1", "--out", run, "--tensorboard", tb)[0] == 0
    shutil.copy(run / "last.safetensors", tmp_path / "epoch1.safetensors")
    # the saved --tensorboard goes on logging without being given again
    assert cli(capsys, "train", "--out", run, "--resume", "--epochs", "2", "--quiet")[0] == 0
    # back to the epoch-1 checkpoint (as when last.safetensors was damaged): epoch 2 is trained again
    shutil.copy(tmp_path / "epoch1.safetensors", run / "last.safetensors")
    (run / "last.previous.safetensors").unlink(missing_ok=True)
    assert cli(capsys, "train", "--out", run, "--resume", "--epochs", "2", "--quiet")[0] == 0
    acc, records = _log(tb), _records(run)
    assert len(list(tb.glob("events.out.tfevents.*"))) == 3
    assert [e.step for e in acc.Scalars("train/elbo")] == [1, 2]  # epoch 2's first log was purged
    assert [e.value for e in acc.Scalars("val/elbo")] == pytest.approx([r["val_elbo"] for r in records], rel=1e-6)
    assert [e.step for e in acc.Images("images/samples")] == [1, 2]
    # --tensorboard may change on --resume; a log begun then gets the earlier epochs' scalars too
    assert cli(capsys, "train", "--out", run, "--resume", "--epochs", "3", "--tensorboard", tb2, "--quiet")[0] == 0
    acc2 = _log(tb2)
    assert [e.step for e in acc2.Scalars("train/elbo")] == [1, 2, 3]
    assert [e.value for e in acc2.Scalars("train/elbo")] == pytest.approx([r["train_elbo"] for r in _records(run)],
                                                                          rel=1e-6)
    assert [e.step for e in acc2.Images("images/samples")] == [3]


def test_a_new_run_refuses_a_folder_with_a_log(logged, tmp_path, capsys):
    code, _, err = cli(capsys, "train", *TINY, "--epochs", "1", "--out", tmp_path / "r", "--tensorboard", logged / "tb")
    assert code == 2 and "already holds a TensorBoard log" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


@pytest.fixture
def no_tensorboard(monkeypatch):
    """As if the tensorboard package were not installed (None in sys.modules: its import fails)."""
    for name in list(sys.modules):
        if name == "tensorboard" or name.startswith(("tensorboard.", "torch.utils.tensorboard")):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)


def test_without_tensorboard_train_stops_before_training(no_tensorboard, tmp_path, capsys):
    code, _, err = cli(capsys, "train", *TINY, "--epochs", "1", "--out", tmp_path / "r",
                       "--tensorboard", tmp_path / "tb")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "pip install 'vaekit[tensorboard]'" in err
    assert not (tmp_path / "r").exists() and not (tmp_path / "tb").exists()


def test_without_tensorboard_embed_stops_first(no_tensorboard, logged, tmp_path, capsys):
    code, _, err = cli(capsys, "embed", logged / "run", "--projector", tmp_path / "p")
    assert code == 2 and "pip install 'vaekit[tensorboard]'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "p").exists()


def test_scalar_tags_names():
    rec = {"epoch": 4, "step": 50, "lr": 1e-3, "train_elbo": -80.0, "val_iwae": -79.0, "kl_weight": 0.5,
           "best_epoch": 3, "skipped_by_player": {"critic": 2}, "critic_won": True, "samples_per_s": 1e4}
    assert scalar_tags(rec) == {"train/steps": 50.0, "train/lr": 1e-3, "train/elbo": -80.0, "val/iwae": -79.0,
                                "train/kl_weight": 0.5, "val/best_epoch": 4.0, "train/skipped_steps/critic": 2.0,
                                "train/critic_won": 1.0, "speed/examples_per_s": 1e4}


# -- the embedding projector --------------------------------------------------------------------------------
def _pbtxt(folder):
    from google.protobuf import text_format
    from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig

    return text_format.Parse((folder / "projector_config.pbtxt").read_text(), ProjectorConfig())


def test_projector_alone_writes_tensor_labels_and_sprite(logged, tmp_path, capsys):
    p = tmp_path / "proj"
    code, out, _ = cli(capsys, "embed", logged / "run", "--projector", p, "--json")
    res = json.loads(out)
    n = res["n"]
    assert code == 0 and res["out"] is None and res["projector"]["points"] == n
    tensor = np.loadtxt(p / "tensors.tsv", delimiter="\t", ndmin=2)
    assert tensor.shape == (n, 2)  # --latent-dim 2
    rows = (p / "metadata.tsv").read_text().splitlines()
    assert rows[0] == "index\tlabel" and len(rows) == n + 1  # two columns: a header row
    assert {r.split("\t")[1] for r in rows[1:]} <= {str(i) for i in range(10)}
    side = math.ceil(math.sqrt(n)) * 8  # 8x8 digits, ceil(sqrt(n)) a row
    assert Image.open(p / "sprite.png").size == (side, side)
    (emb,) = _pbtxt(p).embeddings
    assert (emb.tensor_path, emb.metadata_path, emb.sprite.image_path) == ("tensors.tsv", "metadata.tsv", "sprite.png")
    assert list(emb.tensor_shape) == [n, 2] and list(emb.sprite.single_image_dim) == [8, 8]
    assert list(p.glob("events.out.tfevents.*"))  # TensorBoard lists the folder as a run


def test_projector_with_out_and_limit(logged, tmp_path, capsys):
    p = tmp_path / "proj"
    code, out, _ = cli(capsys, "embed", logged / "run", "--out", tmp_path / "z.csv", "--map", "none",
                       "--projector", p, "--limit", 30, "--json")
    assert code == 0 and json.loads(out)["projector"]["points"] == 30
    assert len((tmp_path / "z.csv").read_text().splitlines()) == 31
    assert len((p / "metadata.tsv").read_text().splitlines()) == 31
    assert Image.open(p / "sprite.png").size == (48, 48)  # 6 x 6 thumbnails of 8 px
    code, _, err = cli(capsys, "embed", logged / "run")
    assert code == 2 and "--projector" in err


def test_sprite_thumbnails_are_square_and_fit():
    grid, cell = sprite(np.random.rand(10, 3, 100, 60), max_px=128)  # 4 a row: at most 32 px each
    assert cell == 32 and grid.shape == (128, 128, 3)
    grid, cell = sprite(np.random.rand(PROJECTOR_POINTS, 1, 28, 28))
    assert cell == 28 and grid.shape == (2800, 2800, 1)
