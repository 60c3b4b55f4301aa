"""`python -m app`: the `taskrun-api` command."""

from app.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
