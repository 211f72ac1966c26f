#!/usr/bin/env python3
"""PyTorch + diffusers side by side with inkdrop's UNet and VAE, on this machine, in one run.

Times diffusers' UNet2DConditionModel for the same two configs and the same three measurements
as `examples/bench_unet.rs` (forward at batch 2, forward + backward at batch 2, a training step
with gradient clipping and AdamW at batch 32 / 64), and diffusers' AutoencoderKL of the shipped
VAE's config as `examples/bench_vae.rs` does (encoding one picture, decoding one latent, and
`inkdrop train vae`'s training step at batch 32: encode, sample z, decode, MSE + 1e-6 KL,
backward, clipping, AdamW), on 2 threads, then runs inkdrop's benchmarks and prints both
medians and the ratio (inkdrop time / PyTorch time; below 1 means inkdrop is faster). On a
shared machine the speed drifts by tens of percent within minutes, so the two are measured in
alternation, `--rounds` times (which goes first alternates too); the table gives the median over
the rounds of each side's medians, the median of the rounds' own ratios (a round measures one
config's two sides back to back, so slow drift cancels in their ratio), and the range of those
ratios.

    python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch diffusers
    /tmp/torchenv/bin/python benches/torch_unet.py [--reps 7] [--threads 2] [--rounds 3]
    /tmp/torchenv/bin/python benches/torch_unet.py --markdown book/src/measured/unet_vs_pytorch.md

Not part of the tests: PyTorch is a 5.5 GB install and timings are never asserted.
"""
import argparse, json, os, statistics, subprocess, sys, time

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

CONFIGS = {
    # name: (sample_size, block_out_channels, cross_attention_dim, training-step batch)
    "reference": (16, (32, 64), 64, 32),
    "shipped": (8, (64, 128), 128, 64),
}
# and "vae": the shipped VAE (`bench_torch_vae`)


def median_ms(reps, f):
    f()  # warm-up
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def bench_torch(name, reps):
    size, channels, ctx_dim, step_batch = CONFIGS[name]
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=size, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * 2,
        up_block_types=("CrossAttnUpBlock2D",) * 2,
        block_out_channels=channels, layers_per_block=1,
        cross_attention_dim=ctx_dim, attention_head_dim=8, norm_num_groups=32)
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)

    def inputs(b):
        return (torch.randn(b, 4, size, size), torch.arange(b) * 37 % 1000,
                torch.randn(b, 16, ctx_dim), torch.randn(b, 4, size, size))

    x, t, c, y = inputs(2)
    out = {}
    with torch.no_grad():
        out["forward"] = median_ms(reps, lambda: unet(x, t, encoder_hidden_states=c))

    def fwd_bwd():
        unet.zero_grad(set_to_none=True)
        ((unet(x, t, encoder_hidden_states=c).sample - y) ** 2).mean().backward()

    out["forward + backward"] = median_ms(reps, fwd_bwd)
    xb, tb, cb, yb = inputs(step_batch)

    def step():
        opt.zero_grad(set_to_none=True)
        ((unet(xb, tb, encoder_hidden_states=cb).sample - yb) ** 2).mean().backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()

    out["training step (+ AdamW)"] = median_ms(reps, step)
    return out


def bench_torch_vae(reps, batch=32):
    """The shipped VAE's config (`data/README.md`): 32x32x3 -> 4x8x8, 954,567 parameters."""
    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(32, 64, 64),
        layers_per_block=1, latent_channels=4, norm_num_groups=32, sample_size=32)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-4)
    one, z = torch.randn(1, 3, 32, 32), torch.randn(1, 4, 8, 8)
    x = torch.randn(batch, 3, 32, 32)
    out = {}
    with torch.no_grad():
        out["encode"] = median_ms(reps, lambda: vae.encode(one))
        out["decode"] = median_ms(reps, lambda: vae.decode(z))

    def step():
        opt.zero_grad(set_to_none=True)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        (((recon - x) ** 2).mean() + 1e-6 * posterior.kl().mean()).backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()

    out["training step (+ AdamW)"] = median_ms(reps, step)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=7, help="repetitions per measurement (median)")
    ap.add_argument("--threads", type=int, default=2, help="threads for both (this machine: 2)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="rounds of PyTorch and inkdrop in alternation (medians over rounds)")
    ap.add_argument("--inkdrop", default=None,
                    help="bench_unet binary (default: build it with cargo)")
    ap.add_argument("--inkdrop-vae", default=None,
                    help="bench_vae binary (default: build it with cargo)")
    ap.add_argument("--markdown", default=None,
                    help="also write the table as Markdown here (the book's performance appendix)")
    args = ap.parse_args()
    if args.rounds < 1 or args.reps < 1:
        ap.error("--rounds and --reps must be at least 1")
    torch.set_num_threads(args.threads)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    def example(binary, name):
        return [binary] if binary else ["cargo", "run", "--release", "--quiet", "--example", name,
                                        "--"]

    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))

    def bench_ours(name):
        cmd = (example(args.inkdrop_vae, "bench_vae") if name == "vae" else
               example(args.inkdrop, "bench_unet") + ["--only", name])
        run = subprocess.run(cmd + ["--reps", str(args.reps), "--json"], cwd=root,
                             env=env, check=True, capture_output=True, text=True)
        return {(r["config"], r["what"]): (r["batch"], r["median_ms"]) for r in json.loads(run.stdout)}

    def bench_theirs(name):
        out = bench_torch_vae(args.reps) if name == "vae" else bench_torch(name, args.reps)
        return {(name, what): ms for what, ms in out.items()}

    rounds = []  # (ours, theirs) per round
    for r in range(args.rounds):
        ours, theirs = {}, {}
        for name in [*CONFIGS, "vae"]:
            # Each config's two sides back to back, the order alternating from round to round.
            if r % 2 == 0:
                ours.update(bench_ours(name))
                theirs.update(bench_theirs(name))
            else:
                theirs.update(bench_theirs(name))
                ours.update(bench_ours(name))
        rounds.append((ours, theirs))
        print(f"round {r + 1} of {args.rounds} done", file=sys.stderr)
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                if l.startswith("model name")), "unknown CPU")
    flags = next((l for l in open("/proc/cpuinfo") if l.startswith("flags")), "")
    simd = "AVX-512" if " avx512f" in flags else "AVX2" if " avx2" in flags else "no AVX2"
    header = (f"{cpu} ({simd}), {args.threads} threads; PyTorch {torch.__version__} with "
              f"diffusers {__import__('diffusers').__version__}; medians of {args.reps}, "
              f"{args.rounds} rounds in alternation; {time.strftime('%Y-%m-%d')}")
    print(header)
    print(f"{'config':>10} {'what':>24} {'batch':>5} {'PyTorch ms':>11} {'inkdrop ms':>11} "
          f"{'ratio':>6} {'rounds':>11}")
    md = [f"Measured on {header}.", "",
          "| config | what | batch | PyTorch ms | inkdrop ms | inkdrop / PyTorch | rounds |",
          "|---|---|---:|---:|---:|---:|---:|"]
    for key in rounds[0][0]:
        name, what = key
        batch = rounds[0][0][key][0]
        ours_ms = statistics.median(o[key][1] for o, _ in rounds)
        theirs_ms = statistics.median(t[key] for _, t in rounds)
        per_round = [o[key][1] / t[key] for o, t in rounds]
        ratio = statistics.median(per_round)
        spread = f"{min(per_round):.2f}-{max(per_round):.2f}"
        print(f"{name:>10} {what:>24} {batch:>5} {theirs_ms:>11.1f} {ours_ms:>11.1f} "
              f"{ratio:>6.2f} {spread:>11}")
        md.append(f"| {name} | {what} | {batch} | {theirs_ms:.1f} | {ours_ms:.1f} | "
                  f"{ratio:.2f} | {spread} |")
    if args.markdown:
        os.makedirs(os.path.dirname(os.path.abspath(args.markdown)), exist_ok=True)
        tmp = args.markdown + ".tmp"
        with open(tmp, "w") as f:
            f.write("\n".join(md) + "\n")
        os.replace(tmp, args.markdown)
        print(f"wrote {args.markdown}")


if __name__ == "__main__":
    sys.exit(main())
