#!/usr/bin/env bash
# Regenerates every figure and table the book shows by running each chapter with --book.
# Usage: bash book/generate.sh   (from anywhere; builds in release first)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bins
for bin in ch01_forward_noising ch02_noise_prediction ch03_reverse_sampling ch04_clip_similarity ch05_cross_attention ch06_latent_space ch07_text_to_image; do
  echo "== $bin --book"
  "target/release/$bin" --book > /dev/null
done
# Which machine made these bytes (see cpu_signature.sh): CI compares byte for byte only on the same.
bash book/cpu_signature.sh > book/src/generated/machine.txt
echo "figures and tables written to book/src/generated/ ($(cat book/src/generated/machine.txt))"
