"""Errors a ``--shape`` binding causes deep in the compile, explained in the user's terms.

A sequence longer than a model's position table (``--shape input_ids=1x65`` on a model
with 64 positions) surfaces as a constant Gather whose index is past its table; the user
controls the ``--shape`` option, not the node, so the error names both: the table's size
and the bound input dims that exceed it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from maiac.runtime.errors import MaiacError

_OUT_OF_BOUNDS = re.compile(r"index (-?\d+) is out of bounds for axis (\d+) with size (\d+)")


def explain_index_overflow(err: MaiacError,
                           shapes: Mapping[str, tuple[int, ...]] | None) -> MaiacError:
    """``err`` with the table size and the ``--shape`` dims past it added, when ``err`` is
    a constant gather past its table and some bound dim exceeds the table; else ``err``."""
    found = _OUT_OF_BOUNDS.search(str(err))
    if not found or not shapes:
        return err
    index, axis, size = (int(g) for g in found.groups())
    past = [(name, d, v) for name, shape in shapes.items()
            for d, v in enumerate(shape) if v > size]
    if not past:
        return err
    def option(name: str, d: int, v: int) -> str:
        shape = shapes[name]
        text = f"--shape {name}={'x'.join(map(str, shape))}"
        return text if len(shape) == 1 else f"{text} (input {name!r}, dim {d} = {v})"
    bound = ", ".join(option(*p) for p in past)
    return MaiacError(f"{err}: the table has {size} entries along axis {axis} (index {index} "
                      f"asked for), fewer than {bound} needs; use at most {size} there "
                      f"(a sequence longer than the model's position table?)")


@contextmanager
def shape_errors_explained(shapes: Mapping[str, tuple[int, ...]] | None) -> Iterator[None]:
    """Re-raise a ``MaiacError`` from the block through ``explain_index_overflow``."""
    try:
        yield
    except MaiacError as err:
        better = explain_index_overflow(err, shapes)
        if better is err:
            raise
        raise better from None
