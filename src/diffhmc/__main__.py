"""``python -m diffhmc`` runs the command-line interface."""

from diffhmc.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
