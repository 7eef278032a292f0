"""``python -m localmem``: the ``localmem`` command."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
