// RUN: import inputs/llama_layer0.onnx -p 'fold-constants,canonicalize,lower-onnx-to-maia,fuse-rope'
// Llama (TorchScript) RoPE on q (4 heads) and k (2 KV heads): Transpose to [B, H, S, D],
// Slice x[..., :8] and x[..., 8:], Neg, Concat, Mul by cos, Mul by sin, Add. Each becomes
// one maia.rope reading the projection's output through the head transpose (x_view:
// offset, then strides over [B, H, S, D]); the Slice/Neg/Concat chain, the Muls and the
// q/k transposes are gone.

// CHECK:     %[[Q:.*]] = "maia.matmul"({{.*}}) {op = "/model/model/layers.0/self_attn/q_proj/MatMul"} : (tensor<2x8x64xf32>, tensor<64x64xf32>) -> tensor<2x8x64xf32>
// CHECK:     %[[K:.*]] = "maia.matmul"({{.*}}) {op = "/model/model/layers.0/self_attn/k_proj/MatMul"} : (tensor<2x8x64xf32>, tensor<64x32xf32>) -> tensor<2x8x32xf32>
// CHECK-NOT: "maia.concat"
// CHECK:     "maia.rope"(%[[Q]], %[[COS:.*]], %[[SIN:.*]]) {op = "/model/model/layers.0/self_attn/Add", x_view = array<i64: 0, 512, 16, 64, 1>} : (tensor<2x8x64xf32>, tensor<1x1x8x16xf32>, tensor<1x1x8x16xf32>) -> tensor<2x4x8x16xf32>
// CHECK:     "maia.rope"(%[[K]], %[[COS]], %[[SIN]]) {op = "/model/model/layers.0/self_attn/Add_1", x_view = array<i64: 0, 256, 16, 32, 1>} : (tensor<2x8x32xf32>, tensor<1x1x8x16xf32>, tensor<1x1x8x16xf32>) -> tensor<2x2x8x16xf32>
// CHECK-NOT: "maia.unary"(%{{.*}}) {op = "/model/model/layers.0/self_attn/Neg
// CHECK-NOT: "maia.concat"
// CHECK-NOT: Transpose_1"
