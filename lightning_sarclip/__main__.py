"""``python -m lightning_sarclip <command> ...`` (see :mod:`lightning_sarclip.commands`)."""

from lightning_sarclip.commands import main

if __name__ == "__main__":
    main()
