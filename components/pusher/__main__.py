"""python -m components.pusher: push, or (--validate_only DIR) the fresh process's load-and-query check."""

import sys

from components.pusher import main

if __name__ == "__main__":
    sys.exit(main())
