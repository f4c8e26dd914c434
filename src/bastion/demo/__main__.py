"""``python -m bastion.demo [--host H] [--port P] [--workers N]``: serve the demo upstream."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from bastion.demo.server import run

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command line and serve until interrupted."""
    parser = argparse.ArgumentParser(
        prog="python -m bastion.demo", description="Serve Bastion's demo upstream API."
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=9000, help="port to bind (9000)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (1)")
    parser.add_argument(
        "--log-level",
        default="warning",
        choices=["critical", "error", "warning", "info", "debug"],
        help="uvicorn log level (warning)",
    )
    args = parser.parse_args(argv)
    run(args.host, args.port, workers=args.workers, log_level=args.log_level)


if __name__ == "__main__":
    main()
