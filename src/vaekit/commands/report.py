"""``vaekit report RUN``: the run's single self-contained HTML page."""

from __future__ import annotations

import argparse

from ..apps.common import check_out, run_inputs
from ..apps.report_html import build_report
from ._shared import add_run_args, emit, open_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="write the run's HTML report (metrics, figures, latent map), images embedded")
    add_run_args(p)
    p.add_argument("--out", default=None, help="HTML file (default RUN/report.html)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    run = open_from_args(args)
    out = check_out(args.out or run.dir / "report.html", (".html", ".htm"))
    test = run_inputs(run, None, split=args.split, data_dir=args.data_dir)
    path = build_report(run, test, out=out)
    return emit(args, {"report": str(path)}, [f"report: {path}"])
