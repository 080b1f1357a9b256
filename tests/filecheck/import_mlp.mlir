// RUN: import inputs/mlp.onnx --shape x=2x8
// An MLP built with onnx.helper imports as one onnx op per node, weights as handles.

// CHECK:      builtin.module attributes {onnx.opset_import = {"" = 20 : i64}}
// CHECK-NEXT:   func.func @main(%x: tensor<2x8xf32> {onnx.name = "x"}) -> (tensor<2x4xf32> {onnx.name = "y"})
// CHECK-NEXT:     %[[W1:.*]] = "onnx.Constant"() {value = dense_resource<{{.*}}> : tensor<8x32xf32>, onnx.name = "fc1.weight"} : () -> tensor<8x32xf32>
// CHECK-NEXT:     %[[B1:.*]] = "onnx.Constant"() {value = dense_resource<{{.*}}> : tensor<32xf32>, onnx.name = "fc1.bias"}
// CHECK-NEXT:     %[[W2:.*]] = "onnx.Constant"() {{.*}} onnx.name = "fc2.weight"
// CHECK-NEXT:     %[[H:.*]] = "onnx.MatMul"(%x, %[[W1]]) {onnx.name = "fc1/MatMul"} : (tensor<2x8xf32>, tensor<8x32xf32>) -> tensor<2x32xf32>
// CHECK-NEXT:     %[[HB:.*]] = "onnx.Add"(%[[H]], %[[B1]]) {onnx.name = "fc1/Add"} : (tensor<2x32xf32>, tensor<32xf32>) -> tensor<2x32xf32>
// CHECK-NEXT:     %[[G:.*]] = "onnx.Gelu"(%[[HB]]) {onnx.name = "act/Gelu"} : (tensor<2x32xf32>) -> tensor<2x32xf32>
// CHECK-NEXT:     %[[Y:.*]] = "onnx.MatMul"(%[[G]], %[[W2]]) {onnx.name = "fc2/MatMul"} : (tensor<2x32xf32>, tensor<32x4xf32>) -> tensor<2x4xf32>
// CHECK-NEXT:     func.return %[[Y]] : tensor<2x4xf32>
