"""Fitted parameters of the ``maia200`` target (written by ``bench/fit_paper.py``; do not
edit by hand: rerun the fit). Each value was chosen so maiac's model of the experiments
of arXiv 2608.24664 reproduces the published table (bench/paper.py); ``FIT_ROWS`` names
the rows each one was fitted to."""

# python bench/fit_paper.py --recompile --joint --grid hbm_efficiency=0.57 --grid dma_latency_s=1.5e-7 --grid noc_bw=8e13 --grid launch_latency_s=1.45e-6 --write (2026-12-03):
#   BF16 GEMM compute-bound, best fraction of peak: paper 0.9969, maiac 0.9923, ratio 0.995
#   BF16 GEMM: GEMM FLOPs above which every compute-bound shape > 90 %: paper 5.8e+13, maiac 5.532e+13, ratio 0.954
#   BF16 GEMM memory-bound, best fraction of HBM: paper 0.514, maiac 0.5516, ratio 1.073
#   BF16 GEMM: operand bytes below which no memory-bound shape > 50 % of HBM: paper 1.19e+08, maiac 1.251e+08, ratio 1.051
#   FP8 GEMM compute-bound, best fraction of peak: paper 0.96, maiac 0.9487, ratio 0.988
#   FP8 GEMM memory-bound, best fraction of HBM: paper 0.56, maiac 0.5438, ratio 0.971
#   BF16 ridge point (peak / HBM): paper 169, maiac 168.5, ratio 0.997
#   FP8 ridge point (peak / HBM): paper 674, maiac 674.1, ratio 1.000
#   Qwen2.5-7B decode at 16,384 context, tokens/s (batch 24, nearest): paper 2434, maiac 2471, ratio 1.015
#   Allgather 8 chips / 2 trays, small R: fraction of the latency bound (fitted): paper 0.78, maiac 0.7801, ratio 1.000
#   Allgather 8 chips / 2 trays, R = 1 GiB: fraction of the bandwidth bound (fitted): paper 0.94, maiac 0.94, ratio 1.000
#   launch_latency_s keeping the 113.5 MiB row within 10 %: 1.30-1.61 us

FIT: dict[str, float] = {
    "hbm_efficiency": 0.57,
    "dma_latency_s": 1.5e-07,
    "noc_bw": 80000000000000.0,
    "launch_latency_s": 1.45e-06,
}

FIT_ROWS: dict[str, str] = {
    "hbm_efficiency": "the BF16/FP8 memory-bound GEMM peaks (51.4 %, 56 % of HBM) and the BF16 '> 90 % of peak above 58 TFLOP' (near-ridge GEMMs)",
    "dma_latency_s": "BF16 memory-bound GEMM: > 50 % of HBM only past 113.5 MiB operands",
    "noc_bw": "BF16/FP8 compute-bound GEMM peaks (99.69 %, 96 %)",
    "launch_latency_s": "BF16 memory-bound GEMM: > 50 % of HBM only past 113.5 MiB operands (with dma_latency_s; a fixed cost per program weighs most on the shortest programs)",
}
