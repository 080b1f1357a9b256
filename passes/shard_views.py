"""The slice algebra of `shard` (passes/shard.py): which chunk of a value a chip holds, and
the strided views that read exactly a chunk of their source.

:class:`Split` names a chip's chunk; :func:`shard_view` re-derives a view (offset and
strides) over a split source so that result chunk k reads source chunk k, or says it
cannot (then the value is gathered first).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from xdsl.dialects import builtin
from xdsl.ir import SSAValue

from maiac.runtime.isa import contiguous_strides


@dataclass(frozen=True)
class Split:
    """This chip holds chunk ``chunk`` of ``parts`` equal chunks along ``axis``
    (counted from the end: -1 is the last axis)."""

    axis: int
    parts: int
    chunk: int


def _retype(value: SSAValue, shape: Sequence[int]) -> None:
    """Give ``value`` a tensor type of the same element type and a new shape."""
    value._type = builtin.TensorType(value.type.element_type, list(shape))  # noqa: SLF001


def local_shape(shape: Sequence[int], s: Split) -> tuple[int, ...]:
    out = list(shape)
    out[s.axis] //= s.parts
    return tuple(out)


# --------------------------------------------------------------------------- views

def _digits(x: int, strides: Sequence[int], shape: Sequence[int]) -> list[int] | None:
    """``x`` (an element offset or stride) as a mixed-radix index over a contiguous
    ``shape``, or None if it does not decompose carry-free."""
    out = []
    for st in strides[:len(shape)]:
        d, x = divmod(x, st) if st else (0, x)
        out.append(d)
    return out if x == 0 and all(d >= 0 for d in out) else None


def shard_view(src: Sequence[int], a: int, parts: int, offset: int, strides: Sequence[int],
               res: Sequence[int], b: int) -> tuple[int, list[int]] | None:
    """Offset and strides of the local view when the view's source (contiguous ``src``)
    is split into ``parts`` chunks along axis ``a`` and its result (``res``) along axis
    ``b``, so that result chunk k reads exactly source chunk k; None if it does not.

    Each stride is written as digits over ``src``; the view is carry-free (no digit sum
    overflows its axis), the result axis ``b`` moves only along ``a`` and its chunk spans
    exactly a source chunk, and the other axes stay inside one chunk of ``a``.
    """
    a, b = a % len(src), b % len(res)
    if src[a] % parts or res[b] % parts:
        return None
    st = contiguous_strides(tuple(src))
    off_d = _digits(offset, st, src)
    str_d = [_digits(s, st, src) for s in strides]
    if off_d is None or any(d is None for d in str_d):
        return None
    for j in range(len(src)):
        if off_d[j] + sum((n - 1) * d[j] for n, d in zip(res, str_d, strict=True)) >= src[j]:
            return None
    db = str_d[b]
    if any(v for j, v in enumerate(db) if j != a) or (res[b] // parts) * db[a] != src[a] // parts:
        return None
    inside = off_d[a] + sum((n - 1) * d[a] for i, (n, d) in enumerate(zip(res, str_d, strict=True))
                            if i != b) + (res[b] // parts - 1) * db[a]
    if inside >= src[a] // parts:
        return None
    local = list(src)
    local[a] //= parts
    lst = contiguous_strides(tuple(local))
    return (sum(d * s for d, s in zip(off_d, lst, strict=True)),
            [sum(d * s for d, s in zip(dd, lst, strict=True)) for dd in str_d])


def _indexed_shape(shape: Sequence[int], index: Sequence[slice | np.ndarray]) -> tuple[int, ...]:
    out = []
    for n, ix in zip(shape, list(index) + [slice(None)] * (len(shape) - len(index)), strict=True):
        out.append(len(range(*ix.indices(n))) if isinstance(ix, slice) else len(ix))
    return tuple(out)
