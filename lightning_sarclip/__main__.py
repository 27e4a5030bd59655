"""``python -m lightning_sarclip ...`` (see :mod:`lightning_sarclip.cli`)."""

from lightning_sarclip.cli import main

if __name__ == "__main__":
    main()
