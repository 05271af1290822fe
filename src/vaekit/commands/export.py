"""``vaekit export``: a trained run as ONNX graphs (encoder, decoder, ...) plus export.json."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..export import EXPORTERS, FORMATS
from ._shared import emit


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="a run's encoder and decoder as ONNX files, with export.json describing them")
    p.add_argument("run_dir", help="a run directory written by vaekit train")
    p.add_argument("--format", required=True, choices=FORMATS, help="the file format (onnx)")
    p.add_argument("--out", default=None, help="folder for encoder.onnx, decoder.onnx and export.json "
                                               "(default RUN/onnx; created if missing, its files replaced if not)")
    p.add_argument("--exporter", choices=EXPORTERS, default="torchscript",
                   help="torch.onnx's TorchScript exporter (default, fast) or the torch.export-based one (dynamo)")
    p.add_argument("--json", action="store_true", help="print export.json's content as one JSON object")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from ..export import export_onnx, summary

    out = Path(args.run_dir) / "onnx" if args.out is None else Path(args.out)
    doc = export_onnx(args.run_dir, out, exporter=args.exporter)
    what = "partial export" if doc["partial"] else "exported"
    lines = [f"{what} {doc['model']} ({doc['arch']}) to {out}: {summary(doc)}; export.json describes them"]
    lines += [f"not exported: {note}" for note in doc["not_exported"]]
    return emit(args, doc, lines)
