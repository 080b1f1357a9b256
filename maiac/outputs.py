"""Files the ``maiac`` command writes: checked before any work, written atomically.

``check_output`` runs before a command compiles or runs anything (the checks cost
nothing, the work may cost minutes): the output must not be one of the command's inputs
(``-o model.onnx`` would destroy the model), must not be a directory, device or other
non-regular file (never replaced, even as root), and its folder must exist and be
writable. ``atomic_path`` then writes through a temporary file in that folder, given the
mode a new file gets under the user's umask (or the mode of the file it replaces), and
moved into place only when the whole write succeeded; on any failure, SIGINT or SIGTERM
(maiac/cli_errors.py) the temporary file is removed, so nothing half-written is left.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from maiac.runtime.errors import MaiacError


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def check_output(path: str | os.PathLike[str], option: str = "-o",
                 inputs: Iterable[str | os.PathLike[str] | None] = ()) -> Path:
    """``path`` if maiac may write it (see the module docstring), else a ``MaiacError``."""
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


_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


@contextlib.contextmanager
def _stop_signals_held() -> Iterator[None]:
    """SIGINT/SIGTERM wait (blocked, pending) until the block ends; main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _create_temporary(dest: Path, parent: Path, option: str) -> str:
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=parent)
    except OSError as err:
        raise MaiacError(f"{option} {dest}: cannot create a file in {parent}: "
                         f"{err.strerror or err}") from None
    os.close(fd)
    return tmp


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], option: str = "-o",
                inputs: Iterable[str | os.PathLike[str] | None] = ()) -> Iterator[str]:
    """Yield a temporary path next to ``path``; move it into place only on success."""
    dest = check_output(path, option, inputs)
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
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path, option, inputs) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
