#!/usr/bin/env bash
# Prints what decides the exact floating-point results of the figure generation on this machine:
# the CPU model, the SIMD level the matrix-product kernels pick at run time (AVX-512 or AVX2),
# the cache sizes they block their loops by, and the thread count. Two machines with the same
# signature produce the same bytes; machines that differ can differ in the last bits, and a
# training run in a chapter then takes another path.
set -euo pipefail
model=$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || true)
flags=$(grep -m1 '^flags' /proc/cpuinfo || true)
simd=none
case "$flags" in *" avx2 "*) simd=avx2 ;; esac
case "$flags" in *" avx512f "*) simd=avx512 ;; esac
caches=$(cat /sys/devices/system/cpu/cpu0/cache/index*/size 2>/dev/null | tr '\n' ' ' | sed 's/ $//')
echo "cpu: ${model:-unknown}; simd: $simd; caches: ${caches:-unknown}; threads: $(nproc)"
