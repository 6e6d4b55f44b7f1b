#!/usr/bin/env python3
"""bevkd benchmarks: turn Google Benchmark JSON output into the Markdown ratio tables of bench/RESULTS.md.

Usage: bench_losses --benchmark_repetitions=3 --benchmark_report_aggregates_only=true \
           --benchmark_out=out.json --benchmark_out_format=json
       python3 bench/summarize.py [--cpu] out.json [more.json ...]

Uses the min aggregate when repetitions were run (else the single run), and with several files the
fastest of each case across them (runs on a shared VM vary between minutes). For every fused
case it prints time, the byte-floor bandwidth, that bandwidth as a share of the copy
baseline's at the same dtype / C / threads, the naive reference's time over the fused time, and
the exp_floor entry (two exponentials per element, nothing else) as a share of the copy: the most
of the copy bandwidth any exact softmax loss of that size can reach on the machine. The
"<case>_paired" families (a fused call and its copy in turn) get a table of their own: their
pct_of_copy counter, from the min aggregate the lowest of the repetitions (with several files, the
lowest of all), next to the fused and copy times of the same iterations.
--cpu uses the main thread's CPU time instead of wall time: on a machine shared with other
work it is the steadier figure for single-thread rows (it undercounts multi-thread rows).
"""
import json
import sys

# The statistic reported when repetitions were run: "min" (least disturbed by other load) or "median".
STAT = "min"
BATCH, PILLARS = 2, 200 * 200
DTYPE_BYTES = {"f64": 8, "f32": 4, "f16": 2, "bf16": 2}
LOSSES = ["kl_softmax", "kl_sigmoid", "kl_spatial", "mse", "mse_l2", "mse_nchw", "mse_l2_nchw", "attention_kl",
          "attention_sca", "kl_softmax_cold", "attention_kl_cold", "attention_sca_cold"]
# A cold case ("<loss>_cold": caches swept before each iteration) is compared with the copy swept the same way.
COLD = "_cold"
# A paired case ("<loss>_paired": the fused call and the copy in turn) carries its own comparison in counters.
PAIRED = "_paired"


# The resample cases of bench/losses.cpp (resample_benches), by index.
RESAMPLE_CASES = ["area 200x200 -> 50x50, C = 512", "bilinear 50x50 -> 200x200, C = 64"]


def load(paths, field="real_time"):
    runs = {}
    resample = {}
    context = None
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        context = context or data.get("context")
        for b in data["benchmarks"]:
            if b.get("error_occurred"):
                continue
            if b.get("run_type") == "aggregate" and b.get("aggregate_name") != STAT:
                continue
            name = b.get("run_name", b["name"]).replace("/real_time", "").replace("/manual_time", "")
            parts = name.split("/")
            family, dtype = parts[0], parts[1]
            args = dict(p.split(":") for p in parts[2:])
            scale = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}[b.get("time_unit", "ns")]
            ms = b[field] * scale
            if "C" not in args:  # the resample cases: their byte floor is the binary's counter
                key = (family, int(args["case"]), int(args.get("backward", 0)), int(args.get("threads", 0)))
                resample[key] = min(ms, resample.get(key, ms))
                continue
            key = (family, dtype, int(args["C"]), int(args.get("threads", 0)))
            # Bandwidth from the time (a "min" aggregate of the rate counter would be the slowest run).
            floor_bytes = 3 * BATCH * PILLARS * key[2] * DTYPE_BYTES[dtype]
            entry = {"ms": ms, "bw": floor_bytes / (ms * 1e-3), "pct": b.get("pct_of_copy"),
                     "copy_ms": b.get("copy_ms")}
            if family.endswith(PAIRED):  # keep the lowest share: the run that came closest to missing
                if key not in runs or entry["pct"] < runs[key]["pct"]:
                    runs[key] = entry
            elif key not in runs or ms < runs[key]["ms"]:
                runs[key] = entry
    return runs, resample, context


def main():
    args = sys.argv[1:]
    field = "real_time"
    if args and args[0] == "--cpu":
        field = "cpu_time"
        args = args[1:]
    runs, resample, context = load(args, field)
    if context:
        print(f"<!-- {context.get('date')} host={context.get('host_name')} cpus={context.get('num_cpus')} "
              f"mhz={context.get('mhz_per_cpu')} -->")
    configs = sorted({(d, c, t) for (_, d, c, t) in runs}, key=lambda x: (x[0] != "f32", x[1], x[2]))
    for loss in LOSSES:
        rows = []
        for dtype, channels, threads in configs:
            fused = runs.get((loss, dtype, channels, threads))
            if not fused:
                continue
            copy = runs.get(("copy_cold" if loss.endswith(COLD) else "copy", dtype, channels, threads))
            naive = runs.get(("naive_" + loss, dtype, channels, threads))
            share = f"{100 * fused['bw'] / copy['bw']:.1f} %" if copy else "-"
            floor = None if loss.endswith(COLD) else runs.get(("exp_floor", dtype, channels, threads))
            floor_share = f"{100 * floor['bw'] / copy['bw']:.1f} %" if floor and copy else "-"
            speedup = f"{naive['ms'] / fused['ms']:.2f}x" if naive else "-"
            naive_ms = f"{naive['ms']:.2f}" if naive else "-"
            copy_bw = f"{copy['bw'] / 1e9:.1f}" if copy else "-"
            thr = str(threads) if threads else "-"
            rows.append(f"| {dtype} | {channels} | {thr} | {fused['ms']:.2f} | {fused['bw'] / 1e9:.2f} | {copy_bw} "
                        f"| {share} | {naive_ms} | {speedup} | {floor_share} |")
        print_table(loss, ["dtype", "C", "threads", "fused ms", "fused GB/s", "copy GB/s", "% of copy", "naive ms",
                           "speed-up over naive", "exp floor, % of copy"], rows)

    print_paired(runs)
    print_resample(resample)


def print_paired(runs):
    """The paired table: each fused call against the copy timed in turn with it."""
    rows = []
    for (family, dtype, channels, threads), r in sorted(runs.items()):
        if family.endswith(PAIRED):
            rows.append(f"| {family[:-len(PAIRED)]} | {dtype} | {channels} | {threads} | {r['ms']:.2f} "
                        f"| {r['copy_ms']:.2f} | {r['pct']:.1f} % |")
    print_table("paired: fused call and copy in turn",
                ["case", "dtype", "C", "threads", "fused ms", "copy ms", "% of copy (lowest repetition)"], rows)


def print_resample(resample):
    """The resample table: host per-pixel loops against the device's per-element partition and a copy."""
    rows = []
    for (family, case, backward, threads), ms in sorted(resample.items()):
        if family != "resample":
            continue
        naive = resample.get(("naive_resample", case, backward, threads))
        copy = resample.get(("copy_resample", case, 0, threads))
        rows.append(f"| {RESAMPLE_CASES[case]} | {'backward' if backward else 'forward'} | {threads} | {ms:.2f} "
                    f"| {f'{naive:.2f}' if naive else '-'} | {f'{naive / ms:.1f}x' if naive else '-'} "
                    f"| {f'{copy:.2f}' if copy else '-'} | {f'{100 * copy / ms:.1f} %' if copy else '-'} |")
    print_table("resample (fp32, B = 2, NHWC)",
                ["case", "direction", "threads", "ms", "per-element ms", "speed-up", "copy ms", "% of copy"], rows)


def print_table(title, header, rows):
    """A Markdown table under a "###" title, or nothing when there are no rows."""
    if not rows:
        return
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    print("\n".join(rows))


if __name__ == "__main__":
    main()
