"""The report's header names the settings a run used, with the defaults resolved (widths, likelihood),
both as training writes it and as ``vaekit report`` rebuilds it from the run directory."""

import html
import json
import re

import pytest

from cli_helpers import cli


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Runs trained with the default settings: a VAE and a completion model."""
    d = tmp_path_factory.mktemp("header")
    from vaekit.cli import main

    for name, extra in (("vae", []), ("completion", ["--model", "completion"])):
        assert main(["train", "--data", "digits", "--epochs", "1", "--out", str(d / name), "--quiet", *extra]) == 0
    return d


def _header(page: str) -> str:
    return html.unescape(re.search(r"<p class=sub>(.*?)</p>", page, re.S).group(1))


def _config_section(page: str) -> dict:
    return json.loads(html.unescape(re.search(r"<pre>(.*?)</pre>", page, re.S).group(1)))


@pytest.mark.parametrize("name, expected", [
    ("vae", "vae · mlp 400 · latent 20 · bernoulli likelihood"),
    ("completion", "completion model (Sohn et al. 2015) · mlp 400 · latent 20 · bernoulli likelihood · "
                   "given part: random"),
])
def test_header_shows_the_resolved_defaults(runs, name, expected, capsys):
    page = (runs / name / "report.html").read_text()
    assert expected in _header(page) and "None" not in _header(page)
    model = _config_section(page)["model"]  # the settings of config.json, not the Nones the defaults were given as
    assert model["hidden"] == [400] and model["likelihood"] == "bernoulli"
    assert cli(capsys, "report", runs / name)[0] == 0  # rebuilt from the directory: the same header
    assert _header((runs / name / "report.html").read_text()) == _header(page)
