"""The ``geosearch`` command line.

Each sub-command lives in ``server/commands/<name>.py`` and exposes ``register(subparsers)``,
which adds its parser and sets ``func``. A :class:`~geosearch.errors.GeoSearchError` (bad input)
becomes a one-line message on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from geosearch.errors import GeoSearchError

COMMAND_MODULES = [
    "geosearch_server.commands.index",
    "geosearch_server.commands.search",
    "geosearch_server.commands.info",
    "geosearch_server.commands.relocate",
    "geosearch_server.commands.upgrade",
    "geosearch_server.commands.models",
    "geosearch_server.commands.train",
    "geosearch_server.commands.eval",
    "geosearch_server.commands.bench",
    "geosearch_server.commands.layers",
    "geosearch_server.commands.relate",
    "geosearch_server.commands.serve",
    "geosearch_server.commands.ask",
    "geosearch_server.commands.change",
    "geosearch_server.commands.example",
]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own errors: one line, exit 2
        self.exit(2, f"geosearch: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="geosearch", description="Find places in Earth-observation imagery by describing them."
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:  # command not built yet
                continue
            raise
        module.register(sub)
    return parser


def _version() -> str:
    from geosearch import __version__

    return f"geosearch {__version__}"


def main(argv: list[str] | None = None) -> int:
    from geosearch import timing

    timing.start()
    _quiet_openmp()
    with timing.phase("parse_args"):
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help / --version (0) and usage errors (2)
            return int(exc.code or 0)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except GeoSearchError as exc:
        print(f"geosearch: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("geosearch: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (``geosearch info X | head``): no traceback
        _silence_stdout()
        return 141  # what a shell reports for a command ended by SIGPIPE
    rc = int(result or 0)
    if argv is None and getattr(args, "fast_exit", False):
        _exit_now(rc)
    return rc


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's last flush does not fail again."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _quiet_openmp() -> None:
    """OpenMP threads that wait for work sleep instead of spinning (unless OMP_WAIT_POLICY is set).
    On a machine whose cores are shared, a spinning torch thread burns the time slice its partner
    needs: measured on 2 busy cores, ``geosearch ask`` took 6.3 s with spinning threads and 4.0 s
    with sleeping ones. Only how threads wait changes, not how work is split: embeddings are
    bit-for-bit the same. Read when torch loads, which the parser never does, so this is in time."""
    import os

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _exit_now(rc: int) -> None:
    """End the process without the interpreter's teardown. After torch is loaded, freeing every
    module at exit takes 0.5-1 s, longer than some whole commands. Only for the ``geosearch``
    command itself (``argv is None``, never an in-process call) and only for read-only commands
    (``fast_exit`` set by ask / search / info) whose outputs are all written and closed by now."""
    import os

    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):  # a closed pipe: what Python itself would report as 120
        rc = rc or 120
    os._exit(rc)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
