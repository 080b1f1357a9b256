"""``python -m maiac``: the same as the ``maiac`` command."""

from maiac.cli import main

if __name__ == "__main__":
    main(prog_name="maiac")
