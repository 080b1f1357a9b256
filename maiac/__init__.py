"""maiac: a compiler for transformer inference on Microsoft Maia 200.

``maiac.compile(model, quant=..., shapes=...)`` → ``CompiledModel`` with ``.run``,
``.save`` and ``.report``. See README.md and docs/.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from maiac.driver import CompiledModel


def compile(model: Any, **options: Any) -> CompiledModel:  # noqa: A001
    """Compile an ONNX model for the Maia 200 machine model (see ``maiac.driver.compile``)."""
    from maiac.driver import compile as _compile

    return _compile(model, **options)


def generate(model: Any, prompt_ids: Any, **options: Any) -> Any:
    """Generate tokens on the machine model (see ``maiac.generate.generate``)."""
    from maiac.generate import generate as _generate

    return _generate(model, prompt_ids, **options)


__all__ = ["compile", "generate"]
