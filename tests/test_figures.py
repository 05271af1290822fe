"""Tests of vaekit.figures: grid geometry and pixel values, valid PNGs of the expected size,
atomic writes (no temp files, old file intact on failure), grey / RGB / tabular variants."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from vaekit import figures as F


def _open(path) -> Image.Image:
    img = Image.open(path)
    img.verify()  # raises on a truncated or corrupt PNG
    img = Image.open(path)
    assert img.format == "PNG"
    return img


def _only(tmp_path, *names):
    """The directory holds exactly these files: no leftover temp files."""
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)


# -- image_grid ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("c", [1, 3])
def test_image_grid_geometry_and_pixels(c):
    imgs = torch.rand(10, c, 8, 6)
    g = F.image_grid(imgs, nrow=4, pad=2)
    rows = math.ceil(10 / 4)
    assert g.dtype == np.uint8
    assert g.shape == (rows * 8 + (rows + 1) * 2, 4 * 6 + 5 * 2, c)
    # image 5 sits in row 1, column 1
    y, x = 2 + 1 * (8 + 2), 2 + 1 * (6 + 2)
    want = np.round(imgs[5].numpy().transpose(1, 2, 0) * 255)
    np.testing.assert_allclose(g[y : y + 8, x : x + 6].astype(float), want, atol=1)
    assert (g[0] == 128).all() and (g[:, 0] == 128).all()  # padding is mid-grey
    assert (g[-10:, -8:] == 128).all()  # the two empty cells of the last row too


def test_image_grid_defaults_clipping_and_channels():
    g = F.image_grid(np.full((9, 1, 4, 4), 2.0))  # out-of-range values clip to white
    assert g.shape == (3 * 4 + 4 * 2, 3 * 4 + 4 * 2, 1)  # nrow defaults to ceil(sqrt(N))
    assert g[2:6, 2:6].min() == 255
    assert F.image_grid(torch.rand(2, 4, 5, 5)).shape[-1] == 3  # RGBA: alpha dropped
    assert F.image_grid(torch.rand(2, 2, 5, 5)).shape[-1] == 1  # 2 channels: shown as grey
    assert F.image_grid(torch.rand(3, 5, 5)).shape[-1] == 1  # (N, H, W) is grey
    with pytest.raises(ValueError):
        F.image_grid(torch.rand(0, 1, 4, 4))
    with pytest.raises(ValueError):
        F.image_grid(torch.rand(5, 10))


# -- PNG files ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("c,mode", [(1, "L"), (3, "RGB")])
def test_save_image_grid_upscales_small_images(tmp_path, c, mode):
    path = F.save_image_grid(tmp_path / "grid.png", torch.rand(16, c, 8, 8), nrow=4)
    img = _open(path)
    cell = 8 * 4  # 8x8 images are upscaled x4 to reach >= 28 px per cell
    assert img.mode == mode and img.size == (4 * cell + 5 * 2, 4 * cell + 5 * 2)
    _only(tmp_path, "grid.png")
    a = np.asarray(img)
    assert (a[2:34, 2:6] == a[2:34, 2:3]).all()  # nearest neighbour: 4-pixel-wide constant runs
    img28 = _open(F.save_image_grid(tmp_path / "g28.png", torch.rand(4, 1, 28, 28)))
    assert img28.size == (2 * 28 + 3 * 2,) * 2  # already large enough: no upscale
    assert _open(F.save_image_grid(tmp_path / "g1.png", torch.rand(4, 1, 8, 8), upscale=1)).size == (2 * 8 + 6,) * 2


def test_continuous_images_are_rescaled_not_saturated(tmp_path):
    x = torch.randn(16, 1, 8, 8) * 3  # standardised-style values, mostly outside [0, 1]
    a = np.asarray(_open(F.save_image_grid(tmp_path / "c.png", x, kind="continuous", upscale=1)))
    cells = a[2:10, 2:10]
    assert len(np.unique(cells)) > 30  # a spread of grey levels, not just black and white
    assert F._display_range(x.numpy(), None) != (0.0, 1.0)  # detected without a kind too


def test_save_png_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "a.png"
    F.save_png(path, np.zeros((5, 7), np.uint8))
    before = path.read_bytes()
    assert _open(path).size == (7, 5)

    def broken_save(self, fp, *args, **kwargs):
        with open(fp, "wb") as f:
            f.write(b"\x89PNG half")  # a partial write, then the failure
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError):
        F.save_png(path, np.ones((5, 7, 3), np.uint8))
    assert path.read_bytes() == before  # the old file is untouched ...
    _only(tmp_path, "a.png")  # ... and no temp file is left behind
    monkeypatch.undo()
    F.save_png(tmp_path / "f.png", np.random.rand(4, 4, 1))  # floats in [0, 1], (H, W, 1)
    assert _open(tmp_path / "f.png").mode == "L"
    with pytest.raises(ValueError):
        F.save_png(tmp_path / "bad.png", np.zeros((4, 4, 2)))


def test_figures_create_missing_directories(tmp_path):
    path = F.save_image_grid(tmp_path / "sub" / "dir" / "g.png", torch.rand(4, 1, 8, 8))
    assert _open(path).size[0] > 0


# -- reconstructions and samples ----------------------------------------------------------------------
@pytest.mark.parametrize("c", [1, 3])
def test_reconstructions_grid_pairs_rows(tmp_path, c):
    x = torch.rand(12, c, 28, 28)
    x_hat = 1 - x
    img = _open(F.save_reconstructions(tmp_path / "r.png", x, x_hat, n=12))
    # 12 images, 8 per row: two blocks of (originals row + reconstructions row), 4 px between
    block_h = 2 * 28 + 3 * 2
    assert img.size == (8 * 28 + 9 * 2, 2 * block_h + 4)
    a = np.asarray(img).astype(float).reshape(img.size[1], img.size[0], -1)
    np.testing.assert_allclose(a[2:30, 2:30], np.round(x[0].numpy().transpose(1, 2, 0) * 255), atol=1)
    np.testing.assert_allclose(a[32:60, 2:30], np.round(x_hat[0].numpy().transpose(1, 2, 0) * 255), atol=1)
    _only(tmp_path, "r.png")


def test_reconstructions_tabular_and_errors(tmp_path):
    x = torch.randn(40, 6)
    img = _open(F.save_reconstructions(tmp_path / "t.png", x, x + 0.1 * torch.randn_like(x), n=16))
    assert img.size[0] > 400 and img.size[1] > 200
    _open(F.save_reconstructions(tmp_path / "u.png", torch.rand(5, 30), torch.rand(5, 30), kind="binary"))
    with pytest.raises(ValueError):
        F.save_reconstructions(tmp_path / "bad.png", torch.rand(4, 6), torch.rand(4, 5))
    _only(tmp_path, "t.png", "u.png")


def test_samples_images_and_tables(tmp_path):
    grey = _open(F.save_samples(tmp_path / "g.png", torch.rand(64, 1, 8, 8)))
    assert grey.size == (8 * 32 + 9 * 2,) * 2 and grey.mode == "L"
    assert _open(F.save_samples(tmp_path / "rgb.png", torch.rand(9, 3, 32, 32))).mode == "RGB"
    _open(F.save_samples(tmp_path / "tab.png", torch.randn(200, 7), reference=torch.randn(300, 7)))
    _open(F.save_samples(tmp_path / "one.png", torch.randn(50, 1)))
    _only(tmp_path, "g.png", "rgb.png", "tab.png", "one.png")


# -- charts ---------------------------------------------------------------------------------------------
def _records(n=6):
    return [{"epoch": e, "train_elbo": -100.0 + e, "val_elbo": -101.0 + e, "train_recon": 90.0 - e,
             "val_recon": 91.0 - e, "train_kl": 10.0, "val_kl": 10.5, "kl_weight": min(1.0, (e + 1) / 3),
             "samples_per_s": 1e4} for e in range(n)]


def test_training_curves_full_partial_and_empty(tmp_path):
    full = _open(F.save_training_curves(tmp_path / "full.png", _records()))
    partial = _open(F.save_training_curves(tmp_path / "partial.png",
                                           [{"epoch": e, "train_elbo": -50.0 - e} for e in range(4)]))
    assert full.size[0] > partial.size[0]  # panels only for the keys present
    recs = _records()
    recs[2]["val_elbo"] = float("nan")
    recs[3]["val_kl"] = None
    _open(F.save_training_curves(tmp_path / "gaps.png", recs))
    _open(F.save_training_curves(tmp_path / "empty.png", []))
    _only(tmp_path, "full.png", "partial.png", "gaps.png", "empty.png")


def test_kl_per_dim_chart(tmp_path):
    kl = [1e-5, 2.0, 0.001, 3.5, 0.5, 0.0]
    _open(F.save_kl_per_dim(tmp_path / "a.png", kl))
    _open(F.save_kl_per_dim(tmp_path / "b.png", kl, posterior_mean_var=[0, 1, 0.001, 1, 0.2, 0]))
    wide = _open(F.save_kl_per_dim(tmp_path / "c.png", list(np.random.rand(100))))
    assert wide.size[0] > _open(tmp_path / "a.png").size[0]  # the figure grows with D
    _only(tmp_path, "a.png", "b.png", "c.png")
