// RUN: opt -p 'tile'
// A 128x256 @ 256x512 matmul on the 64 tiles of maia200: every tensor gets a buffer,
// the op becomes one kernel whose DMAs bring an A and a B block into TSRAM per tile
// (grid over M and N blocks), the TTU multiplies, and a DMA writes the C block back.

builtin.module {
  func.func @main(%a: tensor<128x256xf32> {onnx.name = "a"}, %b: tensor<256x512xf32> {onnx.name = "b"}) -> (tensor<128x512xf32> {onnx.name = "c"}) {
    %c = "maia.matmul"(%a, %b) {op = "mm"} : (tensor<128x256xf32>, tensor<256x512xf32>) -> tensor<128x512xf32>
    func.return %c : tensor<128x512xf32>
  }
}

// CHECK:      func.func @main() attributes {maia.flops = 33554432 : i64
// CHECK-DAG:  "maia.buffer"() {sym = "in:a", level = "hbm", nbytes = 131072 : i64, kind = "input"
// CHECK-DAG:  "maia.buffer"() {sym = "in:b", level = "hbm", nbytes = 524288 : i64, kind = "input"
// CHECK-DAG:  "maia.buffer"() {sym = "t1:mm", level = "hbm", nbytes = 262144 : i64, kind = "output"
// CHECK:      "maia.kernel"() ({
// CHECK:        "maia.buffer"() {sym = "k1/a", level = "tsram"
// CHECK:        "maia.dma"() {src = {buf = "in:a"{{.*}}}, dst = {buf = "k1/a"{{.*}}}, grid = array<i64: [[GM:[0-9]+]], [[GN:[0-9]+]]>
// CHECK-NEXT:   "maia.dma"() {src = {buf = "in:b"{{.*}}}, dst = {buf = "k1/b"
// CHECK-NEXT:   "maia.mm"() {a = {buf = "k1/a"{{.*}}}, b = {buf = "k1/b"{{.*}}}, c = {buf = "k1/c"{{.*}}}, grid = array<i64: [[GM]], [[GN]]>, accumulate = false
// CHECK-NEXT:   "maia.dma"() {src = {buf = "k1/c"{{.*}}}, dst = {buf = "t1:mm"
// CHECK:      }) {op = "mm", kind = "matmul", flops = 33554432 : i64}
// CHECK-NEXT: func.return
