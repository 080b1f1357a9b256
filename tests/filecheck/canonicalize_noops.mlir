// RUN: opt -p 'canonicalize'
// Reshape to the same shape, Cast to the same type, identity Transpose, Identity and
// inference Dropout are dropped; an unused op is erased; a real Transpose stays.

builtin.module {
  func.func @main(%x: tensor<2x3xf32>) -> (tensor<3x2xf32>) {
    %s = "onnx.Constant"() {value = dense<[2, 3]> : tensor<2xi64>} : () -> tensor<2xi64>
    %0 = "onnx.Reshape"(%x, %s) : (tensor<2x3xf32>, tensor<2xi64>) -> tensor<2x3xf32>
    %1 = "onnx.Cast"(%0) {to = 1 : i64} : (tensor<2x3xf32>) -> tensor<2x3xf32>
    %2 = "onnx.Transpose"(%1) {perm = [0 : i64, 1 : i64]} : (tensor<2x3xf32>) -> tensor<2x3xf32>
    %3 = "onnx.Identity"(%2) : (tensor<2x3xf32>) -> tensor<2x3xf32>
    %4 = "onnx.Dropout"(%3) {seed = 0 : i64} : (tensor<2x3xf32>) -> tensor<2x3xf32>
    %dead = "onnx.Relu"(%4) : (tensor<2x3xf32>) -> tensor<2x3xf32>
    %5 = "onnx.Transpose"(%4) {perm = [1 : i64, 0 : i64]} : (tensor<2x3xf32>) -> tensor<3x2xf32>
    func.return %5 : tensor<3x2xf32>
  }
}

// CHECK:      func.func @main(%x: tensor<2x3xf32>) -> tensor<3x2xf32> {
// CHECK-NEXT:   %0 = "onnx.Transpose"(%x) {perm = [1 : i64, 0 : i64]} : (tensor<2x3xf32>) -> tensor<3x2xf32>
// CHECK-NEXT:   func.return %0 : tensor<3x2xf32>
// CHECK-NEXT: }
