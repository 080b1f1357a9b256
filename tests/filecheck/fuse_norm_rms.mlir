// RUN: import inputs/llama_layer0.onnx -p 'fold-constants,canonicalize,lower-onnx-to-maia,fuse-norm'
// Llama (TorchScript) RMSNorm: Pow 2, ReduceMean, Add eps, Sqrt, Div(1, .), Mul x, Mul w
// becomes maia.norm {fn = rmsnorm} with the weight as its scale operand.

// CHECK:     "maia.norm"(%x, %model.model.layers.0.input_layernorm.weight) {op = "/model/model/layers.0/input_layernorm/Mul_1", fn = "rmsnorm", eps = {{.*}}e-06 : f64} : (tensor<2x8x64xf32>, tensor<64xf32>) -> tensor<2x8x64xf32>
// CHECK:     "maia.norm"({{.*}}) {op = "/model/model/layers.0/post_attention_layernorm/Mul_1", fn = "rmsnorm"
// CHECK-NOT: "maia.reduce"
// CHECK-NOT: fn = "sqrt"
