"""``python -m plugtrain`` (and ``torchrun -m plugtrain``) runs the command-line interface."""

from plugtrain.entrypoints.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
