"""`python -m components.tuner`: the tuner's CLI (components.tuner.cli)."""

import sys

from components.tuner.cli import main

if __name__ == "__main__":
    sys.exit(main())
