// RUN: import inputs/llama_layer0.onnx -p 'fold-constants,canonicalize,lower-onnx-to-maia,fuse-swiglu{merge_min_rows=1}'
// Llama's MLP, down(silu(x Wg) * (x Wu)) with silu as x * Sigmoid(x): gate and up
// projection become one matmul over the concatenated weight [Wg | Wu] (64x256) with
// act = silu and glu = mul; the up projection's own matmul is gone.

// CHECK:     %[[W:.*]] = "maia.constant"() {value = dense_resource<{{.*}}> : tensor<64x256xf32>, op = "/model/model/layers.0/mlp/gate_proj/MatMul+/model/model/layers.0/mlp/up_proj/MatMul"}
// CHECK:     %[[G:.*]] = "maia.matmul"(%[[X:.*]], %[[W]]) {op = "/model/model/layers.0/mlp/gate_proj/MatMul", act = "silu", glu = "mul", up_op = "/model/model/layers.0/mlp/up_proj/MatMul"} : (tensor<2x8x64xf32>, tensor<64x256xf32>) -> tensor<2x8x128xf32>
// CHECK:     "maia.matmul"(%[[G]], %onnx_MatMul_6) {op = "/model/model/layers.0/mlp/down_proj/MatMul"}
// CHECK-NOT: fn = "sigmoid"
