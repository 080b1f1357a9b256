// RUN: opt -p 'tile,plan-memory'
// Inputs and outputs are placed in HBM; the intermediate %h lives in CSRAM (it fits);
// each kernel's TSRAM scratch starts at address 0, because kernels run one after another.

builtin.module {
  func.func @main(%x: tensor<64x64xf32> {onnx.name = "x"}) -> (tensor<64x64xf32> {onnx.name = "y"}) {
    %h = "maia.unary"(%x) {op = "relu", fn = "relu"} : (tensor<64x64xf32>) -> tensor<64x64xf32>
    %y = "maia.unary"(%h) {op = "exp", fn = "exp"} : (tensor<64x64xf32>) -> tensor<64x64xf32>
    func.return %y : tensor<64x64xf32>
  }
}

// CHECK-DAG:  "maia.buffer"() {sym = "in:x", level = "hbm", nbytes = 16384 : i64, kind = "input", {{.*}}addr = 0 : i64}
// CHECK-DAG:  "maia.buffer"() {sym = "t1:relu", level = "csram", nbytes = 16384 : i64, kind = "act", {{.*}}addr = 0 : i64}
// CHECK-DAG:  "maia.buffer"() {sym = "t2:exp", level = "hbm", nbytes = 16384 : i64, kind = "output", {{.*}}addr = 16384 : i64}
// CHECK:      "maia.buffer"() {sym = "k1/in0", level = "tsram", {{.*}}addr = 0 : i64}
// CHECK:      "maia.buffer"() {sym = "k2/in0", level = "tsram", {{.*}}addr = 0 : i64}
