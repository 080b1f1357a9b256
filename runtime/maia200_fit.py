"""Fitted parameters of the ``maia200`` target (written by ``bench/fit_paper.py``; do not
edit by hand: rerun the fit). Each value was chosen so maiac's model of the experiments
of arXiv 2608.24664 reproduces the published table (bench/paper.py); ``FIT_ROWS`` names
the rows each one was fitted to."""

# python bench/fit_paper.py --recompile --joint --grid hbm_efficiency=0.55 --grid dma_latency_s=1.5e-7 --grid noc_bw=8e13 --write (2026-12-02):
#   BF16 GEMM compute-bound, best fraction of peak: paper 0.9969, maiac 0.991, ratio 0.994
#   BF16 GEMM: GEMM FLOPs above which every compute-bound shape > 90 %: paper 5.8e+13, maiac 5.532e+13, ratio 0.954
#   BF16 GEMM memory-bound, best fraction of HBM: paper 0.514, maiac 0.5361, ratio 1.043
#   BF16 GEMM: operand bytes below which no memory-bound shape > 50 % of HBM: paper 1.19e+08, maiac 1.251e+08, ratio 1.051
#   FP8 GEMM compute-bound, best fraction of peak: paper 0.96, maiac 0.9384, ratio 0.977
#   FP8 GEMM memory-bound, best fraction of HBM: paper 0.56, maiac 0.5373, ratio 0.959
#   BF16 ridge point (peak / HBM): paper 169, maiac 168.5, ratio 0.997
#   FP8 ridge point (peak / HBM): paper 674, maiac 674.1, ratio 1.000
#   Qwen2.5-7B decode at 16,384 context, tokens/s (batch 24, nearest): paper 2434, maiac 2417, ratio 0.993
#   Allgather 8 chips / 2 trays, small R: fraction of the latency bound (fitted): paper 0.78, maiac 0.7801, ratio 1.000
#   Allgather 8 chips / 2 trays, R = 1 GiB: fraction of the bandwidth bound (fitted): paper 0.94, maiac 0.94, ratio 1.000

FIT: dict[str, float] = {
    "hbm_efficiency": 0.55,
    "dma_latency_s": 1.5e-07,
    "noc_bw": 80000000000000.0,
    "launch_latency_s": 0.0,
}

FIT_ROWS: dict[str, str] = {
    "hbm_efficiency": "the BF16/FP8 memory-bound GEMM peaks (51.4 %, 56 % of HBM) and the BF16 '> 90 % of peak above 58 TFLOP' (near-ridge GEMMs)",
    "dma_latency_s": "BF16 memory-bound GEMM: > 50 % of HBM only past 113.5 MiB operands",
    "noc_bw": "BF16/FP8 compute-bound GEMM peaks (99.69 %, 96 %)",
    "launch_latency_s": "BF16 memory-bound GEMM: > 50 % of HBM only past 113.5 MiB operands",
}
