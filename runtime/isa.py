"""The Maia 200 abstract instruction set: what a compiled program says to the machine.

This module is the contract between the compiler (passes/emit) and the machine model
(runtime/interpreter, runtime/timing). It is data only: dataclasses that serialize to
JSON for the `.maia` manifest.

Machine (see DESIGN §2 and runtime/target.py for the numbers):

* three memory levels, each a flat byte-addressed array:
  ``hbm`` (one address space), ``csram`` (one address space spanning all clusters;
  physically distributed, reached over the NoC), ``tsram`` (one private array per tile,
  every tile sees the same addresses).
* instructions are SPMD: one instruction runs on ``prod(grid)`` tiles at once
  (tile ids ``0 .. prod(grid)-1``, row-major over ``grid``). An operand's address may
  depend on the tile's grid coordinate (``Access.tile_strides``) and on the iteration of
  the enclosing ``Loop``s (``Access.loop_strides``). That is how one instruction covers
  a whole tiled operation.

Units: ``Access.addr`` is a byte address, aligned to the element size.
``shape``/``strides``/``tile_strides``/``loop_strides`` are in *elements* of
``Access.dtype``. A stride of 0 broadcasts.

Compute (``MatMul``, ``Vec``) reads and writes TSRAM only. ``Dma`` moves blocks between
any two levels (a strided view on each side, so transposes, slices, broadcasts and
concatenations are DMAs). ``Gather`` is an indexed DMA (embedding lookups).
Compute happens in fp32 inside the engines; values are rounded to the destination dtype
when stored.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

LEVELS = ("hbm", "csram", "tsram")

# Storage dtypes an Access may have. Narrow MX/NVFP4 payloads are stored as "u8"
# (packed) and decoded by Vec(fn="dequantize"); see runtime/formats.py.
DTYPES = ("f32", "bf16", "f16", "i64", "i32", "i16", "i8", "u16", "u8", "bool", "f8e4m3",
          "f8e5m2", "f8e4m3fnuz", "f8e5m2fnuz", "f8e8m0", "f4e2m1", "i4", "u4", "i2", "u2")
# (the last eight are the narrow types ONNX tensors may have, one element per byte, cast
# by runtime/narrow_store.py; the TTU's matmul operands stay the formats above)

# Vec functions. Unary and binary ones are elementwise with numpy broadcasting through
# stride-0 operands; reductions/softmax/norms act on the last axis of the block.
UNARY_FNS = (
    "copy", "relu", "gelu", "gelu_tanh", "erf", "tanh", "sigmoid", "silu", "exp", "log",
    "sqrt", "rsqrt", "reciprocal", "neg", "abs", "cos", "sin", "floor", "ceil", "not",
    "isnan", "sign",
    "scale",  # x * attrs["scale"] (flash attention: scores * 1/sqrt(d))
)
BINARY_FNS = (
    "add", "sub", "mul", "div", "pow", "max", "min", "mod", "equal", "less", "greater",
    "less_equal", "greater_equal", "and", "or", "xor",
    "exp_sub",  # exp(a - b), 0 where both are -inf (online-softmax rescale and probabilities)
)
TERNARY_FNS = ("where",)
ROW_FNS = ("reduce_sum", "reduce_mean", "reduce_max", "reduce_min", "softmax",
           "log_softmax", "layernorm", "rmsnorm")
# Row-wise quantization on the TVP: each row (last axis) of an fp32 block → its bytes in
# attrs["fmt"] (runtime/quant_ops.py quantize_rows: packed codes ‖ block scales; FP8 with
# a static attrs["scale"]: f8 elements). Appended to ROW_FNS' arity (one input).
QUANT_FNS = ("quantize",)
# Three-input functions appended after the quantize op (append-only):
# * ``rope(x, cos, sin)``: rotate-half rotary embedding ``x * cos + rotate_half(x) * sin``
#   with ``rotate_half(x) = concat(-x[..., D/2:], x[..., :D/2])`` over the last axis of the
#   block (whole rows of head_dim); cos/sin broadcast through stride-0 dims.
# * ``causal_mask(s, qpos, kpos)``: ``s`` where ``kpos <= qpos``, ``-inf`` elsewhere — the
#   causal mask of a score block generated from the positions of its rows ([bq, 1]) and
#   columns ([1, bk]) instead of loaded from memory.
POSITIONAL_FNS = ("rope", "causal_mask")
# The op families' functions (runtime/tvp_math.py), appended to their arity groups.
UNARY_FNS += ("round", "tan", "asin", "acos", "atan", "sinh", "cosh", "asinh", "acosh",
              "atanh", "isinf", "bitwise_not")
BINARY_FNS += ("bitshift_left", "bitshift_right", "bitwise_and", "bitwise_or", "bitwise_xor")
ROW_FNS += ("cumsum", "reduce_prod")
VEC_FNS = UNARY_FNS + BINARY_FNS + TERNARY_FNS + ROW_FNS + QUANT_FNS + POSITIONAL_FNS


@dataclass
class Access:
    """A strided block of one memory level, per tile and per loop iteration.

    Element ``idx`` of the block seen by the tile at grid coordinate ``g`` in loop
    iteration ``it`` lives at byte address::

        addr + itemsize * (sum(idx[i] * strides[i])
                           + sum(g[j] * tile_strides[j])
                           + sum(it[k] * loop_strides[k]))

    ``tile_strides`` has one entry per grid dimension of the instruction (or is empty:
    all tiles see the same block). On ``tsram`` every tile addresses its own array, so
    ``tile_strides`` must be empty or zero there. ``loop_strides`` has one entry per
    enclosing loop dimension, outermost first (or is empty: constant over the loops).
    """

    level: str
    addr: int
    dtype: str
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    tile_strides: tuple[int, ...] = ()
    loop_strides: tuple[int, ...] = ()


@dataclass
class Dma:
    """Copy ``src`` to ``dst`` (same block shape; dtype conversion allowed) on every tile."""

    src: Access
    dst: Access
    grid: tuple[int, ...] = (1,)
    queue: int = 0
    op: str = ""  # name of the source operation, for the per-op report
    kind: str = "dma"
    waits: dict[str, int] = field(default_factory=dict)  # see WAITS below


@dataclass
class Gather:
    """``dst[..., r, :] = table[indices[..., r], :]`` — an indexed DMA of rows.

    ``table`` is a 2-D access [rows, row_len] (HBM or CSRAM); ``indices`` an integer
    TSRAM block; ``dst`` a TSRAM block of shape ``indices.shape + (row_len,)``.
    Out-of-range indices are an error (negative ones wrap, as in ONNX Gather).
    """

    table: Access
    indices: Access
    dst: Access
    grid: tuple[int, ...] = (1,)
    queue: int = 0
    op: str = ""
    kind: str = "gather"
    waits: dict[str, int] = field(default_factory=dict)  # see WAITS below


@dataclass
class Scatter:
    """``table[indices[..., r], ...] = src[..., r, ...]`` — an indexed DMA of rows into a table.

    Gather's inverse: ``table`` an access [rows, *row_shape] (HBM or CSRAM, any strides:
    a KV cache [H, C, D] seen as rows [C, H, D]) that is *written*; ``indices`` an integer
    TSRAM block; ``src`` a TSRAM block of shape ``indices.shape + row_shape``, converted to the table's dtype (rounded, narrow floats
    saturated) as it is stored. Writes a KV cache's new rows at a position known only at
    run time (passes/kv_cache_inplace.py). Out-of-range indices are an error (negative
    ones wrap).
    """

    table: Access
    indices: Access
    src: Access
    grid: tuple[int, ...] = (1,)
    queue: int = 0
    op: str = ""
    kind: str = "scatter"
    waits: dict[str, int] = field(default_factory=dict)  # see WAITS below


@dataclass
class MatMul:
    """``c[..., m, n] (+)= sum_k a[..., m, k] * b[..., k, n]`` on the TTU, fp32 accumulate.

    All three are TSRAM accesses; leading (batch) dims broadcast via stride 0.
    ``accumulate`` adds into ``c`` instead of overwriting it (K-loop partial sums).
    ``fmt`` names the operand format the TTU runs at (timing: "bf16", "fp8", "fp4", ...).

    Quantized operands (DESIGN §3; decoded by runtime/quant_ops.py): ``a_fmt``/``b_fmt``
    name a runtime.formats format ("" = the access dtype as is). Such an operand is a u8
    access of packed codes, rows packed along its last axis (shape ``[..., rows,
    packed bytes]``; its logical K / N come from ``c`` and the other operand), or an
    f8e4m3/f8e5m2 access. ``a_scale``/``b_scale`` are its scales: MX E8M0 / NVFP4 E4M3
    bytes per block along K (the last axis of ``a``, axis -2 of ``b``), or fp32 FP8
    per-channel scales broadcast over the block; ``a_tensor_scale``/``b_tensor_scale``
    the fp32 per-tensor scale (NVFP4's second level, FP8 per-tensor).
    """

    a: Access
    b: Access
    c: Access
    accumulate: bool = False
    fmt: str = "f32"
    grid: tuple[int, ...] = (1,)
    op: str = ""
    kind: str = "matmul"
    waits: dict[str, int] = field(default_factory=dict)  # see WAITS below
    a_fmt: str = ""
    b_fmt: str = ""
    a_scale: Access | None = None
    b_scale: Access | None = None
    a_tensor_scale: float | None = None
    b_tensor_scale: float | None = None

    def scale_accesses(self) -> list[tuple[str, Access]]:
        """(role, access) of the scale operands present (read like ``a`` and ``b``)."""
        return [(r, s) for r, s in (("a_scale", self.a_scale), ("b_scale", self.b_scale))
                if s is not None]

    def logical_ab(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Shapes of ``a`` and ``b`` in elements (packed u8 operands unpacked)."""
        from maiac.runtime.quant_ops import logical_shape

        return logical_shape(self.a, self.a_fmt), logical_shape(self.b, self.b_fmt)


@dataclass
class Vec:
    """One TVP function over TSRAM blocks; ``fn`` in ``VEC_FNS``; ``attrs`` e.g. ``eps``."""

    fn: str
    ins: list[Access]
    out: Access
    attrs: dict[str, Any] = field(default_factory=dict)
    grid: tuple[int, ...] = (1,)
    op: str = ""
    kind: str = "vec"
    waits: dict[str, int] = field(default_factory=dict)  # see WAITS below


@dataclass
class Loop:
    """Run ``body`` for every iteration of ``trips`` (row-major), in order.

    Accesses inside the body carry one ``loop_strides`` entry per dimension of every
    enclosing loop, outermost loop first.
    """

    trips: tuple[int, ...]
    body: list[Instr]
    op: str = ""
    kind: str = "loop"


COLLECTIVES = ("all_reduce", "all_gather", "reduce_scatter", "send", "recv")
POINT_TO_POINT = ("send", "recv")  # pipeline stages (passes/pipeline.py)


@dataclass
class Collective:
    """A collective over the ``chips`` chips of a tensor-parallel group, on this chip's
    network DMA engine (``net``; cost and algorithm from runtime/network.py).

    ``src`` and ``dst`` are HBM blocks of this chip (``rank``); every chip of the group
    runs the same collective at the same point of its program (a cross-chip semaphore:
    none completes before all have issued it). In fp32, ranks summed in rank order:

    * ``all_reduce``: ``dst = sum_c src_c`` (``src.shape == dst.shape``);
    * ``all_gather``: ``dst[c] = src_c`` (``dst.shape == (chips, *src.shape)``; strided
      ``dst`` puts each chip's slice where it belongs, e.g. columns of the last axis);
    * ``reduce_scatter``: ``dst = sum_c src_c[rank]`` (``src.shape == (chips, *dst.shape)``).

    Point to point, between pipeline stages (``chips`` = every chip of the pipeline,
    ``rank`` and ``peer`` global chip numbers): ``send`` hands ``src`` to chip ``peer``
    (``dst`` is ``src``: the block must not change before the send completes); ``recv``
    writes ``dst`` with what chip ``peer`` sent (``src`` is ``dst``, not read). The k-th
    ``send`` from chip a to chip b pairs with the k-th ``recv`` of b from a (ordered
    channels); a ``recv`` completes only once the matching ``send`` has issued (the
    cross-chip semaphore).

    Only at the top level of a program (never inside a ``Loop``).
    """

    collective: str
    src: Access
    dst: Access
    chips: int
    rank: int = 0
    grid: tuple[int, ...] = (1,)
    queue: int = 0
    op: str = ""
    kind: str = "collective"
    waits: dict[str, int] = field(default_factory=dict)  # see WAITS below
    peer: int = -1  # send/recv: the other chip (global number); -1 for group collectives


@dataclass
class Sync:
    """A barrier on ``engine`` (``dma<q>``, ``ttu``, ``tvp`` or ``net``): it holds that
    engine's queue until its ``waits`` hold, then completes. It moves no data and does no
    work; it exists because one instruction carries at most ``Target.max_waits`` waits
    (the published Maia 200 limit is 2): the ``sync`` pass (passes/schedule.py) puts the
    waits an instruction needs beyond that on barriers of the instruction's own engine
    right before it, which the in-order engine then passes on. Like every instruction it
    counts on its engine's semaphore (see WAITS)."""

    engine: str
    op: str = ""
    kind: str = "sync"
    waits: dict[str, int] = field(default_factory=dict)  # see WAITS below
    grid: tuple[int, ...] = (1,)


Instr = Dma | Gather | Scatter | MatMul | Vec | Loop | Collective | Sync

# WAITS (asynchronous semantics; programs whose ``meta["async"]`` is true).
# Every engine — each DMA queue ``dma0`` .. ``dma{n-1}``, the ``ttu`` and the ``tvp`` — runs
# its own instructions in program order, each engine's hardware semaphore counting the
# instructions it has completed (the signal is implicit on completion). Nothing orders
# instructions of *different* engines except ``waits``: ``{engine: n}`` holds the
# instruction until at most ``n`` of the instructions issued to ``engine`` before it (in
# program order, loops unrolled) are still outstanding — ``0`` waits for all of them, ``1``
# leaves the most recent one in flight (double buffering), as CUDA's
# ``cp.async.wait_group n``. A DMA's data is only guaranteed to a reader after such a
# wait; runtime/hazards.py checks it. Programs without ``meta["async"]`` run each
# instruction to completion before the next (synchronous semantics).
# Limits (public, Maia 200): an instruction carries at most ``Target.max_waits`` (2) waits
# ("pre-semaphores") and ``Target.max_signals`` (2) signals ("post-semaphores"). Every
# instruction here posts exactly one signal, its own engine's count, so only the waits
# can exceed the limit: the ``sync`` pass splits them over ``Sync`` barriers and
# runtime/program.py refuses a program with an instruction over the limit.
# Collectives run on the chip's network DMA engine ``net`` (after ttu, tvp in clock order).
ENGINE_KINDS = {"matmul": "ttu", "vec": "tvp", "collective": "net"}


def engines(dma_queues: int) -> list[str]:
    """Engine names in clock order: the DMA queues, then ttu, tvp, the network engine."""
    return [f"dma{q}" for q in range(dma_queues)] + ["ttu", "tvp", "net"]


def engine_of(instr: Instr, dma_queues: int) -> str:
    """The engine an instruction runs on: ``dma<q>`` (queue modulo ``dma_queues``), ttu, tvp."""
    if isinstance(instr, Dma | Gather | Scatter):
        return f"dma{instr.queue % dma_queues}"
    if isinstance(instr, Sync):
        return instr.engine
    return ENGINE_KINDS[instr.kind]

_KINDS: dict[str, type] = {"dma": Dma, "gather": Gather, "scatter": Scatter, "matmul": MatMul,
                           "vec": Vec,
                           "loop": Loop, "collective": Collective, "sync": Sync}


def instr_to_json(instr: Instr) -> dict[str, Any]:
    """A JSON-ready dict of one instruction (loops recursively)."""
    if isinstance(instr, Loop):
        return {"kind": "loop", "trips": list(instr.trips), "op": instr.op,
                "body": [instr_to_json(i) for i in instr.body]}
    out = _plain(dataclasses.asdict(instr))
    if isinstance(instr, Collective) and instr.peer < 0:
        del out["peer"]  # group collectives: the files of earlier versions, unchanged
    return out


def instr_from_json(data: dict[str, Any]) -> Instr:
    """Inverse of ``instr_to_json``; raises ``ValueError`` on a malformed entry."""
    if not isinstance(data, dict) or data.get("kind") not in _KINDS:
        raise ValueError(f"unknown instruction {str(data)[:80]!r}")
    kind = data["kind"]
    try:
        if kind == "loop":
            return Loop(tuple(data["trips"]), [instr_from_json(i) for i in data["body"]],
                        data.get("op", ""))
        cls = _KINDS[kind]
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name not in data:
                continue
            value = data[f.name]
            if f.name in ("src", "dst", "table", "indices", "a", "b", "c", "out"):
                value = access_from_json(value)
            elif f.name in ("a_scale", "b_scale"):
                value = None if value is None else access_from_json(value)
            elif f.name == "ins":
                value = [access_from_json(v) for v in value]
            elif f.name == "grid":
                value = tuple(value)
            elif f.name == "waits":
                value = {str(k): int(v) for k, v in dict(value).items()}
            kwargs[f.name] = value
        return cls(**kwargs)
    except (KeyError, TypeError) as err:
        raise ValueError(f"malformed {kind} instruction: {err}") from err


def access_from_json(data: dict[str, Any]) -> Access:
    return Access(
        level=data["level"], addr=int(data["addr"]), dtype=data["dtype"],
        shape=tuple(data["shape"]), strides=tuple(data["strides"]),
        tile_strides=tuple(data.get("tile_strides", ())),
        loop_strides=tuple(data.get("loop_strides", ())),
    )


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Row-major element strides of ``shape``."""
    strides = []
    acc = 1
    for dim in reversed(shape):
        strides.append(acc)
        acc *= dim
    return tuple(reversed(strides))
