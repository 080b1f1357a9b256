// RUN: opt -p 'fold-constants'
// Ops on constants evaluate to constants; Shape of a static tensor needs no data;
// an op reading a non-constant stays.

builtin.module attributes {onnx.opset_import = {"" = 17 : i64}} {
  func.func @main(%x: tensor<2x3xf32>) -> (tensor<2xi64>, tensor<3xf32>, tensor<2x3xf32>) {
    %shape = "onnx.Shape"(%x) : (tensor<2x3xf32>) -> tensor<2xi64>
    %one = "onnx.Constant"() {value = dense<1> : tensor<i64>} : () -> tensor<i64>
    %plus = "onnx.Add"(%shape, %one) : (tensor<2xi64>, tensor<i64>) -> tensor<2xi64>
    %a = "onnx.Constant"() {value = dense<[1.0, 4.0, 9.0]> : tensor<3xf32>} : () -> tensor<3xf32>
    %r = "onnx.Sqrt"(%a) : (tensor<3xf32>) -> tensor<3xf32>
    %y = "onnx.Relu"(%x) : (tensor<2x3xf32>) -> tensor<2x3xf32>
    func.return %plus, %r, %y : tensor<2xi64>, tensor<3xf32>, tensor<2x3xf32>
  }
}

// CHECK-DAG:  %[[P:.*]] = "onnx.Constant"() {value = dense<[3, 4]> : tensor<2xi64>{{.*}}} : () -> tensor<2xi64>
// CHECK-DAG:  %[[R:.*]] = "onnx.Constant"() {value = dense<[1.000000e+00, 2.000000e+00, 3.000000e+00]> : tensor<3xf32>{{.*}}}
// CHECK:      %[[Y:.*]] = "onnx.Relu"(%x)
// CHECK-NEXT: func.return %[[P]], %[[R]], %[[Y]]
// CHECK-NOT:  onnx.Shape
