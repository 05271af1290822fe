"""``python -m vaekit``: the command line (what ``torchrun -m vaekit train ...`` starts in each process)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
