// RUN: import inputs/gpt2_layer0.onnx -p 'fold-constants,canonicalize,lower-onnx-to-maia,fuse-attention'
// GPT-2 (TorchScript): c_attn Gemm, Split into q/k/v, head reshapes and transposes (k to
// [B, H, D, S]), MatMul, Mul 1/sqrt(d), Add mask, Softmax, MatMul. One maia.attention
// reads q, k and v straight from the c_attn result through strided views (offsets 0,
// 64, 128 of the 192-wide rows): no transpose or split is materialized. Its result goes
// straight into the [B, S, H, D] layout the c_proj Gemm reads (out_view): the transpose
// after attention is gone too.

// CHECK:     %[[QKV:.*]] = "maia.binary"(%{{.*}}, %model.transformer.h.0.attn.c_attn.bias) {op = "/model/transformer/h.0/attn/c_attn/Gemm", fn = "add"} : (tensor<16x192xf32>, tensor<192xf32>) -> tensor<16x192xf32>
// CHECK-NOT: "maia.view"
// CHECK:     "maia.attention"(%[[QKV]], %[[QKV]], %[[QKV]], %mask) {op = "/model/transformer/h.0/attn/MatMul_1", dims = array<i64: 2, 4, 1, 8, 8, 16>, scale = 2.500000e-01 : f64, kv_groups = 1 : i64, causal = false, q_view = array<i64: 0, 1536, 16, 0, 192, 1>, k_view = array<i64: 64, 1536, 16, 0, 192, 1>, v_view = array<i64: 128, 1536, 16, 0, 192, 1>, mask_view = array<i64: 0, 64, 0, 0, 8, 1>, out_view = array<i64: 0, 512, 16, 0, 64, 1>} : (tensor<16x192xf32>, tensor<16x192xf32>, tensor<16x192xf32>, tensor<2x1x8x8xf32>) -> tensor<2x8x4x16xf32>
// CHECK-NOT: "maia.softmax"
// CHECK-NOT: "maia.view"
