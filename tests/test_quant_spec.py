"""--quant SPEC parsing: presets, explicit formats, scale modes, overrides, errors."""

from __future__ import annotations

import pytest

from maiac.passes.quant_spec import OpQuant, glob_matches, parse_quant_spec
from maiac.runtime.errors import MaiacError


@pytest.mark.parametrize(("text", "w", "a"), [
    ("fp8", "fp8e4m3", "fp8e4m3"),
    ("mxfp8", "mxfp8e4m3", "mxfp8e4m3"),
    ("mxfp6", "mxfp6e2m3", "mxfp6e2m3"),
    ("mxfp4", "mxfp4", "mxfp4"),
    ("nvfp4", "nvfp4", "nvfp4"),
    ("w4a8", "mxfp4", "mxfp8e4m3"),
    ("bf16", "bf16", "bf16"),
    ("w=mxfp4,a=mxfp8e4m3", "mxfp4", "mxfp8e4m3"),
    ("w=mxfp4", "mxfp4", None),  # weight-only: activations stay fp32
    ("a=mxfp8", None, "mxfp8e4m3"),
    ("mxfp4,a=bf16", "mxfp4", "bf16"),  # a preset with one side replaced
    ('"w=mxfp6e3m2, a=mxfp8e5m2"', "mxfp6e3m2", "mxfp8e5m2"),
])
def test_presets_and_explicit_formats(text: str, w: str | None, a: str | None) -> None:
    spec = parse_quant_spec(text)
    assert spec is not None
    assert (spec.default.w, spec.default.a) == (w, a)


@pytest.mark.parametrize("text", [None, "", "fp32", "none", "w=none,a=fp32"])
def test_no_quantization(text: str | None) -> None:
    assert parse_quant_spec(text) is None


def test_scale_mode_and_calibration_method() -> None:
    spec = parse_quant_spec("mxfp4,scale=rceil,calib=percentile=99.99")
    assert spec is not None and spec.default.scale_mode == "rceil"
    assert (spec.calib_method, spec.calib_percentile) == ("percentile", 99.99)
    assert parse_quant_spec("fp8").needs_calibration
    assert parse_quant_spec("nvfp4").needs_calibration
    assert not parse_quant_spec("mxfp4").needs_calibration
    assert not parse_quant_spec("w=fp8").needs_calibration  # weight-only: no static act scale


def test_per_layer_overrides_last_match_wins() -> None:
    spec = parse_quant_spec("mxfp4;lm_head=mxfp8;layers.0.*=none;layers.0.mlp.*=bf16")
    assert spec is not None
    assert spec.for_op("/model/layers.3/mlp/down_proj/MatMul") == OpQuant("mxfp4", "mxfp4")
    assert spec.for_op("/lm_head/MatMul") == OpQuant("mxfp8e4m3", "mxfp8e4m3")
    assert not spec.for_op("/model/layers.0/self_attn/q_proj/MatMul").active
    assert spec.for_op("/model/layers.0/mlp/up_proj/MatMul") == OpQuant("bf16", "bf16")
    # layers.0 does not match layers.10
    assert spec.for_op("/model/layers.10/mlp/up_proj/MatMul").w == "mxfp4"
    # overrides inherit the spec's scale mode
    spec = parse_quant_spec("mxfp4,scale=ceil;lm_head=mxfp6")
    assert spec.for_op("lm_head").scale_mode == "ceil"


def test_glob_treats_slash_and_dot_alike() -> None:
    assert glob_matches("layers.0.*", "/model/layers.0/attn/MatMul")
    assert glob_matches("h.1.mlp", "h.1.mlp.fc/MatMul_3")
    assert not glob_matches("layers.1.*", "/model/layers.0/attn/MatMul")


@pytest.mark.parametrize(("text", "needle"), [
    ("mxfp5", "unknown preset 'mxfp5'"),
    ("w=int3", "unknown weight format 'int3'"),
    ("a=fp7", "unknown activation format 'fp7'"),
    ("mxfp4,scale=round", "unknown scale mode 'round'"),
    ("mxfp4;lm_head=fp5", "unknown override format 'fp5'"),
    ("mxfp4,,w=mxfp8", "empty item"),
    ("mxfp4,mxfp8", "two presets"),
    ("mxfp4,calib=median", "calib='median'"),
    ("w=", "'w' needs a value"),
])
def test_bad_specs_name_the_token_and_list_the_choices(text: str, needle: str) -> None:
    with pytest.raises(MaiacError) as err:
        parse_quant_spec(text)
    msg = str(err.value)
    assert needle in msg
    assert "\n" not in msg
    if "unknown" in needle and "format" in needle or "preset '" in needle:
        assert "mxfp4" in msg and "nvfp4" in msg and "w4a8" in msg
