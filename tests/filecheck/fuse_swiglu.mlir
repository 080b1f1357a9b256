// RUN: import inputs/llama_layer0.onnx -p 'fold-constants,canonicalize,lower-onnx-to-maia,fuse-swiglu'
// Llama's MLP, down(silu(x Wg) * (x Wu)) with silu as x * Sigmoid(x): the gate matmul
// gets act = silu and multiplies the up projection in as its epilogue.

// CHECK:     %[[UP:.*]] = "maia.matmul"(%[[X:.*]], %onnx_MatMul_5) {op = "/model/model/layers.0/mlp/up_proj/MatMul"}
// CHECK:     %[[G:.*]] = "maia.matmul"(%[[X]], %onnx_MatMul_4, %[[UP]]) {op = "/model/model/layers.0/mlp/gate_proj/MatMul", act = "silu", residual = "mul"} : (tensor<2x8x64xf32>, tensor<64x128xf32>, tensor<2x8x128xf32>) -> tensor<2x8x128xf32>
// CHECK:     "maia.matmul"(%[[G]], %onnx_MatMul_6) {op = "/model/model/layers.0/mlp/down_proj/MatMul"}
// CHECK-NOT: fn = "sigmoid"
