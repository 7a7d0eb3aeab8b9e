"""The ``attrib`` command line: one module per command group.

- ``attrib demo`` / ``stream`` / ``serve`` ([`attrib.cli.stream`][attrib.cli.stream]): attributions streamed while the
model thinks;
- ``attrib collect`` ([`attrib.cli.collect`][attrib.cli.collect]): features and causal targets, locally or on Ray;
- ``attrib fit`` / ``evaluate`` ([`attrib.cli.evaluate`][attrib.cli.evaluate]): the estimator and its faithfulness;
- ``attrib trajectories`` ([`attrib.cli.trajectories`][attrib.cli.trajectories]): reasoning trajectories and the failure
flagger;
- ``attrib norms`` ([`attrib.cli.norms`][attrib.cli.norms]): hidden-state norms by token type;
- ``attrib pointcopy`` / ``v1`` ([`attrib.cli.pointcopy`][attrib.cli.pointcopy]) and ``attrib latent``
([`attrib.cli.latent`][attrib.cli.latent]):
  the research variants' analyses;
- ``attrib shapes`` ([`attrib.cli.shapes`][attrib.cli.shapes]): the benchmark and the bundled models' training;
- ``attrib info`` ([`attrib.cli.info`][attrib.cli.info]): versions and everything registered.

Errors a user can fix (bad input, a missing file) print one line, ``error: ...``,
and exit with status 2.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from rich.markup import escape

from attrib.cli import collect, evaluate, info, latent, norms, pointcopy, shapes, stream, trajectories
from attrib.cli.console import console

__all__ = ["build_parser", "main"]

logger = logging.getLogger("attrib.cli")

_GROUPS = (stream, collect, evaluate, trajectories, pointcopy, latent, norms, info, shapes)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``attrib`` command."""
    from attrib import __version__

    p = argparse.ArgumentParser(
        prog="attrib",
        description="attrib: which image regions a thinking VLM relies on, span by span, live.",
        epilog="attrib COMMAND --help describes each command.",
    )
    p.add_argument("--version", action="version", version=f"attrib {__version__}", help="print the version and exit")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in _GROUPS:
        group.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``attrib`` console script.

    Returns:
        The process exit code: 0 on success, 2 on bad input.
    """
    args = build_parser().parse_args(argv)
    root = logging.getLogger()
    if not root.handlers:  # a host application's logging configuration is left alone
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return int(args.fn(args))
    except (ValueError, OSError) as e:
        console.print(f"[bold red]error:[/bold red] {escape(str(e))}")
        return 2
