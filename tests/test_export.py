"""vaekit export: ONNX graphs that reproduce the PyTorch model (onnxruntime against the model's own
methods at batch sizes 1 and 17, through the dynamic batch axis), export.json, and the command's
contract (files written; bad input -> exit 2, one line, nothing written)."""

import dataclasses
import json
import sys

import numpy as np
import pytest
import torch

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

import vaekit  # noqa: E402
from cli_helpers import cli  # noqa: E402
from vaekit.data.spec import DataSpec  # noqa: E402
from vaekit.export import export_model, plan  # noqa: E402
from vaekit.models import ModelConfig, build_model  # noqa: E402

IMG = DataSpec((1, 8, 8), "unit", 10)
IMG8 = DataSpec((1, 8, 8), "8bit", 10)
TABLE = DataSpec((5,), "continuous")
SERIES = DataSpec((7, 2), "continuous")
TEXT = DataSpec((6, 1), "tokens", vocab_size=11)
ATOL = RTOL = 1e-4
BATCHES = (1, 17)


def _m1m2() -> tuple[ModelConfig, DataSpec]:
    m1 = build_model(ModelConfig(hidden=[16], latent_dim=4), IMG)
    feat = {"run": "m1", "model": dataclasses.asdict(m1.config), "spec": IMG.to_dict(), "likelihood": "gaussian"}
    return ModelConfig(model="m2", hidden=[16], latent_dim=3, likelihood="bernoulli", extra={"features": feat}), IMG


# name -> (config, spec): every model and architecture the exporter covers
CASES = {
    "vae-mlp": (ModelConfig(hidden=[16], latent_dim=3), IMG),
    "vae-conv-gaussian": (ModelConfig(arch="conv", latent_dim=3, likelihood="gaussian"), IMG),
    "vae-mlp-discretized-logistic": (ModelConfig(hidden=[16], latent_dim=3, likelihood="discretized-logistic"), IMG8),
    "vae-table-gaussian-fixed": (ModelConfig(hidden=[16], latent_dim=2, likelihood="gaussian-fixed"), TABLE),
    "iwae-mlp": (ModelConfig(model="iwae", hidden=[16], latent_dim=3), IMG),
    "two-layer-vae": (ModelConfig(hidden=[16], latent_dim=3, latent_dim2=2), IMG),
    "vaegan-conv": (ModelConfig(model="vaegan", arch="conv", latent_dim=3), IMG),
    "aae-gaussian-ring": (ModelConfig(model="aae", hidden=[16], latent_dim=3, prior="gmm-ring"), IMG),
    "aae-deterministic-conv": (ModelConfig(model="aae", arch="conv", latent_dim=3, encoder="deterministic"), IMG),
    "avb-mlp": (ModelConfig(model="avb", hidden=[16, 16], latent_dim=3), IMG),
    "avb-conv": (ModelConfig(model="avb", arch="conv", latent_dim=3), IMG),
    "cvae-labels-mlp": (ModelConfig(model="cvae", hidden=[16], latent_dim=3, conditional_prior=True), IMG),
    "cvae-labels-conv": (ModelConfig(model="cvae", arch="conv", latent_dim=3), IMG),
    "cvae-image-condition-conv": (ModelConfig(model="cvae", arch="conv", latent_dim=3, conditional_prior=True),
                                  DataSpec((1, 8, 8), "unit", None, (1, 8, 8))),
    "cvae-vector-condition": (ModelConfig(model="cvae", hidden=[16], latent_dim=2),
                              DataSpec((5,), "continuous", None, (2,))),
    "m2-mlp": (ModelConfig(model="m2", hidden=[16], latent_dim=3), IMG),
    "m2-conv": (ModelConfig(model="m2", arch="conv", latent_dim=3), IMG),
    "m1m2": _m1m2(),
    "completion-mlp": (ModelConfig(model="completion", hidden=[16], latent_dim=3), IMG),
    "completion-conv": (ModelConfig(model="completion", arch="conv", latent_dim=3), IMG),
    "sequence-gru-2-layers": (ModelConfig(arch="gru", hidden=[8, 8], latent_dim=3), SERIES),
    "sequence-iwae-lstm": (ModelConfig(model="iwae", arch="lstm", hidden=[8], latent_dim=3), SERIES),
    "text-gru": (ModelConfig(arch="gru", hidden=[8], latent_dim=3), TEXT),
}


def make(name: str) -> torch.nn.Module:
    """The case's model with its weights moved off their initial values (zero-initialised layers too)."""
    cfg, spec = CASES[name]
    torch.manual_seed(0)
    model = build_model(cfg, spec).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def inputs(port: dict, n: int, spec: DataSpec, gen: torch.Generator) -> torch.Tensor:
    """A batch for one documented input (export.json's shape with "batch" = n)."""
    shape = (n, *port["shape"][1:])
    name = port["name"]
    if name == "y":
        return torch.randint(int(spec.num_classes), shape, generator=gen)
    if name == "x" and spec.kind == "tokens":
        return torch.randint(int(spec.vocab_size), shape, generator=gen).float()
    if name == "x" and spec.kind in ("unit", "8bit"):
        return torch.rand(shape, generator=gen)
    if name == "mask":
        m = (torch.rand(shape, generator=gen) < 0.8).float()
        if spec.is_sequence and n > 3:  # padding of several lengths, and an example with nothing observed
            m[1, 2:] = 0
            m[2, 5:] = 0
            m[3] = 0
        return m
    return torch.randn(shape, generator=gen)


def run_onnx(path, feeds: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {k: v.numpy() for k, v in feeds.items()})))


def likelihood_params(model, lik_name: str, params: torch.Tensor) -> dict[str, torch.Tensor]:
    """The decoder's documented outputs, from the model's own likelihood distribution."""
    lik = model.likelihood
    d = lik.dist(params).base_dist
    out = {"mean": lik.mean(params)}
    if lik_name == "bernoulli":
        out["logits"] = d.logits
    elif lik_name == "gaussian":
        out.update(loc=d.loc, scale=d.scale)
    elif lik_name == "gaussian-fixed":
        out["loc"] = d.loc
    elif lik_name == "discretized-logistic":
        out.update(loc=d.loc, log_scale=d.log_scale)
    elif lik_name == "categorical":
        out["probs"] = d.probs  # compared with softmax of the exported logits
    return out


def reference(model, graph: str, f: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What the model itself computes for each graph's outputs, through its public methods."""
    from vaekit.models.aae import AAE
    from vaekit.models.avb import AVB
    from vaekit.models.completion import CompletionVAE
    from vaekit.models.cvae import CVAE
    from vaekit.models.hierarchical import TwoLayerVAE
    from vaekit.models.m1m2 import StackedM2
    from vaekit.models.m2 import M2
    from vaekit.models.sequence import _SequenceModel

    cond = {k: f[k] for k in ("y", "c") if k in f}
    if graph == "classifier":
        return {"probs": model.classify(f["x"])}
    if graph == "prior":
        if isinstance(model, CVAE):
            mean, logvar = model.prior_params(model.condition(**cond))
        elif isinstance(model, TwoLayerVAE):
            mean, logvar = model.decoder2(f["z2"])
        else:
            mean, logvar, _ = model.prior_given(f["x"], f["mask"] != 0)
        return {"mean": mean, "logvar": logvar}
    if graph == "encoder":
        if isinstance(model, AVB):
            return {"z": model.encoder(f["x"], f["noise"])}
        if isinstance(model, AAE) and model.deterministic:
            return {"code": model.codes(f["x"])}
        if isinstance(model, (M2, StackedM2)):
            mean, logvar = model.encode(f["x"], f["y"])
        elif isinstance(model, CVAE):
            mean, logvar = model.encode(f["x"], **cond)
        elif isinstance(model, CompletionVAE):
            mean, logvar = model.recognize(f["x"], f["mask"] != 0)
        elif isinstance(model, _SequenceModel):
            mean, logvar = model.encode(f["x"], f["mask"])  # vaekit packs the padded sequences
        else:
            mean, logvar = model.encode(f["x"])
        return {"mean": mean, "logvar": logvar}
    # the decoder
    if isinstance(model, StackedM2):
        z1 = model.m2.decode_mean(f["z"], f["y"])
        out = likelihood_params(model.m1, model.m1.config.likelihood, model.m1.decoder(z1))
        assert torch.allclose(out["mean"], model.decode_mean(f["z"], f["y"]))
        return out
    if isinstance(model, M2):
        params = model._decode_params(f["z"], f["y"])
        out = likelihood_params(model, model.config.likelihood, params)
        assert torch.allclose(out["mean"], model.decode_mean(f["z"], f["y"]))
        return out
    if isinstance(model, CVAE):
        params = model.decode_params(f["z"], **cond)
    elif isinstance(model, CompletionVAE):
        params = model.generate(f["z"], model.prior_given(f["x"], f["mask"] != 0)[2])
    elif isinstance(model, _SequenceModel):
        params = model.decoder(f["z"], f["x"], f["mask"])  # teacher-forced
    else:
        params = model.decoder(f["z"])
        assert torch.allclose(model.decode_mean(f["z"]), model.likelihood.mean(params))
    return likelihood_params(model, model.config.likelihood, params)


def assert_close(got: np.ndarray, want: torch.Tensor, what: str) -> None:
    want = want.detach().numpy()
    assert got.shape == want.shape, (what, got.shape, want.shape)
    assert got.dtype == want.dtype, (what, got.dtype, want.dtype)
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=RTOL, err_msg=what)


@pytest.mark.parametrize("name", list(CASES))
def test_onnxruntime_reproduces_pytorch_at_batch_1_and_17(name, tmp_path):
    model = make(name)
    spec = model.spec
    out = tmp_path / "onnx"
    doc = export_model(model, out)
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted(["export.json", *(g["file"] for g in doc["graphs"].values())])
    assert {"encoder", "decoder"} <= set(doc["graphs"])
    assert json.loads((out / "export.json").read_text()) == doc
    gen = torch.Generator().manual_seed(1)
    for graph, g in doc["graphs"].items():
        proto = onnx.load(str(out / g["file"]))  # one self-contained file: weights inline
        assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
        assert [i.name for i in proto.graph.input] == [p["name"] for p in g["inputs"]]
        assert [o.name for o in proto.graph.output] == [p["name"] for p in g["outputs"]]
        for port in (*proto.graph.input, *proto.graph.output):
            assert port.type.tensor_type.shape.dim[0].dim_param == "batch"
        for n in BATCHES:
            feeds = {p["name"]: inputs(p, n, spec, gen) for p in g["inputs"]}
            got = run_onnx(out / g["file"], feeds)
            with torch.no_grad():
                want = reference(model, graph, feeds)
            for p in g["outputs"]:  # as documented: names, shapes with "batch" first, dtype
                assert got[p["name"]].shape == (n, *p["shape"][1:]) and str(got[p["name"]].dtype) == p["dtype"]
            if "probs" in want and "logits" in got:  # categorical: logits up to a constant
                assert_close(torch.softmax(torch.from_numpy(got.pop("logits")), -1).numpy(), want.pop("probs"),
                             f"{name} {graph} probs, batch {n}")
            assert set(got) == set(want), (graph, set(got), set(want))
            for key, value in want.items():
                assert_close(got[key], value, f"{name} {graph} {key}, batch {n}")


def test_export_json_describes_the_graphs():
    model = make("cvae-labels-mlp")
    p = plan(model)
    assert [g.name for g in p.graphs] == ["encoder", "decoder", "prior"]
    enc, dec, prior = ({"in": [q.name for q in g.inputs], "out": [q.name for q in g.outputs]} for g in p.graphs)
    assert enc == {"in": ["x", "y"], "out": ["mean", "logvar"]}
    assert dec == {"in": ["z", "y"], "out": ["logits", "mean"]}
    assert prior == {"in": ["y"], "out": ["mean", "logvar"]}
    assert p.graphs[0].inputs[1].dtype == "int64" and p.likelihood["name"] == "bernoulli"


def test_partial_exports_say_what_is_left_out(tmp_path):
    doc = export_model(make("avb-mlp"), tmp_path / "avb")
    assert doc["partial"] and doc["encoder_kind"] == "implicit" and "implicit" in doc["not_exported"][0]
    assert [p["name"] for p in doc["graphs"]["encoder"]["inputs"]] == ["x", "noise"]
    doc = export_model(make("aae-deterministic-conv"), tmp_path / "aae")
    assert doc["encoder_kind"] == "deterministic"
    assert [p["name"] for p in doc["graphs"]["encoder"]["outputs"]] == ["code"]
    doc = export_model(make("text-gru"), tmp_path / "text")
    assert doc["decoder_kind"] == "autoregressive" and "loop" in doc["not_exported"][0]
    assert doc["graphs"]["decoder"]["outputs"][0]["shape"] == ["batch", 6, 1, 11]  # logits, the vocabulary last
    doc = export_model(make("vae-mlp"), tmp_path / "vae")
    assert not doc["partial"] and doc["not_exported"] == []


def test_sequence_graphs_chain_like_reconstruct(tmp_path):
    """The ONNX encoder's mean, through the teacher-forced ONNX decoder: vaekit's reconstruction."""
    model = make("sequence-gru-2-layers")
    export_model(model, tmp_path / "o")
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(5, *SERIES.shape, generator=gen)
    mask = inputs({"name": "mask", "shape": ["batch", *SERIES.shape]}, 5, SERIES, gen)
    mean = run_onnx(tmp_path / "o" / "encoder.onnx", {"x": x, "mask": mask})["mean"]
    rec = run_onnx(tmp_path / "o" / "decoder.onnx", {"z": torch.from_numpy(mean), "x": x, "mask": mask})["mean"]
    assert_close(rec, model.reconstruct(x, mask), "reconstruction")


def test_the_dynamo_exporter_gives_the_same_graphs(tmp_path):
    pytest.importorskip("onnxscript")
    model = make("cvae-labels-mlp")
    doc = export_model(model, tmp_path / "o", exporter="dynamo")
    assert doc["exporter"] == "dynamo" and doc["opset"] == 18
    gen = torch.Generator().manual_seed(2)
    x, y, z = torch.rand(17, 1, 8, 8, generator=gen), torch.randint(10, (17,), generator=gen), torch.randn(17, 3)
    got = run_onnx(tmp_path / "o" / "encoder.onnx", {"x": x, "y": y})
    assert_close(got["mean"], model.encode(x, y=y)[0], "mean")
    got = run_onnx(tmp_path / "o" / "decoder.onnx", {"z": z, "y": y})
    assert_close(got["mean"], model.decode_mean(z, y=y), "decoder mean")


def test_a_failed_check_writes_nothing(tmp_path, monkeypatch):
    import vaekit.export as ex

    monkeypatch.setattr(ex, "CHECK_ATOL", -1.0)  # nothing can pass
    with pytest.raises(vaekit.VaekitError, match="differs from PyTorch"):
        export_model(make("vae-mlp"), tmp_path / "o")
    assert list(tmp_path.iterdir()) == []


def test_a_model_the_exporter_does_not_know_is_refused():
    from vaekit.errors import UsageError
    from vaekit.models.base import BaseModel

    class Odd(BaseModel):
        pass

    with pytest.raises(UsageError, match="cannot be exported to ONNX"):
        plan(Odd(ModelConfig(model="odd"), IMG))


# -- the command --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "run"
    vaekit.train("digits", out=out, progress=False, evaluate_test=False, figures=False, epochs=1, hidden=[16],
                 latent_dim=3)
    return out


def listing(d):
    return sorted(p.name for p in d.iterdir())


def test_cli_writes_the_encoder_decoder_and_export_json(digits_run, tmp_path, capsys):
    out = tmp_path / "model"
    code, stdout, err = cli(capsys, "export", digits_run, "--format", "onnx", "--out", out)
    assert code == 0 and err == ""
    assert len(stdout.strip().splitlines()) == 1 and str(out) in stdout and "encoder.onnx: x -> mean, logvar" in stdout
    assert listing(out) == ["decoder.onnx", "encoder.onnx", "export.json"]
    doc = json.loads((out / "export.json").read_text())
    assert doc["vaekit_version"] == vaekit.__version__ and doc["model"] == "vae" and doc["arch"] == "mlp"
    assert doc["latent_dim"] == 3 and doc["likelihood"]["name"] == "bernoulli" and doc["dtype"] == "float32"
    assert doc["data"]["shape"] == [1, 8, 8] and doc["data"]["classes"] == list(range(10))
    assert "divide the values 0..16 by 16" in doc["data"]["preprocessing"][0]
    assert doc["graphs"]["decoder"]["outputs"][0] == {"name": "logits", "shape": ["batch", 1, 8, 8],
                                                      "dtype": "float32", "doc": "log-odds of each value being 1"}
    assert doc["run"]["dir"] == str(digits_run.resolve())
    # the test split's digits through the exported encoder: the trained model's posterior
    from vaekit.apps.common import open_run, run_inputs

    run = open_run(digits_run, device="cpu")
    x = run_inputs(run, None, limit=17).x
    got = run_onnx(out / "encoder.onnx", {"x": x})
    assert_close(got["mean"], run.model.encode(x)[0], "mean")
    code, stdout, _ = cli(capsys, "export", digits_run, "--format", "onnx", "--json")  # the default folder
    assert code == 0 and json.loads(stdout)["graphs"].keys() == {"encoder", "decoder"}
    assert listing(digits_run / "onnx") == ["decoder.onnx", "encoder.onnx", "export.json"]


def test_cli_replaces_an_earlier_export(digits_run, tmp_path, capsys):
    out = tmp_path / "again"
    out.mkdir()
    (out / "prior.onnx").write_bytes(b"stale")  # a graph this model does not have
    (out / "notes.txt").write_text("mine")
    (out / "encoder.onnx").write_bytes(b"old")
    assert cli(capsys, "export", digits_run, "--format", "onnx", "--out", out)[0] == 0
    assert listing(out) == ["decoder.onnx", "encoder.onnx", "export.json", "notes.txt"]
    assert (out / "encoder.onnx").stat().st_size > 100


def test_cli_table_run_records_the_scaling_of_its_columns(tmp_path, capsys):
    rng = np.random.default_rng(0)
    data = np.column_stack([rng.normal(1000, 50, 200), rng.normal(-3, 0.1, 200), rng.normal(0, 1, 200)])
    np.savetxt(tmp_path / "t.csv", data, delimiter=",", header="price,temp,z", comments="", fmt="%.6g")
    run = tmp_path / "run"
    vaekit.train(str(tmp_path / "t.csv"), out=run, progress=False, evaluate_test=False, figures=False, epochs=1,
                 hidden=[8], latent_dim=2)
    assert cli(capsys, "export", run, "--format", "onnx", "--out", tmp_path / "o")[0] == 0
    doc = json.loads((tmp_path / "o" / "export.json").read_text())
    d = doc["data"]
    assert d["columns"] == ["price", "temp", "z"] and doc["likelihood"]["name"] == "gaussian"
    # the documented preprocessing on raw rows gives what vaekit feeds the model
    raw = np.loadtxt(tmp_path / "t.csv", delimiter=",", skiprows=1, dtype=np.float64)[:17]
    x = ((raw - np.asarray(d["standardize"]["mean"])) / np.asarray(d["standardize"]["std"])).astype(np.float32)
    got = run_onnx(tmp_path / "o" / "encoder.onnx", {"x": torch.from_numpy(x)})
    model = vaekit.load(run)
    from vaekit.data.datasets import load_inputs
    from vaekit.run import read_config

    _, spec, source = read_config(run)
    assert_close(got["mean"], model.encode(load_inputs(str(tmp_path / "t.csv"), spec, source).x[:17])[0], "mean")


def test_cli_partial_export_says_so(tmp_path, capsys):
    run = tmp_path / "aae"
    vaekit.train("digits", model="aae", encoder="deterministic", critic_hidden=[8], out=run, progress=False,
                 evaluate_test=False, figures=False, epochs=1, hidden=[16], latent_dim=2)
    code, stdout, _ = cli(capsys, "export", run, "--format", "onnx")
    lines = stdout.strip().splitlines()
    assert code == 0 and lines[0].startswith("partial export aae") and "encoder.onnx: x -> code" in lines[0]
    assert lines[1].startswith("not exported:") and "no q(z|x)" in lines[1]


def _refused(capsys, *argv):
    try:
        code, out, err = cli(capsys, *argv)
    except SystemExit as e:  # argparse's own errors exit from inside parse_args
        code, (out, err) = e.code, capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("argv,says", [
    ([], "--format"),  # required
    (["--format", "tflite"], "invalid choice: 'tflite'"),
    (["--format", "onnx", "--exporter", "jit"], "invalid choice: 'jit'"),
    (["--format", "onnx", "--bogus"], "unrecognized arguments: --bogus"),
    (["--format", "onnx", "--out", "{tmp}/no/such/folder"], "does not exist"),
    (["--format", "onnx", "--out", "{tmp}/a-file"], "is a file; give a folder"),
])
def test_cli_bad_flags_exit_2_with_one_line_and_write_nothing(digits_run, tmp_path, capsys, argv, says):
    (tmp_path / "a-file").write_text("keep")
    before = listing(tmp_path)
    code, out, err = _refused(capsys, "export", digits_run, *[a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert code == 2 and out == "" and says in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1
    assert listing(tmp_path) == before and (tmp_path / "a-file").read_text() == "keep"


@pytest.mark.parametrize("out", [None, "o"])
def test_cli_missing_run_exits_2(tmp_path, capsys, out):
    flags = [] if out is None else ["--out", tmp_path / out]
    code, _, err = _refused(capsys, "export", tmp_path / "nope", "--format", "onnx", *flags)
    assert code == 2 and "run directory not found" in err and len(err.strip().splitlines()) == 1
    assert listing(tmp_path) == []


def test_cli_non_exportable_model_exits_2_and_writes_nothing(digits_run, tmp_path, capsys, monkeypatch):
    import vaekit.apps.common as common
    from vaekit.models.base import BaseModel

    real = common.open_run

    class Unknown(BaseModel):  # a model registered by someone else: the exporter does not know its networks
        latent_dim = 3

    def fake_open(run_dir, device="auto"):
        run = real(run_dir, device=device)
        run.model = Unknown(run.model.config, run.spec)
        return run

    monkeypatch.setattr(common, "open_run", fake_open)
    code, out, err = _refused(capsys, "export", digits_run, "--format", "onnx", "--out", tmp_path / "o")
    assert code == 2 and out == "" and "cannot be exported to ONNX" in err and len(err.strip().splitlines()) == 1
    assert listing(tmp_path) == []


def test_cli_without_onnxruntime_names_the_extra(digits_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    code, _, err = _refused(capsys, "export", digits_run, "--format", "onnx", "--out", tmp_path / "o")
    assert code == 2 and "pip install 'vaekit[onnx]'" in err and len(err.strip().splitlines()) == 1
    assert listing(tmp_path) == []


def test_cli_exporter_failure_is_one_line(digits_run, tmp_path, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("Exporting the operator 'aten::frobnicate' to ONNX opset version 17 is not supported.\nmore")

    monkeypatch.setattr(torch.onnx, "export", broken)
    code, out, err = _refused(capsys, "export", digits_run, "--format", "onnx", "--out", tmp_path / "o")
    assert code == 2 and "aten::frobnicate" in err and "try --exporter dynamo" in err
    assert len(err.strip().splitlines()) == 1 and listing(tmp_path) == []
