// RUN: import inputs/shape_chain.onnx --shape x=3x5x4 -p 'fold-constants,canonicalize'
// Shape → Gather → Unsqueeze → Concat → Reshape folds to a Reshape by a constant shape;
// the Identity and every shape op are gone.

// CHECK:      func.func @main(%x: tensor<3x5x4xf32> {onnx.name = "x"}) -> (tensor<3x5x2x2xf32> {onnx.name = "y"})
// CHECK-NEXT:   %[[SHAPE:.*]] = "onnx.Constant"() {value = dense<[3, 5, 2, 2]> : tensor<4xi64>{{.*}}} : () -> tensor<4xi64>
// CHECK-NEXT:   %[[R:.*]] = "onnx.Reshape"(%x, %[[SHAPE]]) {onnx.name = "Reshape_0"} : (tensor<3x5x4xf32>, tensor<4xi64>) -> tensor<3x5x2x2xf32>
// CHECK-NEXT:   func.return %[[R]] : tensor<3x5x2x2xf32>
// CHECK-NOT:  onnx.Shape
