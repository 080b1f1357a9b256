// RUN: import inputs/gpt2_layer0.onnx -p 'fold-constants,canonicalize,lower-onnx-to-maia,fuse-gelu'
// GPT-2's gelu_new, 0.5 x (1 + tanh(0.7978846 (x + 0.044715 x^3))), with the cube as
// Pow 3, becomes one maia.unary gelu_tanh.

// CHECK:     %[[H:.*]] = "maia.reshape"(%model_transformer_h.0_mlp_c_fc_Gemm_output)
// CHECK:     "maia.unary"(%[[H]]) {op = "/model/transformer/h.0/mlp/act/Mul_3", fn = "gelu_tanh"} : (tensor<2x8x256xf32>) -> tensor<2x8x256xf32>
// CHECK-NOT: fn = "tanh"
// CHECK-NOT: fn = "pow"
