#!/usr/bin/env python3
"""PyTorch eager forward+backward of bevkd's benchmark cases, for the "x PyTorch eager" ratios in bench/RESULTS.md.

SPDX-License-Identifier: Apache-2.0

The same sizes as bench/losses.cpp and bench/losses_cuda.cu (B = 2, P = 200 x 200, C in {10, 64, 256};
the BEVFormer-base attention cases N = 40000, H = 8, K = 32 with S = 2 per-source rows and S = 6 joint rows
over about two hit cameras), fp32 and bf16 inputs, reduction mean, temperature 1. Each iteration builds the
loss from leaf tensors and calls backward() for the student's gradient, the way a trainer does; like the CUDA
benchmarks, it flushes the L2 cache outside the timed region and times one iteration with CUDA events (or a
host clock on the CPU). Prints one line per case and writes JSON with --out.

Usage: python3 bench/torch_eager.py [--device cuda|cpu] [--threads N] [--iters N] [--filter SUBSTRING] [--out F]
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

B, P = 2, 200 * 200
N, H, K = 40000, 8, 32


def kl_softmax(s, t):
    return F.kl_div(F.log_softmax(s.float(), -1), F.log_softmax(t.float(), -1), reduction="batchmean",
                    log_target=True)


def kl_sigmoid(s, t):
    pt = torch.sigmoid(t.float())
    ls, lt = F.logsigmoid(s.float()), F.logsigmoid(t.float())
    l1s, l1t = F.logsigmoid(-s.float()), F.logsigmoid(-t.float())
    return (pt * (lt - ls) + (1 - pt) * (l1t - l1s)).sum(-1).mean()


def kl_spatial(s, t):
    # channel-wise: a softmax over the P pillars of each (b, c) map, the [B, P, C] NHWC buffer read as it is
    return F.kl_div(F.log_softmax(s.float(), 1), F.log_softmax(t.float(), 1), reduction="sum",
                    log_target=True) / (s.shape[0] * s.shape[2])


def mse(s, t):
    return F.mse_loss(s.float(), t.float(), reduction="mean")


def mse_l2(s, t):
    return F.mse_loss(F.normalize(s.float(), dim=-1), F.normalize(t.float(), dim=-1), reduction="sum") / (
        s.shape[0] * s.shape[1])


def attention_tsa(s, t):
    s4, t4 = s.view(N, H, 2, K), t.view(N, H, 2, K)
    return F.kl_div(F.log_softmax(s4.float(), -1), F.log_softmax(t4.float(), -1), reduction="sum",
                    log_target=True) / (N * H * 2)


def attention_sca(hits):
    def loss(s, t):
        keep = hits.view(N, 1, 6, 1).expand(N, H, 6, K).reshape(N, H, 6 * K)
        s3 = s.view(N, H, 6 * K).float().masked_fill(~keep, float("-inf"))
        t3 = t.view(N, H, 6 * K).float().masked_fill(~keep, float("-inf"))
        ls, lt = F.log_softmax(s3, -1), F.log_softmax(t3, -1)
        terms = torch.where(keep, lt.exp() * (lt - ls), torch.zeros((), device=s.device))
        return terms.sum() / (N * H)
    return loss


def camera_hits(device):
    # one to three adjacent hit cameras per query (about two on average), as bench_common.hpp draws them
    g = torch.Generator().manual_seed(7)
    views = torch.randint(1, 4, (N,), generator=g)
    first = torch.randint(0, 6, (N,), generator=g)
    cam = torch.arange(6).view(1, 6)
    offset = (cam - first.view(N, 1)) % 6
    return (offset < views.view(N, 1)).to(device)


def cases(device):
    for dtype in (torch.float32, torch.bfloat16):
        name = "f32" if dtype == torch.float32 else "bf16"
        for c in (10, 64, 256):
            for label, fn in (("kl_softmax", kl_softmax), ("kl_sigmoid", kl_sigmoid), ("kl_spatial", kl_spatial),
                              ("mse", mse), ("mse_l2", mse_l2)):
                yield f"{label}/{name}/C:{c}", dtype, (B, P, c), fn
        yield f"attention_kl/{name}/C:256", dtype, (B, P, 256), attention_tsa
        yield f"attention_sca/{name}/C:768", dtype, (B, P, 768), attention_sca(camera_hits(device))


def time_case(shape, dtype, fn, device, iters):
    s = torch.randn(shape, device=device, dtype=dtype).mul_(3).requires_grad_()
    t = torch.randn(shape, device=device, dtype=dtype).mul_(3)
    flush = torch.empty(256 << 20, dtype=torch.uint8, device=device) if device == "cuda" else None
    times = []
    for i in range(iters + 3):
        s.grad = None
        if flush is not None:
            flush.zero_()
            torch.cuda.synchronize()
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(s, t).backward()
            stop.record()
            stop.synchronize()
            elapsed = start.elapsed_time(stop)
        else:
            begin = time.perf_counter()
            fn(s, t).backward()
            elapsed = (time.perf_counter() - begin) * 1e3
        if i >= 3:  # warm-up: allocator and kernel caches
            times.append(elapsed)
    return statistics.median(times), min(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads on the CPU (0: leave)")
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--filter", default="")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    what = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__} on {what}")
    results = []
    for name, dtype, shape, fn in cases(args.device):
        if args.filter not in name:
            continue
        median, best = time_case(shape, dtype, fn, args.device, args.iters)
        results.append({"name": name, "median_ms": median, "min_ms": best})
        print(f"{name:28s} median {median:9.4f} ms   min {best:9.4f} ms", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"torch": torch.__version__, "device": what, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
