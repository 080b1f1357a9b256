"""How the ``maiac`` command ends: one line and the right exit code, whatever happened.

The contract (the conventions at the top of docs/cli.md): 0 success; 1 a failed
verification (``maiac verify``); 2 bad input or a bad option (a ``MaiacError``, a click usage error, an unreadable or unwritable
file, not enough memory for the input); 3 an internal error, a bug in maiac: one line
saying so with the exception and how to report it, the traceback only with ``--debug``
or ``MAIAC_DEBUG=1``; 130 interrupted (SIGINT), 143 terminated (SIGTERM). Outputs are
written through temporary files that are removed on every one of these paths, so an
interrupted or failed command leaves nothing behind.
"""

from __future__ import annotations

import os
import signal
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import click

from maiac.runtime.errors import MaiacError

EXIT_INTERNAL = 3
EXIT_SIGINT = 128 + signal.SIGINT
EXIT_SIGTERM = 128 + signal.SIGTERM
REPORT_URL = "the maiac issue tracker"


class Terminated(BaseException):
    """SIGTERM arrived: unwinds like KeyboardInterrupt so temporary files are removed."""


def debug_enabled(flag: bool = False) -> bool:
    """``--debug`` given or ``MAIAC_DEBUG`` set to a true value."""
    return flag or os.environ.get("MAIAC_DEBUG", "").strip().lower() in ("1", "true", "yes",
                                                                        "on")


def _raise_terminated(signum: int, frame: Any) -> NoReturn:
    raise Terminated()


@contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """While inside, SIGTERM raises ``Terminated`` (main thread only; restored after)."""
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread (e.g. a test runner's worker)
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else ""


def _fail(ctx: click.Context, message: str, code: int) -> NoReturn:
    click.echo(message, err=True)
    ctx.exit(code)
    raise AssertionError("unreachable")  # ctx.exit raises


def guarded(ctx: click.Context, invoke: Callable[[], Any], debug: bool) -> Any:
    """``invoke()`` with every way of ending mapped to one line and its exit code."""
    try:
        with sigterm_unwinds():
            return invoke()
    except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
        raise  # usage errors (exit 2) and ctx.exit(n): click prints and exits
    except MaiacError as err:
        if debug_enabled(debug):
            traceback.print_exc()
        msg = str(err).strip() or type(err).__name__
        _fail(ctx, f"error: {msg}", int(getattr(err, "exit_code", 2)))
    except KeyboardInterrupt:
        _fail(ctx, "maiac: interrupted", EXIT_SIGINT)
    except Terminated:
        _fail(ctx, "maiac: terminated", EXIT_SIGTERM)
    except MemoryError:
        if debug_enabled(debug):
            traceback.print_exc()
        _fail(ctx, "error: out of memory: the input needs more host memory than is available "
                   "(see --max-memory / MAIAC_MAX_MEMORY)", 2)
    except OSError as err:  # a file maiac was told to read or write
        if debug_enabled(debug):
            traceback.print_exc()
        where = f"{err.filename}: " if err.filename else ""
        _fail(ctx, f"error: {where}{err.strerror or _first_line(err) or type(err).__name__}", 2)
    except Exception as err:
        if debug_enabled(debug):
            traceback.print_exc()
            _fail(ctx, f"maiac: internal error: {type(err).__name__}: {_first_line(err)}",
                  EXIT_INTERNAL)
        _fail(ctx, f"maiac: internal error (a bug in maiac, not in your input): "
                   f"{type(err).__name__}: {_first_line(err)[:300]}. Please report it to "
                   f"{REPORT_URL} with the command line; rerun with --debug or MAIAC_DEBUG=1 "
                   f"for the traceback.", EXIT_INTERNAL)
