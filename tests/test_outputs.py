"""maiac/outputs.py: an interrupt at any moment of an atomic write leaves no file."""

from __future__ import annotations

import os
import signal
import tempfile

import pytest

from maiac import outputs


@pytest.fixture
def python_sigint_handler():
    """Python's own SIGINT handler (a job started in the background inherits SIGINT
    ignored, and then no KeyboardInterrupt would ever come)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_interrupt_while_the_temporary_file_is_created_leaves_nothing(
        tmp_path, monkeypatch, python_sigint_handler):
    real_mkstemp = tempfile.mkstemp

    def mkstemp_then_interrupted(*args, **kwargs):
        made = real_mkstemp(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)  # arrives right after the file exists
        return made

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp_then_interrupted)
    with pytest.raises(KeyboardInterrupt), outputs.atomic_path(tmp_path / "out.maia"):
        pytest.fail("the body must not run: the interrupt is delivered first")
    assert list(tmp_path.iterdir()) == []


def test_interrupt_inside_the_write_leaves_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt), outputs.atomic_path(tmp_path / "o.txt") as tmp:
        with open(tmp, "w") as f:
            f.write("partial")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_a_finished_write_replaces_the_file(tmp_path):
    outputs.write_text_atomic(tmp_path / "o.txt", "done\n")
    assert (tmp_path / "o.txt").read_text() == "done\n"
    assert [p.name for p in tmp_path.iterdir()] == ["o.txt"]
