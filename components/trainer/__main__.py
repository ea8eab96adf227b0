"""`python -m components.trainer`: the trainer's CLI (components.trainer.cli)."""

from components.trainer.cli import run_main

if __name__ == "__main__":
    run_main()
