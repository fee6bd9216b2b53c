"""Messages of the runtime's commands (tilert-run, tilert-serve): `logging` under the
"tilert_compiler" logger, written to stderr as "prog: message" ("prog: error: message" for
warnings and errors). -q keeps warnings and errors, -v adds debug messages (and the
server's access log)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

LOGGER = "tilert_compiler"
log = logging.getLogger(LOGGER)


def add_flags(p: argparse.ArgumentParser) -> None:
    from tilert_compiler import __version__

    p.add_argument("-v", "--verbose", action="store_true", help="debug messages too")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")


class _Format(logging.Formatter):
    def __init__(self, prog: str, bare: bool = False):
        super().__init__()
        self.prog, self.bare = prog, bare

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.levelno >= logging.WARNING:
            return f"{self.prog}: {record.levelname.lower()}: {msg}"
        return msg if self.bare else f"{self.prog}: {msg}"


class _Stderr(logging.StreamHandler):
    """A handler on whatever sys.stderr is when a message comes, not the stream of when it
    was made (a test harness swaps sys.stderr between calls)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # noqa: D102
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


_touched: set[str] = set()


def setup(
    prog: str, args: argparse.Namespace, *, loggers: tuple[str, ...] = (), bare: bool = False
) -> int:
    """Send the package's messages (and `loggers`') to stderr at the level -v/-q ask for;
    returns that level. `bare`: information lines without the "prog: " prefix (the
    compiler's progress table). Called again (a second main() in one process), it replaces
    its handler; `restore` undoes it when the command returns."""
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    handler = _Stderr()
    handler.setFormatter(_Format(prog, bare))
    handler._tilert = True  # type: ignore[attr-defined]
    for name in (LOGGER, *loggers):
        lg = logging.getLogger(name)
        for h in [h for h in lg.handlers if getattr(h, "_tilert", False)]:
            lg.removeHandler(h)
        lg.addHandler(handler)
        lg.setLevel(level)
        lg.propagate = False
        _touched.add(name)
    if not args.verbose:  # transformers' advice about tokenizers, read when it is imported
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    return level


def restore() -> None:
    """The loggers as they were before `setup`: a command run from Python (main(argv))
    leaves no handler or level behind for the library calls after it."""
    for name in _touched:
        lg = logging.getLogger(name)
        for h in [h for h in lg.handlers if getattr(h, "_tilert", False)]:
            lg.removeHandler(h)
        lg.setLevel(logging.NOTSET)
        lg.propagate = True
    _touched.clear()
