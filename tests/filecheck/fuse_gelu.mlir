// RUN: import inputs/bert_layer0.onnx -p 'fold-constants,canonicalize,lower-onnx-to-maia,fuse-gelu'
// BERT's erf GELU, 0.5 * x * (1 + erf(x / 1.4142135)), becomes one maia.unary gelu.

// CHECK:     %[[H:.*]] = "maia.binary"({{.*}}) {op = "/model/encoder/layer.0/intermediate/dense/Add", fn = "add"}
// CHECK:     "maia.unary"(%[[H]]) {op = "/model/encoder/layer.0/intermediate/intermediate_act_fn/Mul_1", fn = "gelu"} : (tensor<2x12x128xf32>) -> tensor<2x12x128xf32>
// CHECK-NOT: fn = "erf"
