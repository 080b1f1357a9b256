// RUN: import inputs/bert_layer0.onnx -p 'fold-constants,canonicalize,lower-onnx-to-maia,fuse-norm'
// BERT (TorchScript) spells LayerNorm out: ReduceMean, Sub, Pow 2, ReduceMean, Add eps,
// Sqrt, Div, Mul gamma, Add beta. fuse-norm turns each of the three chains of the layer
// (embeddings, attention output, output) into one maia.norm and leaves no reductions.

// CHECK:     "maia.norm"(%x, %model.embeddings.LayerNorm.weight, %model.embeddings.LayerNorm.bias) {op = "/model/embeddings/LayerNorm/Add_1", fn = "layernorm", eps = 9.99999996{{[0-9]*}}e-13 : f64} : (tensor<2x12x64xf32>, tensor<64xf32>, tensor<64xf32>) -> tensor<2x12x64xf32>
// CHECK:     "maia.norm"({{.*}}) {op = "/model/encoder/layer.0/attention/output/LayerNorm/Add_1", fn = "layernorm"
// CHECK:     %y = "maia.norm"({{.*}}) {op = "/model/encoder/layer.0/output/LayerNorm/Add_1", fn = "layernorm"
// CHECK-NOT: "maia.reduce"
// CHECK-NOT: fn = "sqrt"
