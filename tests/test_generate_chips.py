"""`generate --chips N`: generation on a tensor-parallel group (maiac.chips.ShardedSession),
the KV cache split by KV heads, tokens identical to one chip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from maiac import models
from maiac.chips import ChipGroup
from maiac.cli import main
from maiac.generate import _PROGRAMS, generate
from maiac.runtime.errors import MaiacError
from maiac.runtime.isa import Loop, Scatter

PROMPT = [5, 17, 42, 7]


@pytest.fixture(scope="module")
def model() -> onnx.ModelProto:
    return models.kv_decoder(seed=2)  # 4 query heads over 2 KV heads, 2 layers


@pytest.fixture(scope="module")
def one_chip(model: onnx.ModelProto):  # noqa: ANN201
    return generate(model, PROMPT, max_new_tokens=20, keep_logits=True)


@pytest.mark.parametrize("chips", [2, 4])
def test_tokens_identical_to_one_chip(model: onnx.ModelProto, one_chip, chips: int) -> None:  # noqa: ANN001
    out = generate(model, PROMPT, max_new_tokens=20, chips=chips, keep_logits=True)
    assert len(set(one_chip.tokens)) > 5  # a real sequence, not one token repeated
    assert out.tokens == one_chip.tokens
    assert out.kv_update == one_chip.kv_update == "in-place"
    for a, b in zip(out.logits, one_chip.logits, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    assert out.tpot_s > 0 and out.ttft_s > 0
    # the decode programs hold their KV heads only: 2 KV heads, split (2 chips) or each
    # shared by two chips (4)
    groups = [v[0] for v in _PROGRAMS.values()
              if isinstance(v[0], ChipGroup) and v[0].chips == chips]
    assert groups
    decode = next(g for g in groups if "cache_position" in
                  {s.name for s in g.programs[0].inputs})
    cuts = decode.programs[chips - 1].meta["shard"]["inputs"]
    assert {c["stop"] - c["start"] for c in cuts.values()} == {1}
    assert any(name.startswith("past_key_values.") for name in cuts)
    # each chip writes its own heads of the cache (a Scatter per K/V per layer), so the
    # cache never travels with a step
    for program in decode.programs:
        assert _count(program.instructions, Scatter) == 4   # K and V of 2 layers


def _count(instrs: list, kind: type) -> int:
    return sum(_count(i.body, kind) if isinstance(i, Loop) else isinstance(i, kind)
               for i in instrs)


def test_cli_chips(model: onnx.ModelProto, one_chip, tmp_path: Path) -> None:  # noqa: ANN001
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    res = CliRunner().invoke(main, ["generate", str(path), "--prompt-ids",
                                    ",".join(map(str, PROMPT)), "--max-new-tokens", "16",
                                    "--chips", "2", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["chips"] == 2 and out["tokens"] == one_chip.tokens[:16]
    with pytest.raises(MaiacError, match="--chips"):
        generate(model, PROMPT, max_new_tokens=2, chips=0)
