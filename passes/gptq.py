"""`gptq`: error-compensating rounding of matmul weights onto their quantized grid.

GPTQ (Frantar et al., "GPTQ: Accurate Post-Training Quantization for Generative
Pre-trained Transformers", ICLR 2023, arXiv:2210.17323, Algorithm 1): the weight
``W`` [K, N] of ``y = x W`` is rounded one input row at a time; the rounding error of row
``i``, scaled by the inverse Hessian ``H⁻¹ = (2 XᵀX + λI)⁻¹`` of the calibration
activations ``X``, is subtracted from the rows not yet rounded, so later rows absorb the
output error the earlier ones made (Cholesky form of ``H⁻¹``, lazy updates over blocks
of 128 rows, dampening λ = ``damp`` · mean(diag H)).

The grid is the spec's weight format with *static* group scales: the block scales (MX:
E8M0 per 32 rows and column; NVFP4: E4M3 per 16 and the tensor scale; FP8: per column)
are those of plain rounding of the original weight, fixed before the loop. The result
``Ŵ`` replaces the weight; `quantize` then encodes it — exactly (MX re-quantization of a
value already on the grid is lossless; a warning says when an element does not
survive). Weights of matmuls `rotate-hadamard` rotated get the rotated Hessian
``R XᵀX R``.

Opt-in: ``--quant "mxfp4,method=gptq"`` (with ``method=hadamard+gptq`` both); the
Hessians come from calibration data (``--calib``, else seeded random inputs; ``maiac
eval`` uses a held-out window of the text).
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass

import ml_dtypes
import numpy as np
from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.passes import ModulePass

from maiac.ir import maia
from maiac.passes.fuse_match import label, new_constant
from maiac.passes.quant_spec import parse_quant_spec
from maiac.passes.quantize import constant_of
from maiac.passes.rotate_hadamard import ROTATED_INPUT_ATTR, hadamard, rotate_rows
from maiac.runtime import formats as F
from maiac.runtime.errors import MaiacError

HESSIAN_ATTR = "maia.gptq"
# token -> {node label: XᵀX}: the driver computes them from the ONNX model (calibration)
# and leaves the token on the module, so the IR stays printable
HESSIANS: dict[str, dict[str, np.ndarray]] = {}
_TOKENS = itertools.count()


def register_hessians(hessians: dict[str, np.ndarray]) -> str:
    token = f"gptq{next(_TOKENS)}"
    HESSIANS[token] = hessians
    return token


def _group_grid(w: np.ndarray, fmt: str, scale_mode: str
                ) -> tuple[np.ndarray, int]:
    """(per-row-group, per-column scale [groups, N] as the encoder applies it, group rows)."""
    f = F.get_format(fmt)
    if f.scale_kind == "fp32":  # FP8: per output column, as passes/quantize.py stores it
        q = F.quantize(w, fmt, axis=1, granularity="channel", allow_nonfinite=True)
    else:
        q = F.quantize(w, fmt, axis=0, scale_mode=scale_mode, allow_nonfinite=True)
    if f.scale_kind == "e8m0":
        return F.e8m0_to_float(q.scales).astype(np.float64), f.block_size
    if f.scale_kind == "e4m3+fp32":
        s8 = q.scales.view(ml_dtypes.float8_e4m3fn).astype(np.float32)
        return (np.float32(q.tensor_scale) * s8).astype(np.float64), f.block_size
    if f.scale_kind == "fp32":
        return q.scales.reshape(1, -1).astype(np.float64), w.shape[0]
    return np.ones((1, w.shape[1])), w.shape[0]  # bf16 / plain casts: unit scale


def gptq_round(w: np.ndarray, hess: np.ndarray, fmt: str, scale_mode: str = "floor",
               damp: float = 0.01, block: int = 128) -> np.ndarray:
    """GPTQ-rounded ``w`` [K, N] (float32, on ``fmt``'s grid) for Hessian ``hess`` [K, K]."""
    f = F.get_format(fmt)
    k, _ = w.shape
    scales, group = _group_grid(w, fmt, scale_mode)
    W = w.astype(np.float64).copy()
    H = np.array(hess, np.float64)
    dead = np.diag(H) == 0
    H[dead, dead] = 1.0
    W[dead] = 0.0
    mean_diag = float(np.mean(np.diag(H)))
    U = None
    for attempt in range(4):  # as GPTQ implementations do: more dampening if needed
        try:
            Hd = H + (damp * 10**attempt) * mean_diag * np.eye(k)
            U = np.linalg.cholesky(np.linalg.inv(Hd)).T  # upper Cholesky factor of H⁻¹
            break
        except np.linalg.LinAlgError:
            continue
    if U is None or not np.isfinite(U).all():
        raise MaiacError("gptq: the calibration Hessian is not positive definite even "
                         f"with dampening {damp * 1000:g}")
    elem = f.elem

    def round_row(i: int, row: np.ndarray) -> np.ndarray:
        s = scales[i // group]
        with np.errstate(divide="ignore", invalid="ignore"):
            v = np.where(s > 0, row / s, 0.0).astype(np.float32)
        return F.cast(v, elem).astype(np.float64) * s

    Q = np.empty_like(W)
    for i1 in range(0, k, block):  # rows are input channels; a Python loop over K rows,
        i2 = min(i1 + block, k)    # each step vectorized over the N outputs
        W1, U1 = W[i1:i2].copy(), U[i1:i2, i1:i2]
        E1 = np.empty_like(W1)
        for j in range(i2 - i1):
            q = round_row(i1 + j, W1[j])
            Q[i1 + j] = q
            err = (W1[j] - q) / U1[j, j]
            W1[j + 1:] -= np.outer(U1[j, j + 1:], err)
            E1[j] = err
        W[i2:] -= U[i1:i2, i2:].T @ E1
    return Q.astype(np.float32)


@dataclass(frozen=True)
class GptqPass(ModulePass):
    """Round constant matmul weights by GPTQ for the weight format ``spec`` gives them."""

    name = "gptq"

    spec: str = ""
    damp: float = 0.01

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        parsed = parse_quant_spec(self.spec)
        token = op.attributes.get(HESSIAN_ATTR)
        if parsed is None:
            return
        if token is None:
            raise MaiacError("gptq needs calibration Hessians (the driver attaches them when "
                             "the quant spec has method=gptq)")
        # consumed here: a table holds K x K float64 per matmul (18 MB at K = 1536)
        table = HESSIANS.pop(str(maia.from_attr(token)), {})
        lossy = 0
        for mm in [m for m in op.walk() if isinstance(m, maia.MatMulOp)]:
            name = str(maia.attr(mm, "op", "matmul"))
            q = parsed.for_op(name)
            w = constant_of(mm.operands[1])
            hess = table.get(name)
            if (q.w in (None, "bf16") or hess is None or w is None or w.ndim != 2
                    or w.dtype != np.float32 or hess.shape != (w.shape[0],) * 2):
                continue
            rot = maia.attr(mm, ROTATED_INPUT_ATTR)
            if rot:
                h = hadamard(rot)  # R XᵀX R, R = blockdiag(H) symmetric; float64 as hess
                hess = rotate_rows(rotate_rows(hess, h).T, h)
            try:
                new_w = gptq_round(w, hess, q.w, q.scale_mode, self.damp)
            except MaiacError as err:
                warnings.warn(f"gptq: '{name}' keeps plain rounding: {err}", stacklevel=2)
                continue
            per_col = F.get_format(q.w).scale_kind == "fp32"
            lossy += int(np.count_nonzero(F.fake_quantize(
                new_w, q.w, axis=1 if per_col else 0, scale_mode=q.scale_mode,
                granularity="channel" if per_col else "tensor", allow_nonfinite=True) != new_w))
            const = new_constant(new_w, f"{label(mm)}.w.gptq")
            mm.parent_block().insert_op_before(const, mm)  # type: ignore[union-attr]
            old = mm.operands[1]
            mm.operands = [mm.operands[0], const.results[0], *mm.operands[2:]]
            if not old.uses and old.owner is not None:
                old.owner.detach()
                old.owner.erase()
        if lossy:
            warnings.warn(f"gptq: {lossy} weight element(s) change when quantize re-encodes "
                          "the GPTQ grid (its scales differ from the static ones)", stacklevel=2)
