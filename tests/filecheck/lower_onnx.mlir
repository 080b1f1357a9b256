// RUN: opt -p 'lower-onnx-to-maia'
// Each onnx op becomes the maia op of its family: MatMul → maia.matmul, Add → binary
// (broadcast bias kept as a [N] operand), Gelu → unary gelu, Transpose → a strided view,
// Softmax on a non-last axis → view, softmax on the last axis, view back; Reshape → alias.

builtin.module attributes {onnx.opset_import = {"" = 20 : i64}} {
  func.func @main(%x: tensor<4x8xf32>, %w: tensor<8x16xf32>, %b: tensor<16xf32>) -> (tensor<16x4xf32>, tensor<2x2x16xf32>) {
    %0 = "onnx.MatMul"(%x, %w) {onnx.name = "mm"} : (tensor<4x8xf32>, tensor<8x16xf32>) -> tensor<4x16xf32>
    %1 = "onnx.Add"(%0, %b) {onnx.name = "bias"} : (tensor<4x16xf32>, tensor<16xf32>) -> tensor<4x16xf32>
    %2 = "onnx.Gelu"(%1) {onnx.name = "act"} : (tensor<4x16xf32>) -> tensor<4x16xf32>
    %3 = "onnx.Softmax"(%2) {axis = 0 : i64, onnx.name = "sm"} : (tensor<4x16xf32>) -> tensor<4x16xf32>
    %4 = "onnx.Transpose"(%3) {perm = [1 : i64, 0 : i64], onnx.name = "tr"} : (tensor<4x16xf32>) -> tensor<16x4xf32>
    %s = "onnx.Constant"() {value = dense<[2, 2, 16]> : tensor<3xi64>} : () -> tensor<3xi64>
    %5 = "onnx.Reshape"(%2, %s) {onnx.name = "rs"} : (tensor<4x16xf32>, tensor<3xi64>) -> tensor<2x2x16xf32>
    func.return %4, %5 : tensor<16x4xf32>, tensor<2x2x16xf32>
  }
}

// CHECK:      %[[MM:.*]] = "maia.matmul"(%x, %w) {op = "mm"}
// CHECK-NEXT: %[[B:.*]] = "maia.binary"(%[[MM]], %b) {op = "bias", fn = "add"} : (tensor<4x16xf32>, tensor<16xf32>) -> tensor<4x16xf32>
// CHECK-NEXT: %[[G:.*]] = "maia.unary"(%[[B]]) {op = "act", fn = "gelu"}
// CHECK-NEXT: %[[T:.*]] = "maia.view"(%[[G]]) {op = "sm", offset = 0 : i64, strides = array<i64: 1, 16>} : (tensor<4x16xf32>) -> tensor<16x4xf32>
// CHECK-NEXT: %[[S:.*]] = "maia.softmax"(%[[T]]) {op = "sm", fn = "softmax"}
// CHECK-NEXT: %[[U:.*]] = "maia.view"(%[[S]]) {op = "sm", offset = 0 : i64, strides = array<i64: 1, 4>} : (tensor<16x4xf32>) -> tensor<4x16xf32>
// CHECK-NEXT: %[[TR:.*]] = "maia.view"(%[[U]]) {op = "tr", offset = 0 : i64, strides = array<i64: 1, 16>}
// CHECK:      %[[R:.*]] = "maia.reshape"(%[[G]]) {op = "rs"} : (tensor<4x16xf32>) -> tensor<2x2x16xf32>
// CHECK-NEXT: func.return %[[TR]], %[[R]]
// CHECK-NOT:  onnx.
