"""Reading a value through its chain of ``maia.view`` / ``maia.reshape`` ops, without copies.

At the tensor level every ``maia.view`` is materialized by a DMA. A fused op that DMAs
its operands block by block anyway (attention) can instead read the *source* of the
chain with composed strides, so the transposes, head splits, slices and GQA repeats
exporters put in front of attention never touch HBM.

``resolve(value, shape)`` answers: which (base tensor, offset, strides) give ``value``
reshaped to ``shape``? The rules, all on the flat row-major index of each tensor:

* ``maia.reshape`` keeps the flat index, so asking for its result in ``shape`` is asking
  for its operand in ``shape``.
* ``maia.view`` maps output index ``idx`` to input flat index ``offset + idx . strides``.
  Its output dims are split to ``shape`` (a dim of extent ``a*b`` and stride ``s`` is
  ``(a, s*b), (b, s)``); then the input is cut at every boundary the view's strides
  imply, resolved itself in that finer shape, and each output dim is matched to the
  input dims it walks. A dim that would walk across input dims which are not
  physically contiguous (e.g. the query heads of a GQA repeat, ``h -> h // g``) makes
  the chain stop there: the caller then asks in a finer shape (``(Hkv, g)`` heads).
* anything else is a base: contiguous strides.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from xdsl.ir import Operation, SSAValue

from maiac.ir import maia
from maiac.ir.types import tensor_shape
from maiac.runtime.isa import contiguous_strides


@dataclass(frozen=True)
class Strided:
    """``value[idx] == flat(base)[offset + idx . strides]`` for idx in ``shape``."""

    base: SSAValue
    offset: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]

    def permuted(self, perm: Sequence[int]) -> Strided:
        return Strided(self.base, self.offset, tuple(self.shape[p] for p in perm),
                       tuple(self.strides[p] for p in perm))


def contiguous_view(value: SSAValue, shape: Sequence[int]) -> Strided | None:
    """``value`` itself read in ``shape`` (same number of elements)."""
    if math.prod(shape) != math.prod(tensor_shape(value.type)):
        return None
    return Strided(value, 0, tuple(shape), contiguous_strides(tuple(shape)))


def resolve(value: SSAValue, shape: Sequence[int]) -> Strided | None:
    """The deepest source of ``value`` (read in ``shape``) reachable without copies."""
    shape = tuple(shape)
    owner = value.owner
    if isinstance(owner, Operation) and owner.name == "maia.reshape":
        return resolve(owner.operands[0], shape)
    if isinstance(owner, Operation) and owner.name == "maia.view":
        composed = _through_view(owner, shape)
        if composed is not None:
            return composed
    return contiguous_view(value, shape)


def _split_dims(shape: Sequence[int], strides: Sequence[int],
                target: Sequence[int]) -> tuple[int, ...] | None:
    """Strides of a strided ``shape`` refined to ``target`` (dims only split, never merged)."""
    dims = [(e, s) for e, s in zip(shape, strides, strict=True) if e != 1]
    out: list[int] = []
    i, left, stride = 0, 1, 0
    for t in target:
        if t == 1:
            out.append(0)
            continue
        if left == 1:
            if i >= len(dims):
                return None
            left, stride = dims[i]
            i += 1
        if left % t:
            return None
        left //= t
        out.append(stride * left)
    return tuple(out) if i == len(dims) and left == 1 else None


def _through_view(view: Operation, shape: tuple[int, ...]) -> Strided | None:
    out_shape = tensor_shape(view.results[0].type)
    strides = _split_dims(out_shape, maia.attr(view, "strides", ()), shape)
    if strides is None:
        return None
    offset = int(maia.attr(view, "offset", 0))
    source = view.operands[0]
    total = math.prod(tensor_shape(source.type))
    # cut the source's flat index at every boundary the view walks
    cuts = {1, total, *contiguous_strides(tensor_shape(source.type))}
    for extent, stride in zip(shape, strides, strict=True):
        if extent > 1 and stride:
            cuts |= {stride, stride * extent}
    bounds = sorted(cuts)
    if bounds[-1] != total or any(b % a for a, b in zip(bounds, bounds[1:], strict=False)):
        return None
    fine = tuple(b // a for a, b in zip(bounds, bounds[1:], strict=False))[::-1]
    inner = resolve(source, fine)
    if inner is None:
        return None
    place = {c: i for i, c in enumerate(contiguous_strides(fine))}
    digits = [(offset // c) % n for c, n in zip(contiguous_strides(fine), fine, strict=True)]
    new_strides: list[int] = []
    covered: set[int] = set()
    for extent, stride in zip(shape, strides, strict=True):
        if extent == 1 or stride == 0:
            new_strides.append(0)
            continue
        first, last = place.get(stride * extent), place.get(stride)
        if last is None:
            return None
        first = 0 if first is None else first + 1  # stride*extent == total has no place
        dims = range(first, last + 1)
        if covered & set(dims) or any(digits[d] for d in dims):
            return None
        for d in dims[:-1]:  # a dim spanning several source dims needs them contiguous
            if inner.strides[d] != inner.strides[d + 1] * fine[d + 1]:
                return None
        covered |= set(dims)
        new_strides.append(inner.strides[last])
    base_offset = inner.offset + sum(d * s for d, s in zip(digits, inner.strides, strict=True))
    return Strided(inner.base, base_offset, shape, tuple(new_strides))
