"""python -m components.evaluator: the evaluator's CLI (components.evaluator.main)."""

import logging
import sys

from components.evaluator import main

if __name__ == "__main__":
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.getLogger("components").addHandler(_handler)
    sys.exit(main())
