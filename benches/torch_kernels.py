#!/usr/bin/env python3
"""PyTorch's convolutions and GroupNorm on the shapes of `examples/bench_kernels.rs`, on this
machine: what oneDNN reaches where inkdrop's kernels are measured against the matrix-product
rate.

For each 3x3 convolution of bench_kernels' table (batch 32) it times forward + backward (the
input's gradient included, as a layer inside a network needs it) and prints milliseconds,
GFLOP/s (3 x the direct convolution's 2 * C_out * C_in * 9 multiply-adds per output pixel, as
bench_kernels counts them) and the share of PyTorch's own 1024^3 matrix product; then GroupNorm
(32 groups) forward + backward. Backward passes start from a given output gradient
(`y.backward(dy)`, dy made once), as bench_kernels' do. Medians of `--reps` after two warm-up runs, on `--threads`
threads. Compare with `cargo run --release --example bench_kernels` run just before or after:
this machine's speed drifts.

    python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch diffusers
    /tmp/torchenv/bin/python benches/torch_kernels.py [--reps 9] [--threads 2]

Not part of the tests: PyTorch is a 5.5 GB install and timings are never asserted.
"""
import argparse, statistics, time

import torch

# (C_in, C_out, image side, stride): bench_kernels' 3x3 rows.
CONVS = [
    (3, 32, 32, 1),
    (32, 32, 32, 1),
    (64, 32, 32, 1),
    (32, 32, 32, 2),
    (64, 64, 16, 1),
    (64, 64, 8, 1),
    (128, 128, 8, 1),
    (192, 64, 8, 1),
    (128, 128, 4, 1),
]
# (channels, image side): bench_kernels' GroupNorm rows.
GROUP_NORMS = [(32, 32), (64, 16), (128, 8)]
BATCH = 32


def median_ms(f, reps):
    for _ in range(2):
        f()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=9, help="repetitions per measurement (median)")
    p.add_argument("--threads", type=int, default=2, help="threads (this machine: 2)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    a = torch.randn(1024, 1024)
    sgemm = 2 * 1024**3 / median_ms(lambda: a @ a, 11) / 1e6
    print(f"PyTorch {torch.__version__}, {args.threads} threads; sgemm 1024^3: {sgemm:.0f} GFLOP/s")
    print(f"{'3x3 conv':>16} {'input':>14} {'fwd+bwd ms':>11} {'GFLOP/s':>8} {'of sgemm':>9}")
    for c_in, c_out, size, stride in CONVS:
        x = torch.randn(BATCH, c_in, size, size, requires_grad=True)
        conv = torch.nn.Conv2d(c_in, c_out, 3, stride, 1)
        dy = torch.ones_like(conv(x))  # given, as a layer's gradient arrives in a network

        def step():
            y = conv(x)
            y.backward(dy)

        ms = median_ms(step, args.reps)
        side = size // stride
        flops = 3 * 2 * BATCH * c_out * c_in * 9 * side * side
        rate = flops / ms / 1e6
        name = f"s{stride} {c_in}->{c_out}"
        shape = f"{BATCH}x{c_in}x{size}x{size}"
        print(f"{name:>16} {shape:>14} {ms:11.2f} {rate:8.0f} {rate / sgemm:9.0%}")
    print(f"{'GroupNorm':>16} {'input':>14} {'fwd+bwd ms':>11}")
    for c, size in GROUP_NORMS:
        x = torch.randn(BATCH, c, size, size, requires_grad=True)
        norm = torch.nn.GroupNorm(32, c)
        dy = torch.ones_like(x)

        def step():
            y = norm(x)
            y.backward(dy)

        shape = f"{BATCH}x{c}x{size}x{size}"
        print(f"{'32 groups':>16} {shape:>14} {median_ms(step, args.reps):11.3f}")


if __name__ == "__main__":
    main()
