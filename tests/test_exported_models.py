"""Every exported model in tests/data through maiac: Python API and CLI in fp32 against the
stored onnxruntime reference (rtol 1e-4, atol 1e-5), and bf16 with its error reported.

What maiac is known to fail on is recorded per model in MANIFEST.json under
``maiac_status`` (failing node, op and error); such tests are ``xfail(strict=True)``, so a
fix shows up as XPASS. After a compiler change, refresh the record with

    python tests/test_exported_models.py [NAME ...]

which also measures compile time and the interpreter/onnxruntime run-time ratio.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

import maiac
from maiac.runtime.errors import MaiacError

DATA = Path(__file__).parent / "data"
MANIFEST_PATH = DATA / "MANIFEST.json"
MANIFEST: dict[str, Any] = json.loads(MANIFEST_PATH.read_text())
MODELS: dict[str, dict[str, Any]] = MANIFEST["models"]
RTOL, ATOL = 1e-4, 1e-5
MIN_COSINE = 0.99
BF16 = "bf16"
REFRESH = "refresh with `python tests/test_exported_models.py`"


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an .npz file, by name."""
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def shapes_of(name: str) -> dict[str, tuple[int, ...]] | None:
    """Shapes that bind the model's symbolic dims (None for static models)."""
    shapes = MODELS[name].get("shapes") or {}
    return {k: tuple(v) for k, v in shapes.items()} or None


def bf16_unavailable() -> str | None:
    """Why a bf16 compile cannot be tried yet, or None when the quantize pass is there."""
    from maiac.driver import default_pipeline
    from maiac.passes.registry import PASSES

    if "quantize" not in PASSES or "quantize" not in default_pipeline(BF16):
        return "bf16 needs the `quantize` pass, which maiac does not register yet"
    return None


def cases(kind: str) -> list[Any]:
    """One pytest param per model, xfail(strict) where MANIFEST records a maiac failure."""
    params = []
    for name in sorted(MODELS):
        record = MODELS[name].get("maiac_status", {})
        status = record.get(kind, {})
        if kind == BF16 and not status.get("error"):
            status = record.get("fp32", {})  # bf16 not tried yet: it fails where fp32 fails
        marks = []
        if status and not status.get("ok", False) and status.get("error"):
            marks.append(pytest.mark.xfail(
                strict=True, reason=f"maiac {kind}: {status['error']} ({REFRESH} once fixed)"))
        params.append(pytest.param(name, marks=marks, id=name))
    return params


@pytest.mark.parametrize("name", cases("fp32"))
def test_fp32_python_api_matches_reference(name: str) -> None:
    feeds = load_npz(DATA / f"{name}.inputs.npz")
    ref = load_npz(DATA / f"{name}.ref.npz")
    compiled = maiac.compile(str(DATA / f"{name}.onnx"), shapes=shapes_of(name))
    got = compiled.run(feeds)
    assert set(got) == set(ref)
    for out, want in ref.items():
        assert got[out].shape == want.shape, out
        np.testing.assert_allclose(got[out], want, rtol=RTOL, atol=ATOL, err_msg=f"{name}:{out}")


def cli_verify(name: str, *extra: str) -> tuple[subprocess.CompletedProcess[str], dict | None]:
    """``maiac verify tests/data/NAME.onnx --inputs NAME.inputs.npz --json`` in a subprocess."""
    cmd = [sys.executable, "-m", "maiac", "verify", str(DATA / f"{name}.onnx"),
           "--inputs", str(DATA / f"{name}.inputs.npz"), "--json", *extra]
    for inp, shape in (shapes_of(name) or {}).items():
        cmd += ["--shape", f"{inp}={'x'.join(map(str, shape))}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    try:
        result = json.loads(proc.stdout)
    except json.JSONDecodeError:
        result = None
    return proc, result


@pytest.mark.parametrize("name", cases("cli"))
def test_fp32_cli_verify(name: str) -> None:
    proc, result = cli_verify(name)
    assert proc.returncode == 0, proc.stderr.strip().splitlines()[-1:] or proc.stdout
    assert result is not None and result["ok"], result
    assert result["quant"] == "fp32"
    assert {o["name"] for o in result["outputs"]} == set(load_npz(DATA / f"{name}.ref.npz"))


@pytest.mark.parametrize("name", cases(BF16))
def test_bf16_error_is_reported(name: str) -> None:
    reason = bf16_unavailable()
    if reason:
        pytest.skip(reason)
    from maiac.verify import verify

    result = verify(str(DATA / f"{name}.onnx"), quant=BF16, shapes=shapes_of(name),
                    inputs=str(DATA / f"{name}.inputs.npz"), min_cosine=MIN_COSINE)
    assert result["quant"] == BF16
    for out in result["outputs"]:
        print(f"{name}:{out['name']} bf16 cosine {out['cosine']} max_rel_err {out['max_rel_err']}")
        assert out["cosine"] is not None and out["cosine"] >= MIN_COSINE, out
    assert result["ok"], result


# -- refreshing maiac_status in MANIFEST.json -------------------------------------------


def _failure(err: BaseException | str) -> dict[str, Any]:
    """The failing node, op and one-line error of a compile or run."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    msg = (text if isinstance(err, str) else f"{type(err).__name__}: {text}")[:400]
    node = re.search(r"node '([^']*)'", text)
    op = re.search(r"op '([^']*)'", text)
    return {"ok": False, "error": msg, "node": node.group(1) if node else None,
            "op": op.group(1) if op else None}


def _unsupported_ops(name: str) -> list[str]:
    """Op types of the model that maiac's importer does not accept at all."""
    from maiac.importer import SUPPORTED_OPS

    model = onnx.load(str(DATA / f"{name}.onnx"), load_external_data=False)
    return sorted({n.op_type for n in model.graph.node} - SUPPORTED_OPS)


def _ort_seconds(name: str, feeds: dict[str, np.ndarray]) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(DATA / f"{name}.onnx"), providers=["CPUExecutionProvider"])
    session.run(None, feeds)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - start)
    return min(times)


def measure(name: str) -> dict[str, Any]:
    """Run the three checks of this file on one model outside pytest; its maiac_status."""
    feeds = load_npz(DATA / f"{name}.inputs.npz")
    ref = load_npz(DATA / f"{name}.ref.npz")
    status: dict[str, Any] = {"unsupported_ops": _unsupported_ops(name)}
    try:
        start = time.perf_counter()
        compiled = maiac.compile(str(DATA / f"{name}.onnx"), shapes=shapes_of(name))
        compile_s = time.perf_counter() - start
        start = time.perf_counter()
        got = compiled.run(feeds)
        run_s = time.perf_counter() - start
        ort_s = _ort_seconds(name, feeds)
        errs = {o: float(np.max(np.abs(got[o] - w))) for o, w in ref.items()}
        ok = all(np.allclose(got[o], w, rtol=RTOL, atol=ATOL) for o, w in ref.items())
        fp32: dict[str, Any] = {
            "ok": ok, "error": None if ok else f"mismatch: max abs err {max(errs.values()):.3g}",
            "node": None, "op": None, "max_abs_err": errs, "compile_s": round(compile_s, 3),
            "run_s": round(run_s, 4), "onnxruntime_s": round(ort_s, 6),
            "run_ratio": round(run_s / ort_s, 1)}
    except (MaiacError, Exception) as err:  # noqa: B014 - a compiler bug may raise anything
        fp32 = _failure(err)
    status["fp32"] = fp32

    proc, result = cli_verify(name)
    if proc.returncode == 0 and result is not None and result.get("ok"):
        status["cli"] = {"ok": True, "error": None}
    else:
        last = (proc.stderr.strip().splitlines() or [proc.stdout.strip()[:300]])[-1]
        status["cli"] = {**_failure(f"exit {proc.returncode}: {last}"),
                         "exit_code": proc.returncode}

    reason = bf16_unavailable()
    if reason:
        status[BF16] = {"ok": None, "error": None, "skipped": reason}
    else:
        from maiac.verify import verify

        try:
            res = verify(str(DATA / f"{name}.onnx"), quant=BF16, shapes=shapes_of(name),
                         inputs=str(DATA / f"{name}.inputs.npz"), min_cosine=MIN_COSINE)
            status[BF16] = {"ok": bool(res["ok"]),
                            "error": None if res["ok"] else "cosine below threshold",
                            "outputs": {o["name"]: {"cosine": o["cosine"],
                                                    "max_rel_err": o["max_rel_err"]}
                                        for o in res["outputs"]}}
        except Exception as err:  # noqa: BLE001
            status[BF16] = _failure(err)
    status["checked_at_commit"] = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
        cwd=DATA).stdout.strip() or None
    return status


def main(names: list[str]) -> None:
    """Refresh maiac_status in MANIFEST.json for NAMES (default: every model)."""
    for name in names or sorted(MODELS):
        status = measure(name)
        old = MODELS[name].get("maiac_status", {})
        if old.get("diagnosis") and old.get("fp32", {}).get("error") == status["fp32"]["error"]:
            status["diagnosis"] = old["diagnosis"]  # a person's analysis of the same failure
        MODELS[name]["maiac_status"] = status
        fp32 = status["fp32"]
        line = (f"compile {fp32['compile_s']}s, run ratio {fp32['run_ratio']}x"
                if "compile_s" in fp32 else "")
        print(f"{name:20} fp32 {'ok' if fp32['ok'] else fp32['error']} {line}; "
              f"cli {'ok' if status['cli']['ok'] else status['cli']['error']}; "
              f"bf16 {status[BF16]}", flush=True)
        MANIFEST_PATH.write_text(json.dumps(MANIFEST, indent=2) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
