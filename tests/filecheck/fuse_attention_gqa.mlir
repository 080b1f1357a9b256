// RUN: import inputs/llama_layer0.onnx -p 'fold-constants,canonicalize,lower-onnx-to-maia,fuse-attention'
// Llama (TorchScript) GQA: 4 query heads, 2 K/V heads repeated by Unsqueeze, Expand,
// Reshape. maia.attention takes the 2-head K (after RoPE) and V (the v_proj result,
// read through its head transpose) with kv_groups = 2: the G stride is 0, the repeat
// and the k transpose are never materialized. The result is written in the [B, S, H, D]
// layout o_proj reads (out_view: query head h = hkv * 2 + g at column 16 h).

// CHECK:     "maia.attention"(%[[Q:.*]], %[[K:.*]], %model_model_layers.0_self_attn_v_proj_MatMul_output, %mask) {op = "/model/model/layers.0/self_attn/MatMul_1", dims = array<i64: 2, 2, 2, 8, 8, 16>, scale = 2.500000e-01 : f64, kv_groups = 2 : i64, causal = false, q_view = array<i64: 0, 512, 256, 128, 16, 1>, k_view = array<i64: 0, 256, 128, 0, 16, 1>, v_view = array<i64: 0, 256, 16, 0, 32, 1>, mask_view = array<i64: 0, 64, 0, 0, 8, 1>, out_view = array<i64: 0, 512, 32, 16, 64, 1>} : (tensor<2x4x8x16xf32>, tensor<2x2x8x16xf32>, tensor<2x8x32xf32>, tensor<2x1x8x8xf32>) -> tensor<2x8x4x16xf32>
// CHECK-NOT: "maia.softmax"
// CHECK-NOT: Expand
// CHECK-NOT: Transpose_4"
