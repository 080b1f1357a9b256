"""`maiac generate`: prefill, then token-by-token decode on the machine model.

Two ways to run a decoder, chosen from its inputs:

* **kv-cache** (``past_key_values.*`` inputs, e.g. optimum ``text-generation-with-past``):
  a fixed-capacity cache. Two programs per run, whatever the number of tokens: *prefill*
  (the prompt, with a one-slot masked dummy past) and *decode* (one token against a past
  of ``capacity`` slots). The decode program's past inputs stay resident in machine HBM
  (runtime/session.py; on N chips each chip's KV heads in its own memory) and the program
  writes each step's keys/values into slot ``length`` itself (passes/kv_cache_inplace.py),
  or, where the graph does not allow it, returns them (its ``present`` outputs cut to the
  new slot, maiac/kv_cache.py) for the loop to write; ``attention_mask`` hides the slots
  not yet filled. Why capacity and not buckets: one
  decode program serves every step, its modeled time is that of attending over the whole
  capacity (as a static-cache server does), and the cache never moves between programs.
* **recompute** (no past inputs): the whole sequence is run again for every token, padded
  on the right to a power-of-two length bucket (causal attention makes the padding
  invisible to the last real token), so a run compiles at most log2(length) programs.

Modeled times come from the timing model (``maiac.runtime.timing.simulate``) of exactly the
programs this run executed: TTFT = the prefill program, TPOT = the mean decode step.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from maiac.kv_cache import (
    KV_DTYPES,
    POSITION_INPUT,
    KVPair,
    appends,
    cache_in_place,
    kv_pairs,
    new_slots_only,
    store_cache_as,
)
from maiac.runtime.errors import MaiacError
from maiac.runtime.memory import frees_own_garbage

CAPACITY_ALIGN = 64   # KV-cache capacity is rounded up to this many positions
MIN_BUCKET = 16       # smallest recompute length bucket


@dataclass
class SamplingOptions:
    """Greedy when ``temperature`` is 0; else softmax(logits / T) after top-k / top-p."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    def check(self) -> None:
        if self.temperature < 0 or not math.isfinite(self.temperature):
            raise MaiacError(f"--temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise MaiacError(f"--top-k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise MaiacError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.temperature == 0 and (self.top_k or self.top_p < 1):
            raise MaiacError("--top-k/--top-p sample: give --temperature > 0 as well")


@dataclass
class GenerateOptions:
    """Everything `generate` takes besides the model and the prompt (CLI flags map 1:1)."""

    max_new_tokens: int = 32
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    quant: str | None = None
    kv_cache: str = "fp32"
    capacity: int | None = None       # KV-cache positions; default prompt + new, aligned
    eos_token_id: int | None = None
    target: str = "maia200"
    target_params: dict[str, str] | None = None
    keep_logits: bool = False         # keep each step's logits (for comparisons)
    chips: int = 1                    # tensor parallelism: maiac.chips.ShardedSession

    def check(self) -> None:
        if self.max_new_tokens < 1:
            raise MaiacError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")
        if self.kv_cache not in KV_DTYPES:
            raise MaiacError(f"--kv-cache must be one of {', '.join(KV_DTYPES)}, "
                             f"got {self.kv_cache!r}")
        if not isinstance(self.chips, int) or self.chips < 1:
            raise MaiacError(f"--chips must be a positive integer, got {self.chips!r}")
        self.sampling.check()


@dataclass
class ProgramRecord:
    role: str                  # prefill | decode | recompute
    shapes: dict[str, list[int]]
    compile_s: float
    modeled_time_s: float
    hbm_bytes: float
    cached: bool
    weight_bytes: int = 0            # the program's constants (quantized format)
    resident_weight_bytes: int = 0   # of which kept in SRAM (not re-read from HBM)


@dataclass
class GenerationResult:
    tokens: list[int]
    prompt_ids: list[int]
    mode: str                  # kv-cache | recompute
    ttft_s: float
    tpot_s: float
    tokens_per_s: float
    modeled_total_s: float
    step_times_s: list[float]
    programs: list[ProgramRecord]
    wall_s: float
    capacity: int | None
    kv_cache: str
    quant: str
    text: str | None = None
    logits: list[np.ndarray] = field(default_factory=list, repr=False)
    # how decode steps update the cache: "in-place" (the program writes the new rows into
    # the resident cache), "copy" (the loop copies the present rows in), "none" (recompute)
    kv_update: str = "none"

    def to_json(self) -> dict[str, Any]:
        return {
            "tokens": self.tokens, "text": self.text, "prompt_ids": self.prompt_ids,
            "mode": self.mode, "ttft_s": self.ttft_s, "tpot_s": self.tpot_s,
            "tokens_per_s": self.tokens_per_s, "decode_tokens_per_s":
                1.0 / self.tpot_s if self.tpot_s > 0 else None,
            "modeled_total_s": self.modeled_total_s, "step_times_s": self.step_times_s,
            "compile_count": sum(not p.cached for p in self.programs),
            "programs": [asdict(p) for p in self.programs], "wall_s": self.wall_s,
            "capacity": self.capacity, "kv_cache": self.kv_cache, "kv_update": self.kv_update,
            "quant": self.quant,
        }


# --------------------------------------------------------------------------- the graph

@dataclass
class Decoder:
    """The generation interface of an ONNX decoder."""

    model: onnx.ModelProto
    name: str
    ids: str
    logits: str
    mask: str | None
    positions: str | None
    pairs: list[KVPair]
    batch: int
    max_length: int | None     # static sequence length of a recompute decoder
    key: str                   # content hash, for the program cache
    appends: bool = True       # present = Concat(past, new); else new written at the length

    @property
    def mode(self) -> str:
        return "kv-cache" if self.pairs else "recompute"

    def input_shape(self, name: str) -> list[int | str]:
        inp = next(i for i in self.model.graph.input if i.name == name)
        return [d.dim_param if d.HasField("dim_param") or not d.HasField("dim_value")
                else d.dim_value for d in inp.type.tensor_type.shape.dim]


def load_decoder(model: str | Path | onnx.ModelProto) -> Decoder:
    """Check that ``model`` is a token decoder and find its ids/mask/position/cache tensors."""
    if isinstance(model, onnx.ModelProto):
        proto, name = model, model.graph.name or "model"
    else:
        path = Path(model)
        if not path.is_file():
            raise MaiacError(f"model file {str(path)!r} not found")
        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception as err:
            raise MaiacError(f"{path}: not an ONNX model ({err})") from err
        name = str(path)
    inits = {i.name for i in proto.graph.initializer}
    inputs = [i.name for i in proto.graph.input if i.name not in inits]
    if "input_ids" not in inputs:
        raise MaiacError(f"{name}: a decoder needs an 'input_ids' input (it has "
                         f"{', '.join(inputs) or 'none'})")
    pairs = kv_pairs(proto)
    mask = "attention_mask" if "attention_mask" in inputs else None
    positions = "position_ids" if "position_ids" in inputs else None
    known = {"input_ids", mask, positions, *(p.past for p in pairs)}
    extra = [n for n in inputs if n not in known]
    if extra:
        raise MaiacError(f"{name}: decoder input {extra[0]!r} is not one generate can feed "
                         f"(it feeds input_ids, attention_mask, position_ids, past_key_values.*)")
    outputs = [o.name for o in proto.graph.output]
    logits = "logits" if "logits" in outputs else outputs[0]
    if pairs and mask is None:
        raise MaiacError(f"{name}: a KV-cache decoder needs an 'attention_mask' input to mask "
                         f"the cache slots not yet filled")
    key = hashlib.sha256(proto.SerializeToString()).hexdigest()[:16]
    dec = Decoder(proto, name, "input_ids", logits, mask, positions, pairs, 1, None, key,
                  appends(proto) if pairs else True)
    ids_shape = dec.input_shape("input_ids")
    if len(ids_shape) != 2:
        raise MaiacError(f"{name}: input_ids must be [batch, sequence], got {ids_shape}")
    if isinstance(ids_shape[0], int):
        dec.batch = ids_shape[0]
    if isinstance(ids_shape[1], int):
        if pairs:
            raise MaiacError(f"{name}: input_ids has a static sequence length "
                             f"({ids_shape[1]}); a KV-cache decoder needs it symbolic")
        dec.max_length = ids_shape[1]
    return dec


# ---------------------------------------------------------------------- the programs

_PROGRAMS: dict[tuple[Any, ...], Any] = {}   # in-process cache: (model, shapes, spec, target)
_PROGRAM_CACHE_LIMIT = 16


def _program(dec: Decoder, role: str, shapes: dict[str, tuple[int, ...]],
             opts: GenerateOptions, records: list[ProgramRecord], in_place: bool = False) -> Any:
    """The compiled program of ``role`` (cached); ``in_place``: the decode step writes its
    new keys/values into the resident cache itself (passes/kv_cache_inplace.py)."""
    from maiac.driver import compile as compile_model
    from maiac.runtime.timing import simulate

    key = (dec.key, tuple(sorted(shapes.items())), opts.quant, opts.kv_cache, opts.target,
           tuple(sorted((opts.target_params or {}).items())), opts.chips, in_place)
    cached = key in _PROGRAMS
    if not cached:
        # the proto copy's and the timing model's garbage go before a machine is built
        with frees_own_garbage():
            model = onnx.ModelProto()
            model.CopyFrom(dec.model)
            if dec.pairs and in_place:
                store_cache_as(model, opts.kv_cache)
                cache_in_place(model)
            elif dec.pairs:
                new_slots_only(model)
                store_cache_as(model, opts.kv_cache)
            start = time.perf_counter()
            # the rewritten proto's external weights (if any) resolve against the model's folder
            folder = Path(dec.name).parent if Path(dec.name).is_file() else Path.cwd()
            with contextlib.chdir(folder):
                compiled = compile_model(model, quant=opts.quant, shapes=shapes,
                                         target=opts.target, target_params=opts.target_params,
                                         **({"chips": opts.chips} if opts.chips > 1 else {}))
            del model  # the rewritten copy (with its weights), before the collection
            compile_s = time.perf_counter() - start
            if opts.chips > 1:  # a maiac.chips.ChipGroup: the slowest chip's time
                rep = compiled.report()
                entry = (compiled, compile_s, rep["modeled_time_s"], rep["hbm_bytes"],
                         rep.get("weight_bytes", 0), 0)
            else:
                report = simulate(compiled.program)
                entry = (compiled.program, compile_s, report.modeled_time_s, report.hbm_bytes,
                         report.weight_bytes, report.extra["resident_weight_bytes"])
                del report
            if len(_PROGRAMS) >= _PROGRAM_CACHE_LIMIT:
                _PROGRAMS.pop(next(iter(_PROGRAMS)))
            _PROGRAMS[key] = entry
    program, compile_s, modeled, hbm, weights, resident = _PROGRAMS[key]
    if not any(r.role == role and r.shapes == {k: list(v) for k, v in shapes.items()}
               for r in records):
        records.append(ProgramRecord(role, {k: list(v) for k, v in shapes.items()},
                                     compile_s, modeled, hbm, cached, weights, resident))
    return program, modeled


# ------------------------------------------------------------------------ sampling

def choose_token(logits: np.ndarray, sampling: SamplingOptions, rng: np.random.Generator) -> int:
    """Greedy argmax, or a draw from softmax(logits / T) restricted by top-k and top-p."""
    if sampling.temperature == 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / sampling.temperature
    order = np.argsort(-z, kind="stable")
    if sampling.top_k:
        order = order[:sampling.top_k]
    p = np.exp(z[order] - z[order[0]])
    p /= p.sum()
    if sampling.top_p < 1:
        keep = int(np.searchsorted(np.cumsum(p), sampling.top_p)) + 1
        order, p = order[:keep], p[:keep] / p[:keep].sum()
    return int(order[rng.choice(len(order), p=p)])


# ------------------------------------------------------------------------ the loops

def _gqa_head_dim(model: onnx.ModelProto, past: str) -> int | None:
    """head_dim of a past input read by a com.microsoft GroupQueryAttention (the genai
    builder leaves it symbolic): the query projection's width / heads."""
    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "GroupQueryAttention" or past not in node.input:
            continue
        attrs = {a.name: a.i for a in node.attribute}
        heads, kv_heads = attrs.get("num_heads", 0), attrs.get("kv_num_heads", 0)
        packed = len(node.input) < 2 or not node.input[1]
        width, name = None, node.input[0]
        for _ in range(3):  # MatMul / MatMulNBits, maybe behind a bias Add
            prod = producers.get(name)
            if prod is None:
                break
            if prod.op_type == "MatMulNBits":
                width = next((a.i for a in prod.attribute if a.name == "N"), None)
                break
            if prod.op_type == "MatMul" and prod.input[1] in inits:
                width = int(inits[prod.input[1]].dims[-1])
                break
            name = prod.input[0]
        div = heads + 2 * kv_heads if packed else heads
        if width and div and width % div == 0:
            return width // div
    return None


def _kv_shapes(dec: Decoder, seq: int, past: int) -> dict[str, tuple[int, ...]]:
    shapes = {dec.ids: (dec.batch, seq), dec.mask: (dec.batch, past + seq)}
    if dec.positions:
        shapes[dec.positions] = (dec.batch, seq)
    for pair in dec.pairs:
        dims = dec.input_shape(pair.past)
        if len(dims) == 4 and not isinstance(dims[3], int):
            dims[3] = _gqa_head_dim(dec.model, pair.past) or dims[3]
        if len(dims) != 4 or not all(isinstance(d, int) for d in (dims[1], dims[3])):
            raise MaiacError(f"{dec.name}: cache input {pair.past!r} must be [batch, heads, "
                             f"past, head_dim] with static heads and head_dim, got {dims}")
        shapes[pair.past] = (dec.batch, int(dims[1]), past, int(dims[3]))
    return shapes


def _rows(x: list[int], batch: int) -> np.ndarray:
    return np.repeat(np.asarray(x, np.int64)[None], batch, axis=0)


def _generate_kv(dec: Decoder, prompt: list[int], opts: GenerateOptions,
                 emit: Callable[[int], bool], records: list[ProgramRecord],
                 logits_out: list[np.ndarray]) -> tuple[list[int], list[float], int, str]:
    from maiac.chips import open_session

    n_prompt = len(prompt)
    need = n_prompt + opts.max_new_tokens - 1   # cache slots the last step reads
    capacity = opts.capacity or -(-need // CAPACITY_ALIGN) * CAPACITY_ALIGN
    if capacity < need:
        raise MaiacError(f"--capacity {capacity} is too small for {n_prompt} prompt + "
                         f"{opts.max_new_tokens} new tokens (needs {need})")
    presents = [p.present for p in dec.pairs]
    # prefill: the prompt against one masked dummy past slot (a zero-length past is not a
    # static shape every pass handles)
    prefill, t_prefill = _program(dec, "prefill", _kv_shapes(dec, n_prompt, 1), opts, records)
    pre = open_session(prefill, [p.past for p in dec.pairs])
    # the dummy slot is masked: first (Concat appends after it) or last (an op that writes
    # the new keys at the sequence length needs the valid slots first)
    pre_mask = [0] + [1] * n_prompt if dec.appends else [1] * n_prompt + [0]
    feeds = {dec.ids: _rows(prompt, dec.batch), dec.mask: _rows(pre_mask, dec.batch)}
    if dec.positions:
        feeds[dec.positions] = _rows(list(range(n_prompt)), dec.batch)
    out = pre.run(feeds, [dec.logits, *presents])
    decode, t_decode, in_place = _decode_program(dec, capacity, opts, records)
    dec_session = open_session(decode, [p.past for p in dec.pairs])
    for pair in dec.pairs:  # the prompt's keys/values into the resident cache
        dec_session.write_slots(pair.past, 0, out[pair.present][:, :, :n_prompt])
    tokens: list[int] = []
    times = [t_prefill]
    rng = np.random.default_rng(opts.sampling.seed)
    logits = out[dec.logits][0, -1]
    mask = np.zeros((dec.batch, capacity + 1), np.int64)
    mask[:, :n_prompt] = 1
    length = n_prompt
    while True:
        if opts.keep_logits:
            logits_out.append(logits.copy())
        token = choose_token(logits, opts.sampling, rng)
        tokens.append(token)
        if not emit(token) or len(tokens) == opts.max_new_tokens:
            break
        # this token's slot: in the cache itself, after the cache (Concat), or at the length
        mask[:, length if in_place or not dec.appends else capacity] = 1
        feeds = {dec.ids: _rows([token], dec.batch), dec.mask: mask}
        if dec.positions:
            feeds[dec.positions] = _rows([length], dec.batch)
        if in_place:  # the program writes its keys/values into slot `length` itself
            feeds[POSITION_INPUT] = np.full(dec.batch, length, np.int64)
            out = dec_session.run(feeds, [dec.logits])
        else:
            out = dec_session.run(feeds, [dec.logits, *presents])
            new_slot = 0 if dec.appends else length
            for pair in dec.pairs:
                dec_session.write_slots(pair.past, length,
                                        out[pair.present][:, :, new_slot:new_slot + 1])
        times.append(t_decode)
        mask[:, capacity] = 0
        mask[:, length] = 1
        length += 1
        logits = out[dec.logits][0, -1]
    return tokens, times, capacity, "in-place" if in_place else "copy"


def _decode_program(dec: Decoder, capacity: int, opts: GenerateOptions,
                    records: list[ProgramRecord]) -> tuple[Any, float, bool]:
    """The decode program with the in-place cache update where the graph allows it (every
    present a Concat(past, new) or a GroupQueryAttention's, read by a fused single-query
    attention; on N chips too, the cache split by KV heads), else the one whose presents
    the loop copies into the cache."""
    shapes = _kv_shapes(dec, 1, capacity)
    try:
        program, modeled = _program(dec, "decode", {**shapes, POSITION_INPUT: (dec.batch,)},
                                    opts, records, in_place=True)
        return program, modeled, True
    except MaiacError as err:
        if "kv-cache-inplace" not in str(err):
            raise
    program, modeled = _program(dec, "decode", shapes, opts, records)
    return program, modeled, False


def _bucket(n: int, dec: Decoder) -> int:
    if dec.max_length is not None:
        if n > dec.max_length:
            raise MaiacError(f"{dec.name}: {n} tokens exceed the model's static sequence "
                             f"length {dec.max_length}")
        return dec.max_length
    return max(MIN_BUCKET, 1 << (n - 1).bit_length())


def _generate_recompute(dec: Decoder, prompt: list[int], opts: GenerateOptions,
                        emit: Callable[[int], bool], records: list[ProgramRecord],
                        logits_out: list[np.ndarray]) -> tuple[list[int], list[float], int, str]:
    from maiac.chips import open_session

    seq = list(prompt)
    tokens: list[int] = []
    times: list[float] = []
    rng = np.random.default_rng(opts.sampling.seed)
    while True:
        n = len(seq)
        size = _bucket(n, dec)
        shapes = {dec.ids: (dec.batch, size)}
        feeds = {dec.ids: _rows(seq + [0] * (size - n), dec.batch)}
        if dec.mask:
            shapes[dec.mask] = (dec.batch, size)
            feeds[dec.mask] = _rows([1] * n + [0] * (size - n), dec.batch)
        if dec.positions:
            shapes[dec.positions] = (dec.batch, size)
            feeds[dec.positions] = _rows(list(range(size)), dec.batch)
        program, modeled = _program(dec, "recompute", shapes, opts, records)
        logits = open_session(program).run(feeds, [dec.logits])[dec.logits][0, n - 1]
        times.append(modeled)
        if opts.keep_logits:
            logits_out.append(logits.copy())
        token = choose_token(logits, opts.sampling, rng)
        tokens.append(token)
        seq.append(token)
        if not emit(token) or len(tokens) == opts.max_new_tokens:
            break
    return tokens, times, 0, "none"


def generate(model: str | Path | onnx.ModelProto, prompt_ids: Sequence[int], *,
             options: GenerateOptions | None = None,
             on_token: Callable[[int], None] | None = None, **kwargs: Any) -> GenerationResult:
    """Generate up to ``max_new_tokens`` after ``prompt_ids`` on the machine model.

    ``options`` or keyword arguments of :class:`GenerateOptions` (``temperature``,
    ``top_k``, ``top_p``, ``seed`` go to its sampling); ``on_token(id)`` is called as each
    token is produced. Stops early at ``eos_token_id``.
    """
    opts = options or _options(**kwargs)
    opts.check()
    prompt = [int(t) for t in prompt_ids]
    if not prompt:
        raise MaiacError("the prompt is empty: give at least one token id")
    dec = load_decoder(model)
    vocab = _vocab_size(dec)
    bad = [t for t in prompt if t < 0 or (vocab is not None and t >= vocab)]
    if bad:
        raise MaiacError(f"prompt token id {bad[0]} is outside the vocabulary [0, {vocab})")
    start = time.perf_counter()
    records: list[ProgramRecord] = []
    logits: list[np.ndarray] = []

    from maiac import progress

    with progress.step("generate", total=opts.max_new_tokens) as bar:
        def emit(token: int) -> bool:
            bar.advance()
            if on_token is not None:
                on_token(token)
            return token != opts.eos_token_id

        run = _generate_kv if dec.pairs else _generate_recompute
        tokens, times, capacity, kv_update = run(dec, prompt, opts, emit, records, logits)
    ttft = times[0]
    tpot = float(np.mean(times[1:])) if len(times) > 1 else 0.0
    total = float(sum(times))
    return GenerationResult(
        tokens=tokens, prompt_ids=prompt, mode=dec.mode, ttft_s=ttft, tpot_s=tpot,
        tokens_per_s=dec.batch * len(tokens) / total if total > 0 else 0.0,
        modeled_total_s=total, step_times_s=times, programs=records,
        wall_s=time.perf_counter() - start, capacity=capacity or None,
        kv_cache=opts.kv_cache if dec.pairs else "none", quant=opts.quant or "fp32",
        logits=logits, kv_update=kv_update)


def _options(**kwargs: Any) -> GenerateOptions:
    sampling = {k: kwargs.pop(k) for k in ("temperature", "top_k", "top_p", "seed")
                if k in kwargs}
    try:
        return GenerateOptions(sampling=SamplingOptions(**sampling), **kwargs)
    except TypeError as err:
        raise MaiacError(f"generate: {err}") from err


def _vocab_size(dec: Decoder) -> int | None:
    out = next(o for o in dec.model.graph.output if o.name == dec.logits)
    dims = out.type.tensor_type.shape.dim
    return dims[-1].dim_value if dims and dims[-1].HasField("dim_value") else None
