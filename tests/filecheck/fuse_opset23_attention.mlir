// RUN: import inputs/opset23_block.onnx -p 'fold-constants,canonicalize,lower-onnx-to-maia,fuse-norm,fuse-gelu,fuse-swiglu,fuse-rope,fuse-attention,fuse-epilogue'
// Opset-23 RotaryEmbedding (cos/sin gathered by position_ids) and Attention (GQA 4:2,
// is_causal) lower to the chains fuse-rope and fuse-attention recognise: two maia.rope
// reading the projections through the head split, and one causal maia.attention with
// 2 query heads per K/V head; no scores or softmax are left.

// CHECK:     "maia.norm"(%x, %norm.weight) {op = "/norm", fn = "rmsnorm"
// CHECK:     "maia.rope"(%q2, {{.*}}) {op = "/q_rope", x_view = array<i64: 0, 512, 64, 16, 1>} : {{.*}} -> tensor<2x8x4x16xf32>
// CHECK:     "maia.rope"(%k2, {{.*}}) {op = "/k_rope", x_view = array<i64: 0, 256, 32, 16, 1>} : {{.*}} -> tensor<2x8x2x16xf32>
// CHECK:     "maia.attention"({{.*}}) {op = "/attention", dims = array<i64: 2, 2, 2, 8, 8, 16>, scale = 2.500000e-01 : f64, kv_groups = 2 : i64, causal = true
// CHECK-NOT: "maia.softmax"
// CHECK-NOT: fn = "reduce_max"
