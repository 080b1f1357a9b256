"""Cut one transformer layer out of the committed exports, for the fusion FileCheck tests.

The layers are the exporters' own node patterns (TorchScript GPT-2: tanh GELU, fused
qkv Gemm + Split; BERT: decomposed LayerNorm, erf GELU, padding mask; Llama: RMSNorm,
RoPE, GQA repeat, SwiGLU), with the attention mask taken as an input so the subgraph
needs none of the mask logic. Run from the repository root::

    python tests/filecheck/make_fusion_inputs.py
"""

from __future__ import annotations

from pathlib import Path

import onnx
import onnx.utils

DATA = Path(__file__).resolve().parents[1] / "data"
OUT = Path(__file__).resolve().parent / "inputs"

# name: (export, hidden-state input, additive-mask input, layer output, (B, S, D))
LAYERS = {
    "gpt2_layer0": ("gpt2_torchscript", "/model/transformer/Add_output_0",
                    "/model/transformer/Where_1_output_0",
                    "/model/transformer/h.0/Add_1_output_0", (2, 8, 64)),
    "bert_layer0": ("bert_torchscript", "/model/embeddings/Add_1_output_0",
                    "/model/Where_1_output_0",
                    "/model/encoder/layer.0/output/LayerNorm/Add_1_output_0", (2, 12, 64)),
    "llama_layer0": ("llama_torchscript", "/model/model/embed_tokens/Gather_output_0",
                     "/model/model/Where_1_output_0", "/model/model/layers.0/Add_1_output_0",
                     (2, 8, 64)),
}


def _rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        node.input[:] = [new if x == old else x for x in node.input]
        node.output[:] = [new if x == old else x for x in node.output]
    for value in (*graph.input, *graph.output):
        if value.name == old:
            value.name = new


def _set_shape(value: onnx.ValueInfoProto, shape: tuple[int, ...]) -> None:
    dims = value.type.tensor_type.shape.dim
    del dims[:]
    for d in shape:
        dims.add().dim_value = d


def main() -> None:
    for name, (model, x, mask, y, (b, s, d)) in LAYERS.items():
        path = OUT / f"{name}.onnx"
        onnx.utils.extract_model(str(DATA / f"{model}.onnx"), str(path), [x, mask], [y])
        layer = onnx.load(str(path))
        for old, new in ((x, "x"), (mask, "mask"), (y, "y")):
            _rename(layer.graph, old, new)
        _set_shape(layer.graph.input[0], (b, s, d))
        _set_shape(layer.graph.input[1], (b, 1, s, s))
        _set_shape(layer.graph.output[0], (b, s, d))
        onnx.checker.check_model(layer)
        onnx.save(layer, str(path))
        print(f"wrote {path.relative_to(OUT.parents[1])} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
