"""Fitted parameters of the ``maia200`` target (written by ``bench/fit_paper.py``; do not
edit by hand: rerun the fit). Each value was chosen so maiac's model of the experiments
of arXiv 2608.24664 reproduces the published table (bench/paper.py); ``FIT_ROWS`` names
the rows each one was fitted to."""

# the fit's table (2026-12-01):
#   BF16 GEMM compute-bound, best fraction of peak: paper 0.9969, maiac 0.9297, ratio 0.933
#   BF16 GEMM: GEMM FLOPs above which every compute-bound shape > 90 %: paper 5.8e+13, maiac 1.1e+12, ratio 0.019
#   BF16 GEMM memory-bound, best fraction of HBM: paper 0.514, maiac 0.6128, ratio 1.192
#   BF16 GEMM: operand bytes above which memory-bound > 50 % of HBM: paper 1.19e+08, maiac 1.355e+08, ratio 1.139
#   FP8 GEMM compute-bound, best fraction of peak: paper 0.96, maiac 0.8167, ratio 0.851
#   FP8 GEMM memory-bound, best fraction of HBM: paper 0.56, maiac 0.6573, ratio 1.174
#   BF16 ridge point (peak / HBM): paper 169, maiac 168.5, ratio 0.997
#   FP8 ridge point (peak / HBM): paper 674, maiac 674.1, ratio 1.000
#   Qwen2.5-7B decode at 16,384 context, tokens/s (batch 8, nearest): paper 2434, maiac 805.3, ratio 0.331

FIT: dict[str, float] = {
    "hbm_efficiency": 0.85,
    "dma_latency_s": 1e-06,
    "noc_bw": 80000000000000.0,
}

FIT_ROWS: dict[str, str] = {
    "hbm_efficiency": "Qwen2.5-7B decode 2,434 tokens/s and the BF16/FP8 memory-bound GEMM peaks",
    "dma_latency_s": "BF16 memory-bound GEMM: > 50 % of HBM only past 113.5 MiB operands",
    "noc_bw": "BF16/FP8 compute-bound GEMM peaks (99.69 %, 96 %)",
}
