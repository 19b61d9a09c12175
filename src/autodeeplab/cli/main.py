"""``autodeeplab`` entry point: builds the parser from the subcommand modules and maps errors to exit codes.

Each subcommand lives in its own module of this package and exposes
``register(subparsers) -> None``, which adds its parser and sets ``func=handler`` where
``handler(args: argparse.Namespace) -> int | None``. User errors (:class:`AutoDeepLabError`) become one
line on stderr and exit code 2, and so does an ``OSError`` of the system refusing a file operation (a
read-only folder, a full disk: the path and the system's words); Ctrl-C at any moment, start-up included,
is one line and exit 130. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import signal
import sys
import threading
from collections.abc import Iterator, Sequence

from autodeeplab import __version__
from autodeeplab.errors import AutoDeepLabError, describe_os_error

# Subcommand modules, in the order they appear in --help.
COMMAND_MODULES: tuple[str, ...] = (
    "run",
    "search",
    "decode",
    "data",
    "train",
    "evaluate",
    "predict",
    "export",
    "info",
    "show",
    "study",
)

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (plus where to look), not a usage dump."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.subcommand_error(self.prog, message)

    @staticmethod
    def subcommand_error(prog: str, message: str) -> None:
        sys.stderr.write(f"{prog}: error: {message} (see '{prog} --help')\n")
        raise SystemExit(EXIT_USER_ERROR)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="autodeeplab",
        description="Auto-DeepLab: hierarchical neural architecture search for semantic segmentation.",
    )
    parser.add_argument("--version", action="version", version=f"autodeeplab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__package__}.{name}").register(sub)
    return parser


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """Hold a Ctrl-C that arrives inside the block and raise it as KeyboardInterrupt when the block ends.

    Building the parser imports torch and numpy (seconds). A KeyboardInterrupt raised in the middle of a C
    extension's import can be lost there and leave a half-initialised module behind (seen: numpy without
    ``matrix``, the run carrying on and crashing later), so during the imports the signal only sets a flag.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread (tests call main() in threads)
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    # Named before the parser exists, for a Ctrl-C while it is built.
    known = words[:1] and words[0] in {*COMMAND_MODULES, "eval"}
    command = f"autodeeplab {words[0]}" if known else "autodeeplab"
    try:
        # Building the parser imports torch (seconds): a Ctrl-C then is an interrupt, not a traceback.
        with interrupts_held():
            parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        command = f"autodeeplab {args.command}"
        if extra:  # after the command word: the command's flags are what the user needs to see
            before = {args.command, extra[0]} <= set(words) and words.index(extra[0]) < words.index(
                args.command
            )
            parser.subcommand_error(
                "autodeeplab" if before else command, f"unrecognized arguments: {' '.join(extra)}"
            )
        status = int(args.func(args) or 0)
        leave_process_group(together=True)
        return status
    except AutoDeepLabError as exc:
        print(f"{command}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as exc:
        if exc.errno is None:
            raise  # not the system refusing a file operation: a bug, keep its traceback
        # The machine said no (read-only folder, disk full, permissions): name the path and its words.
        print(f"{command}: error: {describe_os_error(exc)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt as exc:
        print(f"{command}: {str(exc) or 'interrupted'}", file=sys.stderr)  # a run's says how to continue
        return EXIT_INTERRUPTED
    finally:
        leave_process_group()


def leave_process_group(together: bool = False) -> None:
    """A torchrun rank leaves its process group before the interpreter exits: a gloo group still in use by
    another rank, or its threads still alive at exit, abort the process (SIGABRT), which torchrun counts as
    a failed run. ``together`` (a command that finished): wait for every rank first; after an error the
    group is left at once (torchrun tears the others down)."""
    if "torch" not in sys.modules:
        return
    from torch import distributed as dist

    if dist.is_available() and dist.is_initialized():
        if together:
            dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
