"""Typed config: TOML files and overrides, with errors that name the valid keys."""

import pytest

from vaekit.config import RunConfig, load_toml
from vaekit.errors import UsageError
from vaekit.config import make_config


def test_toml_then_overrides(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[data]\nsource = "mnist"\n[model]\nhidden = [200, 200]\nlatent_dim = 50\n[train]\nlr = 3e-4\nepochs = 2\n')
    cfg = make_config(p, latent_dim=10, kl_warmup=5)
    assert cfg.data.source == "mnist" and cfg.model.hidden == [200, 200]
    assert cfg.model.latent_dim == 10 and cfg.train.lr == 3e-4 and cfg.train.kl_warmup == 5.0
    assert isinstance(cfg.train.kl_warmup, float)


def test_round_trip_dict():
    cfg = make_config(None, source="digits", beta=2.0, hidden=[64])
    again = RunConfig.from_dict(cfg.to_dict())
    assert again == cfg


@pytest.mark.parametrize(
    "text,match",
    [
        ("[model]\nlatent = 3\n", "unknown key 'latent'; valid: model, arch"),
        ("[train]\nepochs = 'ten'\n", "epochs must be int"),
        ("[model]\nhidden = 400\n", "hidden must be a list"),
        ("[optim]\nlr = 1\n", "unknown section"),
        ("[train\nlr=1", "not valid TOML"),
        ("[train]\nlr = true\n", "lr must be float"),
    ],
)
def test_bad_toml(tmp_path, text, match):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(UsageError, match=match):
        load_toml(p)


def test_unknown_override_and_missing_file(tmp_path):
    with pytest.raises(UsageError, match="unknown option 'latnet_dim'"):
        make_config(None, latnet_dim=3)
    with pytest.raises(UsageError, match="config file not found"):
        load_toml(tmp_path / "nope.toml")
