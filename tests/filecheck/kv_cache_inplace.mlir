// RUN: opt -p 'kv-cache-inplace'
// A decode step over a bf16 KV cache of 64 slots: attention reads Concat(Cast(past), new)
// (65 keys). With a cache_position input, each Concat becomes a maia.cache_write of the
// new row into the past input itself (in place, bf16) and attention reads the 64 cache
// slots in bf16 (no Cast, no Concat: the cache is read once); its views are re-expressed
// over the cache and the mask's first 64 columns are kept.

builtin.module {
  func.func @main(%q: tensor<2x4x1x16xf32> {onnx.name = "q"}, %past_k: tensor<2x2x64x16xbf16> {onnx.name = "past_key_values.0.key"}, %past_v: tensor<2x2x64x16xbf16> {onnx.name = "past_key_values.0.value"}, %new_k: tensor<2x2x1x16xf32> {onnx.name = "new_k"}, %new_v: tensor<2x2x1x16xf32> {onnx.name = "new_v"}, %mask: tensor<2x1x1x65xf32> {onnx.name = "mask"}, %pos: tensor<2xi64> {onnx.name = "cache_position"}) -> (tensor<2x4x1x16xf32> {onnx.name = "out"}) {
    %kf = "maia.unary"(%past_k) {op = "past_key_values.0.key/load", fn = "copy"} : (tensor<2x2x64x16xbf16>) -> tensor<2x2x64x16xf32>
    %vf = "maia.unary"(%past_v) {op = "past_key_values.0.value/load", fn = "copy"} : (tensor<2x2x64x16xbf16>) -> tensor<2x2x64x16xf32>
    %k = "maia.concat"(%kf, %new_k) {op = "present.0.key", axis = 2 : i64} : (tensor<2x2x64x16xf32>, tensor<2x2x1x16xf32>) -> tensor<2x2x65x16xf32>
    %v = "maia.concat"(%vf, %new_v) {op = "present.0.value", axis = 2 : i64} : (tensor<2x2x64x16xf32>, tensor<2x2x1x16xf32>) -> tensor<2x2x65x16xf32>
    %o = "maia.attention"(%q, %k, %v, %mask) {op = "attn", dims = array<i64: 2, 2, 2, 1, 65, 16>, scale = 2.500000e-01 : f64, kv_groups = 2 : i64, causal = false, q_view = array<i64: 0, 64, 32, 16, 16, 1>, k_view = array<i64: 0, 2080, 1040, 0, 16, 1>, v_view = array<i64: 0, 2080, 1040, 0, 16, 1>, mask_view = array<i64: 0, 65, 0, 0, 0, 1>} : (tensor<2x4x1x16xf32>, tensor<2x2x65x16xf32>, tensor<2x2x65x16xf32>, tensor<2x1x1x65xf32>) -> tensor<2x4x1x16xf32>
    func.return %o : tensor<2x4x1x16xf32>
  }
}

// CHECK-NOT:  "maia.unary"
// CHECK-NOT:  "maia.concat"
// CHECK:      %[[K:.*]] = "maia.cache_write"(%past_k, %new_k, %pos) {op = "present.0.key/cache_write"} : (tensor<2x2x64x16xbf16>, tensor<2x2x1x16xf32>, tensor<2xi64>) -> tensor<2x2x64x16xbf16>
// CHECK-NEXT: %[[V:.*]] = "maia.cache_write"(%past_v, %new_v, %pos) {op = "present.0.value/cache_write"} : (tensor<2x2x64x16xbf16>, tensor<2x2x1x16xf32>, tensor<2xi64>) -> tensor<2x2x64x16xbf16>
// CHECK-NEXT: "maia.attention"(%q, %[[K]], %[[V]], %mask) {op = "attn", dims = array<i64: 2, 2, 2, 1, 64, 16>, {{.*}} k_view = array<i64: 0, 2048, 1024, 0, 16, 1>, v_view = array<i64: 0, 2048, 1024, 0, 16, 1>, mask_view = array<i64: 0, 65, 0, 0, 0, 1>} : (tensor<2x4x1x16xf32>, tensor<2x2x64x16xbf16>, tensor<2x2x64x16xbf16>, tensor<2x1x1x65xf32>) -> tensor<2x4x1x16xf32>
// CHECK-NOT:  "maia.concat"
