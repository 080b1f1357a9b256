"""Files the ``maiac`` command writes: checked before any work, written atomically.

``check_output`` runs before a command compiles or runs anything (the checks cost
nothing, the work may cost minutes): the output must not be one of the command's inputs
(``-o model.onnx`` would destroy the model), must not be a directory, device or other
non-regular file (never replaced, even as root), and its folder must exist and be
writable. ``-`` names stdout for a text output (an IR, a trace, an HTML page: ``text=True``)
and is refused for a binary one (.maia, .npz); ``stdout_claimed`` lets one output at a time
have stdout. ``atomic_path`` then writes through a temporary file in that folder, given the
mode a new file gets under the user's umask (or the mode of the file it replaces), and
moved into place only when the whole write succeeded; on any failure, SIGINT or SIGTERM
(maiac/cli_errors.py) the temporary file is removed, so nothing half-written is left.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from maiac.runtime.errors import MaiacError


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


STDOUT = "-"


def check_output(path: str | os.PathLike[str], option: str = "-o",
                 inputs: Iterable[str | os.PathLike[str] | None] = (), *,
                 text: bool = False) -> Path:
    """``path`` if maiac may write it (see the module docstring), else a ``MaiacError``.
    ``text``: the output is text, so ``-`` (stdout) is allowed."""
    if str(path) == STDOUT:
        if not text:
            raise MaiacError(f"{option} -: this output is binary, not text for stdout; "
                             f"name a file")
        return Path(STDOUT)
    dest = Path(path)
    for src in inputs:
        if src is not None and str(src) != "-" and _same_file(dest, Path(src)):
            raise MaiacError(f"{option} {dest}: is the input {src}; refusing to overwrite it "
                             "(choose another output file)")
    try:
        st = os.stat(dest)
    except FileNotFoundError:
        st = None
    except OSError as err:
        raise MaiacError(f"{option} {dest}: {err.strerror or err}") from None
    if st is not None and not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise MaiacError(f"{option} {dest}: is {kind}; refusing to replace it")
    parent = dest.parent if str(dest.parent) else Path(".")
    if not parent.is_dir():
        raise MaiacError(f"{option} {dest}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise MaiacError(f"{option} {dest}: directory {parent} is not writable")
    return dest


def _new_file_mode(dest: Path) -> int:
    """The mode of the file ``dest`` replaces, or a new file's under the umask."""
    try:
        st = os.stat(dest)
        if stat.S_ISREG(st.st_mode):
            return stat.S_IMODE(st.st_mode)
    except OSError:
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def _stop_signals_held() -> Iterator[None]:
    """SIGINT/SIGTERM wait until the block ends; main thread only.

    Python runs a signal's handler in the main thread between bytecodes, so the handlers
    are swapped, for the block, for one that only notes the signal; the noted ones go to
    the real handlers at its end. The signals are not blocked (``pthread_sigmask``): a
    thread that blocks one makes the kernel hand it to another thread (a BLAS pool's),
    and when that thread runs its C handler late (preempted, under load), after the main
    thread went into a blocking call (a write, a sleep), nothing interrupts that call and
    the signal waits until it returns: a SIGTERM ignored for a minute
    (tests/test_outputs.py reproduces it with ptrace). Unblocked, the kernel delivers it
    to the main thread, whose blocking call then returns EINTR.

    ``signal.signal`` first runs the pending signals' handlers, which may raise: a
    handler counts as swapped (or restored) only once that call returned."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    noted: list[int] = []

    def note(signum: int, _frame: object) -> None:
        noted.append(signum)

    swapped: dict[int, Any] = {}
    try:
        for signum in _STOP_SIGNALS:
            handler = signal.getsignal(signum)
            if callable(handler):
                signal.signal(signum, note)
                swapped[signum] = handler
        yield
    finally:
        raised = _restore_handlers(swapped)
        if raised is not None:
            raise raised
        for signum in dict.fromkeys(noted):
            swapped[signum](signum, None)


def _restore_handlers(handlers: dict[int, Any]) -> BaseException | None:
    """Put every one of ``handlers`` back, even when a restored one raises meanwhile (a
    KeyboardInterrupt inside the next ``signal.signal``); that exception, if any."""
    raised: BaseException | None = None
    for signum, handler in handlers.items():
        while True:
            try:
                signal.signal(signum, handler)
                break
            except BaseException as err:  # re-raised once all are restored
                raised = raised or err
    return raised


def _create_temporary(dest: Path, parent: Path, option: str) -> str:
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=parent)
    except OSError as err:
        raise MaiacError(f"{option} {dest}: cannot create a file in {parent}: "
                         f"{err.strerror or err}") from None
    os.close(fd)
    return tmp


def stdout_claimed(outputs: Iterable[tuple[str, str | os.PathLike[str] | None]],
                   prints: str | None = None) -> bool:
    """Whether one of the ``(option, path)`` outputs is stdout (``-``); the command then
    prints its own lines on stderr. Two outputs on stdout, or one beside an option that
    prints on stdout itself (``prints``, e.g. ``--json``), are an error."""
    claims = [option for option, path in outputs if path is not None and str(path) == STDOUT]
    if prints is not None:
        claims.append(prints)
    if len(claims) > 1:
        raise MaiacError(f"{claims[0]} - and {claims[1]} would both print on stdout: send "
                         f"{claims[0]} to a file")
    return bool(claims) and claims[0] != prints


@contextlib.contextmanager
def _stdout_path() -> Iterator[str]:
    """A temporary file, copied to stdout when the block ends well (the writers take paths)."""
    import shutil

    fd, tmp = tempfile.mkstemp(prefix=".maiac-stdout.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        sys.stdout.flush()  # what the command printed before comes first
        out = sys.stdout.buffer
        with open(tmp, "rb") as fh:
            shutil.copyfileobj(fh, out)
        out.flush()
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], option: str = "-o",
                inputs: Iterable[str | os.PathLike[str] | None] = (), *,
                text: bool = False) -> Iterator[str]:
    """Yield a temporary path next to ``path``; move it into place only on success.
    ``text``: ``-`` is stdout (the temporary file is copied there on success)."""
    dest = check_output(path, option, inputs, text=text)
    if str(dest) == STDOUT:
        with _stdout_path() as tmp:
            yield tmp
        return
    parent = dest.parent if str(dest.parent) else Path(".")
    tmp: str | None = None
    try:
        # an interrupt while the file is created is held until its name is known, so
        # it always unwinds through the ``finally`` that removes the file
        with _stop_signals_held():
            tmp = _create_temporary(dest, parent, option)
        yield tmp
        check_output(dest, option)  # it may have become a directory meanwhile
        try:
            os.chmod(tmp, _new_file_mode(dest))
            os.replace(tmp, dest)
        except OSError as err:
            raise MaiacError(f"{option} {dest}: cannot write: {err.strerror or err}") from None
    finally:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def write_text_atomic(path: str | os.PathLike[str], text: str, option: str = "-o",
                      inputs: Iterable[str | os.PathLike[str] | None] = ()) -> None:
    """Write ``text`` to ``path`` atomically (``-``: to stdout)."""
    with atomic_path(path, option, inputs, text=True) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
