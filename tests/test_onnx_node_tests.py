"""The ONNX backend node tests for every op maiac claims, through compile + run.

A case may only fail with a documented limit of the machine (maiac.conformance.
KNOWN_LIMITS: unsupported element types, training-mode ops, zero-size tensors, ...);
any other failure or wrong value fails this test, naming the cases. The run over all
1,884 cases (unsupported ops included) is scripts/gen_ops_doc.py, which writes
docs/ops.md.
"""

from __future__ import annotations

import pytest

from maiac.conformance import (
    is_transformer_case,
    known_limit,
    node_cases,
    run_case,
    supported_cases,
)


@pytest.fixture(scope="module")
def results() -> list:
    return [run_case(case) for case in supported_cases(node_cases())]


def test_no_unexpected_failures(results: list) -> None:
    unexpected = [f"{r.name}: {r.status}: {r.detail}" for r in results
                  if r.status != "pass" and known_limit(r.detail) is None]
    assert not unexpected, "\n".join(unexpected)


def test_pass_rate(results: list) -> None:
    passed = sum(r.status == "pass" for r in results)
    assert passed >= 1370, f"{passed}/{len(results)} node tests pass"
    transformer = [r for r in results if is_transformer_case(r)]
    assert sum(r.status == "pass" for r in transformer) >= 1010


def test_qdq_cases_go_through_the_importers_expansion() -> None:
    # QuantizeLinear/DequantizeLinear are not lowering rules: the importer expands them
    # (maiac/importers/qdq.py), so the harness must count them as supported
    wanted = {"test_dequantizelinear_int4", "test_quantizelinear_axis", "test_matmulinteger",
              "test_qlinearmatmul_2D_int8_float32"}  # int8 y: was clipped to uint8
    cases = [c for c in node_cases() if c.name in wanted]
    assert {c.name for c in cases} == wanted
    assert all(run_case(c).status == "pass" for c in cases)
