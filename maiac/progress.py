"""Progress on stderr for long work (compile passes, runs, verify, eval, generate, benches).

A live ``rich`` display — spinner, step name, bar and count when the total is known,
elapsed time — redrawn in place by rich's refresh thread, so it moves even while one
numpy call or one compiler pass takes seconds. Only on a terminal: nothing at all when
stderr is not a tty (pipes, CI logs, ``2>file``), with ``maiac --quiet`` or with
``MAIAC_QUIET=1``. The display is transient (erased when the outermost step ends), so
what stays on the terminal is the command's own output; ``note`` lines stay.

Use::

    with progress.step("compile", total=len(passes)) as bar:
        for p in passes:
            bar.update(f"compile: {p.name}")
            ...
            bar.advance()

    for shape in progress.track(shapes, "paper: bf16 GEMM", label=str):  # n/N, one by one
        ...

A bench script builds its parser with ``argument_parser`` (it adds ``--quiet/-q``). What
scripts print to stdout while a display is live goes to stdout unchanged when that is a
pipe or file, above the display when it is the terminal.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")

_quiet = False
_lock = threading.RLock()
_live: Any = None  # the rich Progress while a step is open
_depth = 0


def set_quiet(quiet: bool) -> None:
    """``maiac --quiet``: no progress output for the rest of this process."""
    global _quiet
    _quiet = quiet


def enabled() -> bool:
    """Progress is shown: stderr is a terminal and nobody asked for quiet."""
    if _quiet or os.environ.get("MAIAC_QUIET", "") not in ("", "0"):
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


class Bar:
    """The handle of one open step: rename it, advance it."""

    def __init__(self, task: Any = None) -> None:
        self._task = task

    def update(self, description: str | None = None, *, completed: int | None = None,
               total: int | None = None) -> None:
        if self._task is None or _live is None:
            return
        kw: dict[str, Any] = {}
        if description is not None:
            kw["description"] = description
        if completed is not None:
            kw["completed"] = completed
        if total is not None:
            kw["total"] = total
        _live.update(self._task, **kw)

    def advance(self, n: int = 1) -> None:
        if self._task is not None and _live is not None:
            _live.advance(self._task, n)


def _start() -> Any:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    class Count(MofNCompleteColumn):
        """``n/total``, or nothing for a step of unknown length (not ``0/?``)."""

        def render(self, task: Any) -> Any:
            return super().render(task) if task.total is not None else ""

    console = Console(file=sys.stderr, force_terminal=True)
    # print() to a terminal goes above the display; to a pipe or file it goes there
    # untouched (rich would otherwise reroute stdout to the terminal it draws on)
    try:
        stdout_is_terminal = sys.stdout.isatty()
    except (AttributeError, ValueError):
        stdout_is_terminal = False
    live = Progress(SpinnerColumn(), TextColumn("[bold]maiac[/bold] {task.description}"),
                    BarColumn(bar_width=30), Count(), TimeElapsedColumn(),
                    console=console, transient=True, refresh_per_second=8,
                    redirect_stdout=stdout_is_terminal)
    live.start()
    return live


@contextmanager
def step(description: str, total: int | None = None) -> Iterator[Bar]:
    """Show ``description`` while the body runs (a bar when ``total`` is given).

    Steps nest: an inner step is one more line under the outer one, removed when it
    ends. Without a terminal this costs one function call and shows nothing.
    """
    global _live, _depth
    if not enabled():
        yield Bar()
        return
    with _lock:
        if _live is None:
            _live = _start()
        _depth += 1
        task = _live.add_task(description, total=total)
    try:
        yield Bar(task)
    finally:
        with _lock:
            if _live is not None:
                _live.remove_task(task)
            _depth -= 1
            if _depth == 0 and _live is not None:
                _live.stop()
                _live = None


def track(items: Sequence[T], description: str,
          label: Callable[[T], str] | None = None) -> Iterator[T]:
    """Each of ``items`` in turn, under a bar ``description: label(item)  n/N  elapsed``
    (the loops of the bench scripts: rows, models, shapes)."""
    with step(description, total=len(items)) as bar:
        for item in items:
            if label is not None:
                bar.update(f"{description}: {label(item)}")
            yield item
            bar.advance()


class _Quiet(argparse.Action):
    """``-q``: quiet from the moment it is parsed (before the script's first step)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        set_quiet(True)
        setattr(namespace, self.dest, True)


def argument_parser(description: str | None = None, **kwargs: Any) -> argparse.ArgumentParser:
    """The ``argparse`` parser of a bench script: as ``ArgumentParser(description, ...)``,
    with ``--quiet/-q`` (no progress on stderr, as ``maiac --quiet``)."""
    parser = argparse.ArgumentParser(description=description, **kwargs)
    parser.add_argument("-q", "--quiet", action=_Quiet, nargs=0, default=False,
                        help="no progress on stderr (there is none without a terminal)")
    return parser


def run_program(program: Any, inputs: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """``maiac.runtime.interpreter.run_program`` with a bar over the program's top-level
    instructions (the runtime knows nothing of terminals: it only calls ``on_step``)."""
    from maiac.runtime.interpreter import run_program as run

    with step("run on the machine model", total=len(program.instructions)) as bar:
        return run(program, inputs, on_step=(lambda i, _n: bar.update(completed=i))
                   if enabled() else None, **kwargs)


def note(message: str) -> None:
    """A line that stays (``maiac: message``), above any live display; terminal only."""
    if not enabled():
        return
    with _lock:
        if _live is not None:
            _live.console.print(f"maiac: {message}", markup=False, highlight=False)
        else:
            print(f"maiac: {message}", file=sys.stderr, flush=True)
