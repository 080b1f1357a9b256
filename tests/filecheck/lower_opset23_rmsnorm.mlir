// RUN: import inputs/opset23_block.onnx -p 'fold-constants,canonicalize,lower-onnx-to-maia'
// Opset-23 RMSNormalization lowers straight to the maia.norm {fn = rmsnorm} that
// fuse-norm makes of a decomposed RMSNorm, with the weight as its scale operand.

// CHECK:     %h = "maia.norm"(%x, %norm.weight) {op = "/norm", fn = "rmsnorm", eps = {{.*}}e-07 : f64} : (tensor<2x8x64xf32>, tensor<64xf32>) -> tensor<2x8x64xf32>
// CHECK-NOT: "onnx.
