"""``python -m vaekit``: the command line (what ``torchrun -m vaekit train ...`` starts in each process)."""

import sys

from .cli import program

if __name__ == "__main__":
    sys.exit(program())
