// RUN: import inputs/gpt2_layer0.onnx -p 'fold-constants,canonicalize,lower-onnx-to-maia,fuse-gelu,fuse-epilogue'
// GPT-2 Gemm bias adds, the tanh GELU and both residual adds become matmul epilogues
// (the residual through the Reshape back to [B, S, D], as an alias of the same bytes).

// CHECK:     "maia.matmul"({{.*}}, %model.transformer.h.0.attn.c_attn.weight, %model.transformer.h.0.attn.c_attn.bias) {op = "/model/transformer/h.0/attn/c_attn/Gemm"} : (tensor<16x64xf32>, tensor<64x192xf32>, tensor<192xf32>) -> tensor<16x192xf32>
// CHECK:     %[[R:.*]] = "maia.reshape"(%x) {op = "residual"} : (tensor<2x8x64xf32>) -> tensor<16x64xf32>
// CHECK:     "maia.matmul"({{.*}}, %model.transformer.h.0.attn.c_proj.weight, %{{.*}}, %[[R]]) {op = "/model/transformer/h.0/attn/c_proj/Gemm", residual = "add"} : (tensor<16x64xf32>, tensor<64x64xf32>, tensor<64xf32>, tensor<16x64xf32>) -> tensor<16x64xf32>
// CHECK:     "maia.matmul"({{.*}}, %model.transformer.h.0.mlp.c_fc.weight, %model.transformer.h.0.mlp.c_fc.bias) {op = "/model/transformer/h.0/mlp/c_fc/Gemm", act = "gelu_tanh"}
// CHECK:     "maia.matmul"({{.*}}, %model.transformer.h.0.mlp.c_proj.weight, %{{.*}}, %{{.*}}) {op = "/model/transformer/h.0/mlp/c_proj/Gemm", residual = "add"}
// CHECK-NOT: "maia.binary"
// CHECK-NOT: "maia.unary"
