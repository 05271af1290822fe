"""The one helper the CLI tests share."""

from vaekit.cli import main


def cli(capsys, *argv):
    """Run ``vaekit ARGV`` in-process; returns (exit code, stdout, stderr). Arguments may be paths."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err
