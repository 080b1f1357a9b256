"""maiac: a compiler for transformer inference on Microsoft Maia 200.

``maiac.compile(model, quant=..., shapes=...)`` → ``CompiledModel`` with ``.run``,
``.save``, ``.report`` and ``.inputs``/``.outputs``; ``maiac.load("m.maia")`` gives the
same object for a saved program; ``maiac.verify(model, ...)`` compares against
onnxruntime (the ``maiac verify --json`` dict). See README.md and docs/.
"""

from __future__ import annotations

from importlib import metadata
from os import PathLike
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from maiac.driver import CompiledModel


def compile(model: Any, **options: Any) -> CompiledModel:  # noqa: A001
    """Compile an ONNX model for the Maia 200 machine model (see ``maiac.driver.compile``)."""
    from maiac.driver import compile as _compile

    return _compile(model, **options)


def load(path: str | PathLike[str]) -> CompiledModel:
    """A saved ``.maia`` program as a ``CompiledModel`` (what ``compile`` returns), checked
    as untrusted input; its weights inflate into the machine's memory at the first run."""
    from maiac.driver import CompiledModel
    from maiac.runtime.program import load_program

    return CompiledModel(load_program(path, in_place=True))


def verify(model: Any, **options: Any) -> dict[str, Any]:
    """Compile ``model``, run it and onnxruntime on the same inputs and compare (the
    ``maiac verify --json`` dict; see ``maiac.verify.verify``)."""
    from maiac.verify import verify as _verify

    return _verify(model, **options)


def generate(model: Any, prompt_ids: Any, **options: Any) -> Any:
    """Generate tokens on the machine model (see ``maiac.generate.generate``)."""
    from maiac.generate import generate as _generate

    return _generate(model, prompt_ids, **options)


try:
    __version__ = metadata.version("maiac")
except metadata.PackageNotFoundError:  # a source tree that is not installed
    __version__ = "0+unknown"

__all__ = ["__version__", "compile", "generate", "load", "verify"]
