"""The one ``fallwatch`` command. Each package adds its own sub-commands.

Every package that has commands exposes ``register(subparsers)`` in its own ``cli.py``;
this module only wires them together, so a new command never touches another
package's code.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

#: Packages whose ``cli.register`` adds sub-commands, in the order they appear in --help.
COMMAND_MODULES = (
    "fallwatch.app.demo",
    "fallwatch.sim.cli",
    "fallwatch.edge.cli",
    "fallwatch.gateway.cli",
    "fallwatch.models.cli",
    "fallwatch.app.bench.cli",
    "fallwatch.dashboards.cli",
    "fallwatch.gateway.provision_cli",
    "fallwatch.app.chaos.cli",
)


#: Commands whose process runs long and need only their own package's commands: parsing their
#: arguments does not import every other package (the simulator, the edge and the models
#: bring numpy and more: ~50 MB of a gateway's resident memory, issue 16).
LEAN_COMMANDS = {"gateway": ("fallwatch.gateway.cli",)}


def register_plugins() -> None:
    """Plug-ins that live in the composition layer because the layer they plug into must
    not import them (the simulator as an edge source, and ``fallwatch edge record``)."""
    from fallwatch.app import sim_source

    sim_source.register()


def build_parser(modules: Sequence[str] = COMMAND_MODULES) -> argparse.ArgumentParser:
    if modules is COMMAND_MODULES:
        register_plugins()
    parser = argparse.ArgumentParser(
        prog="fallwatch",
        description="Camera-free fall detection and fall-risk monitoring for home care.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and name.startswith(exc.name):
                continue  # that package has no commands (yet)
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in args_in if not a.startswith("-")), None)
    parser = build_parser(LEAN_COMMANDS.get(command or "", COMMAND_MODULES))
    args = parser.parse_args(args_in)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    rc = args.func(args)
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
