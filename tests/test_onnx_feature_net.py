"""--feature-net NET.onnx: a classifier exported to ONNX, run by vaekit's graph reader, for the
perceptual loss and for sample quality; checked against the PyTorch original and onnxruntime."""

import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import vaekit
from cli_helpers import cli

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from vaekit.apps.feature_net import load_feature_net  # noqa: E402
from vaekit.modules import onnx_graph  # noqa: E402


class SmallNet(nn.Module):
    """Conv, batch norm, pooling (max, asymmetric-free average), dropout, two linear layers."""

    def __init__(self, c=1, side=8, k=10):
        super().__init__()
        self.c1 = nn.Conv2d(c, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.c2 = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8 * (side // 4) ** 2, 16)
        self.out = nn.Sequential(nn.Dropout(0.3), nn.Linear(16, k))

    def hidden(self, x):
        a = F.relu(self.bn(self.c1(x)))
        b = F.relu(F.max_pool2d(self.c2(a), 2, ceil_mode=True))
        h = F.relu(self.fc(torch.flatten(b, 1)))
        return [a, b, h]

    def forward(self, x):
        return self.out(self.hidden(x)[-1])


class OddNet(nn.Module):
    """What exporters write for view(x.size(0), -1) (Shape, Gather, Unsqueeze, Concat, Reshape), GELU
    as Erf arithmetic, leaky ReLU, average pooling, global pooling, a residual add and a softmax."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(1, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 4, 1)
        self.fc = nn.Linear(4 * 4 * 4 + 4, 12)
        self.out = nn.Linear(12, 3)

    def forward(self, x):
        a = F.leaky_relu(self.c(x), 0.1)
        a = a + self.c2(a)
        p = F.avg_pool2d(a, 2)
        g = F.adaptive_avg_pool2d(a, 1).view(x.size(0), -1)
        h = F.gelu(self.fc(torch.cat([p.view(x.size(0), -1), g], 1)))
        return torch.softmax(self.out(h), -1)


def _export(net, path, shape=(1, 8, 8), dynamic=True, opset=17):
    net.eval()
    kwargs = {"dynamic_axes": {"x": {0: "batch"}, "logits": {0: "batch"}}} if dynamic else {}
    torch.onnx.export(net, (torch.rand(2 if dynamic else 1, *shape),), str(path), input_names=["x"], output_names=["logits"],
                      opset_version=opset, dynamo=False, **kwargs)
    return path


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    torch.manual_seed(0)
    net = SmallNet()
    with torch.no_grad():  # batch norm with statistics that are not the identity
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.running_var.uniform_(0.5, 2.0)
    return net.eval(), _export(net, tmp_path_factory.mktemp("onnx") / "net.onnx")


def test_onnx_net_matches_the_original_outputs_features_and_gradients(small):
    ref, path = small
    net, meta = load_feature_net(path)
    assert meta["architecture"] == "onnx" and meta["input_shape"] == [1, 8, 8] and meta["num_classes"] == 10
    assert meta["checked_with_onnxruntime"] is True and meta["embed_dim"] == 16
    x = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(net(x), ref(x), atol=1e-5)
        assert torch.allclose(net.embed(x), ref.hidden(x)[-1], atol=1e-5)  # the input of the last linear layer
    theirs = ref.hidden(x)
    ours = net.layers(x)
    assert len(ours) == 3 and all(a.shape == b.shape for a, b in zip(ours, theirs))
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(ours, theirs))
    # gradients reach the input (what the perceptual loss needs), and equal PyTorch's
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    sum(o.pow(2).sum() for o in net.layers(xa)).backward()
    sum(o.pow(2).sum() for o in ref.hidden(xb)).backward()
    assert xa.grad.abs().sum() > 0 and torch.allclose(xa.grad, xb.grad, atol=1e-4)
    assert list(net.parameters()) == []  # constants are buffers: nothing to train


def test_exporter_shape_arithmetic_gelu_and_softmax_are_read_exactly(tmp_path):
    torch.manual_seed(1)
    ref = OddNet().eval()
    net, meta = load_feature_net(_export(ref, tmp_path / "odd.onnx"))
    ops = {n["op"] for n in meta["arch_args"]["nodes"]}
    assert {"Shape", "Gather", "Concat", "Reshape", "Erf", "Softmax"} <= ops  # the paths this test is for
    x = torch.rand(7, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(net(x), ref(x), atol=1e-5)
    assert meta["num_classes"] == 3 and meta["embed_dim"] == 12


def test_the_description_is_json_and_rebuilds_the_same_net(small):
    from vaekit.modules.feature_nets import build_feature_net

    _, path = small
    net, meta = load_feature_net(path)
    again = json.loads(json.dumps(meta))  # what a run's config.json keeps
    rebuilt = build_feature_net(again["architecture"], tuple(again["input_shape"]), again["num_classes"],
                                again["arch_args"])
    rebuilt.load_state_dict(net.state_dict())
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), net(x))


def _graph_file(tmp_path, nodes, inputs, outputs, inits=(), name="g.onnx", opset=17):
    from onnx import TensorProto, helper

    g = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    path = tmp_path / name
    path.write_bytes(model.SerializeToString())
    return path, TensorProto, helper


def test_bad_onnx_files_are_refused_with_one_line(tmp_path):
    from onnx import TensorProto, helper
    from vaekit.errors import VaekitError

    def refused(path, *needles):
        with pytest.raises(VaekitError) as e:
            load_feature_net(path)
        msg = str(e.value)
        assert "\n" not in msg and str(path) in msg and all(n in msg for n in needles), msg

    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07garbage")
    refused(corrupt, "not a valid ONNX model")
    refused(tmp_path / "missing.onnx", "not found")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    path, *_ = _graph_file(tmp_path, [helper.make_node("Hardmax", ["x"], ["y"])], [x], [y], name="op.onnx")
    refused(path, "Hardmax", "operators vaekit's reader does not run")
    free = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "n"])
    path, *_ = _graph_file(tmp_path, [helper.make_node("Relu", ["x"], ["y"])], [free], [y], name="free.onnx")
    refused(path, "fixed")
    x2 = helper.make_tensor_value_info("x2", TensorProto.FLOAT, ["batch", 4])
    path, *_ = _graph_file(tmp_path, [helper.make_node("Add", ["x", "x2"], ["y"])], [x, x2], [y], name="two.onnx")
    refused(path, "takes 2 inputs")


def test_a_graph_fixed_to_one_example_is_refused_with_the_fix(tmp_path):
    class One(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, 10)

        def forward(self, x):
            return self.fc(F.relu(x.reshape(1, 64)))

    path = _export(One(), tmp_path / "one.onnx", dynamic=False)
    from vaekit.errors import VaekitError

    with pytest.raises(VaekitError, match="dynamic batch axis"):
        load_feature_net(path)


def test_a_reading_that_disagrees_with_onnxruntime_is_refused(small, monkeypatch):
    _, path = small
    monkeypatch.setitem(onnx_graph.OPS, "Relu", lambda ins, a, opset: F.leaky_relu(ins[0], 0.5))
    from vaekit.errors import VaekitError

    with pytest.raises(VaekitError, match="disagrees with onnxruntime"):
        load_feature_net(path)


TINY = ["--arch", "conv", "--hidden", "8,16", "--latent-dim", "4", "--epochs", "1", "--batch-size", "64", "--quiet"]


def test_perceptual_run_and_sample_quality_with_an_onnx_net(small, tmp_path, capsys):
    ref, path = small
    net_file = tmp_path / "mine.onnx"
    net_file.write_bytes(path.read_bytes())
    run = tmp_path / "run"
    code, out, err = cli(capsys, "train", "--data", "digits", "--recon-loss", "perceptual", "--feature-net", net_file,
                         "--out", run, "--json", *TINY)
    assert code == 0, err
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"]["extra"]["perceptual"]["net"]["architecture"] == "onnx"
    net_file.unlink()  # the run keeps the graph's description and its weights
    model = vaekit.load(run)
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(model.perceptual.net(x), ref(x), atol=1e-5)
    code, out, err = cli(capsys, "train", "--out", run, "--resume", "--epochs", "2", "--quiet")
    assert code == 0, err
    code, out, err = cli(capsys, "evaluate", run, "--sample-quality", "--feature-net", path, "--n-samples", "60",
                         "--json")
    assert code == 0, err
    res = json.loads(out)
    sq = res.get("sample_quality", res)
    assert sq["fd"] > 0 and "ONNX feature net net.onnx" in sq["fd_features"] and "not Inception FID" in sq["fd_features"]


def test_onnx_is_not_an_architecture_to_train(capsys, tmp_path):
    code, _, err = cli(capsys, "features", "--data", "digits", "--arch", "onnx", "--epochs", "1",
                       "--out", tmp_path / "n", "--quiet")
    assert code == 2 and "read from an .onnx file" in err and not (tmp_path / "n").exists()


def _np(t):
    return t.numpy() if isinstance(t, torch.Tensor) else t


R = torch.Generator().manual_seed(3)
X4 = torch.randn(2, 2, 7, 7, generator=R)
W = torch.randn(3, 2, 3, 3, generator=R)
CASES = [  # (op, inputs, attributes, opset): one node, checked against onnxruntime
    ("Flatten", [torch.randn(2, 3, 4, 5, generator=R)], {"axis": -1}, 17),
    ("Flatten", [torch.randn(2, 3, 4, 5, generator=R)], {"axis": 0}, 17),
    ("Flatten", [torch.randn(2, 3, 4, 5, generator=R)], {"axis": -3}, 17),
    ("Conv", [X4, W], {"auto_pad": "SAME_UPPER", "strides": [2, 2]}, 17),
    ("Conv", [X4, W], {"auto_pad": "SAME_LOWER", "strides": [2, 2]}, 17),
    ("Conv", [X4, W, torch.randn(3, generator=R)], {"pads": [0, 1, 1, 0], "dilations": [2, 1]}, 17),
    ("MaxPool", [X4], {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1}, 17),
    ("MaxPool", [X4], {"kernel_shape": [2, 2], "pads": [0, 1, 1, 0]}, 17),
    ("AveragePool", [X4], {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}, 17),
    ("AveragePool", [X4], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": 1}, 17),
    ("GlobalAveragePool", [X4], {}, 17),
    ("Gather", [torch.randn(3, 5, 2, generator=R), torch.tensor([[0, -1], [2, 1]])], {"axis": 1}, 17),
    ("Gather", [torch.randn(3, 5, generator=R), torch.tensor(-2)], {"axis": 0}, 17),
    ("Slice", [torch.randn(4, 9, generator=R), torch.tensor([-3, 1]), torch.tensor([100, -1]), torch.tensor([0, 1]),
               torch.tensor([1, 3])], {}, 17),
    ("Unsqueeze", [torch.randn(3, 4, generator=R), torch.tensor([-1, 0])], {}, 17),
    ("Unsqueeze", [torch.randn(3, 4, generator=R)], {"axes": [1]}, 11),
    ("Squeeze", [torch.randn(3, 1, 4, 1, generator=R), torch.tensor([-1])], {}, 17),
    ("Reshape", [torch.randn(2, 3, 4, generator=R), torch.tensor([0, -1])], {}, 17),
    ("Transpose", [torch.randn(2, 3, 4, generator=R)], {"perm": [2, 0, 1]}, 17),
    ("Gemm", [torch.randn(4, 3, generator=R), torch.randn(5, 4, generator=R), torch.randn(5, generator=R)],
     {"transA": 1, "transB": 1, "alpha": 0.5, "beta": 2.0}, 17),
    ("MatMul", [torch.randn(2, 3, 4, generator=R), torch.randn(4, 5, generator=R)], {}, 17),
    ("Softmax", [torch.randn(2, 3, 4, generator=R)], {"axis": 1}, 11),
    ("Softmax", [torch.randn(2, 3, 4, generator=R)], {"axis": 1}, 17),
    ("LogSoftmax", [torch.randn(2, 3, generator=R)], {}, 17),
    ("ReduceMean", [torch.randn(2, 3, 4, generator=R), torch.tensor([1, -1])], {"keepdims": 0}, 18),
    ("ReduceMean", [torch.randn(2, 3, 4, generator=R)], {"axes": [2]}, 17),
    ("ReduceSum", [torch.randn(2, 3, 4, generator=R), torch.tensor([0])], {}, 13),
    ("Pad", [X4, torch.tensor([0, 0, 1, 2, 0, 0, 2, 1])], {"mode": "reflect"}, 17),
    ("Pad", [X4, torch.tensor([0, 1, 1, 0, 0, 0, 2, 1]), torch.tensor(0.5)], {}, 17),
    ("Clip", [torch.randn(5, generator=R), torch.tensor(-0.2)], {}, 17),
    ("Clip", [torch.randn(5, generator=R)], {}, 17),
    ("Selu", [torch.randn(5, generator=R)], {"alpha": 1.5, "gamma": 0.9}, 17),
    ("LeakyRelu", [torch.randn(5, generator=R)], {}, 17),
    ("HardSigmoid", [torch.randn(5, generator=R)], {}, 17),
    ("Elu", [torch.randn(5, generator=R)], {"alpha": 0.5}, 17),
    ("Div", [torch.tensor([7, -7, 9]), torch.tensor([2, 2, -4])], {}, 17),
    ("Shape", [X4], {"start": 1, "end": -1}, 17),
    ("Concat", [torch.randn(2, 3, generator=R), torch.randn(2, 1, generator=R)], {"axis": -1}, 17),
    ("BatchNormalization", [X4, torch.rand(2, generator=R), torch.randn(2, generator=R), torch.randn(2, generator=R),
                            torch.rand(2, generator=R) + 0.5], {"epsilon": 1e-3}, 17),
    ("LayerNormalization", [torch.randn(2, 3, 4, generator=R), torch.rand(4, generator=R), torch.randn(4, generator=R)],
     {}, 17),
]


@pytest.mark.parametrize("op, ins, attrs, opset", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_each_operator_agrees_with_onnxruntime(op, ins, attrs, opset):
    import onnxruntime as ort
    from onnx import helper

    names = [f"i{k}" for k in range(len(ins))]
    node = helper.make_node(op, names, ["out"], **attrs)
    graph = helper.make_graph([node], "one", [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(
        _np(t).dtype), list(t.shape)) for n, t in zip(names, ins)], [helper.make_empty_tensor_value_info("out")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8  # (onnx's own reference evaluator gets Softmax before opset 13 wrong: onnxruntime is the judge)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = sess.run(None, {n: _np(t) for n, t in zip(names, ins)})[0]
    got = onnx_graph.OPS[op](list(ins), attrs, opset)
    assert tuple(got.shape) == want.shape
    torch.testing.assert_close(got, torch.from_numpy(want).to(got.dtype), atol=1e-5, rtol=1e-5)


def test_a_dynamo_export_with_external_weights(tmp_path):
    pytest.importorskip("onnxscript")
    torch.manual_seed(2)
    ref = SmallNet().eval()
    path = tmp_path / "dyn.onnx"
    batch = torch.export.Dim("batch", min=1, max=4096)
    torch.onnx.export(ref, (torch.rand(2, 1, 8, 8),), str(path), input_names=["x"], output_names=["logits"],
                      dynamo=True, dynamic_shapes={"x": {0: batch}}, external_data=True)
    net, meta = load_feature_net(path)
    x = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(net(x), ref(x), atol=1e-5)
        assert torch.allclose(net.embed(x), ref.hidden(x)[-1], atol=1e-5)
    assert len(net.layers(x)) == 3
    data = [tmp_path / name for name in meta["external_data"]]
    if data:  # the weights beside the graph: without them, one line that says so
        from vaekit.errors import VaekitError

        data[0].unlink()
        with pytest.raises(VaekitError, match="separate file that is missing"):
            load_feature_net(path)
