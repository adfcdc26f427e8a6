#!/usr/bin/env python3
"""Write-through benchmark (issue 19): the 90/10 point/update mix through two pgmemo
instances on one PostgreSQL, one with the default write policy (invalidate) and one with
`[[rules]] table = "pgbench_accounts" write = "through"`, interleaved.

Starts a throwaway PostgreSQL (the stack's settings: synchronous_commit on, wal_level replica,
so change data capture is off and every write goes through pgmemo) with pgbench scale 10, and
the two pgmemo instances (this tree's release build). Per -M mode, after one warm-up run per
target, --reps interleaved repetitions of `pgbench -c CLIENTS -f point.sql@9 -f update.sql@1`
with a per-transaction log (-l). Reported per target (medians): TPS, the hit ratio over the
run (pgmemo_cache_hits_total / lookups), and the latency of the UPDATE script's transactions
(p50 and p99 over each run's log), so the write latency the re-runs add is visible.

Standard library only; writes bench/out/through-<time>.json and prints a markdown summary.
"""

import argparse
import datetime
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
from cdc import metric, metrics, start_pgmemo  # noqa: E402
from run import parse_pgbench  # noqa: E402
from stack import REPO, Stack, client_env, find_pg_bin, log  # noqa: E402

WORKLOADS = REPO / "bench" / "workloads"
MIXED = ["-f", f"{WORKLOADS / 'point.sql'}@9", "-f", f"{WORKLOADS / 'update.sql'}@1"]
THROUGH = '[[rules]]\ntable = "pgbench_accounts"\nwrite = "through"\n'
TARGETS = ("invalidate", "through")


def percentile(values, q):
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def one_run(st, target, admin, mode, clients, duration):
    """One mixed run with a transaction log; returns its record."""
    text = metrics(admin)
    before = metric(text, "pgmemo_cache_hits_total"), metric(text, "pgmemo_cache_misses_total")
    with tempfile.TemporaryDirectory() as logs:
        argv = [str(st.pg_bin / "pgbench"), "-n", "-h", "127.0.0.1", "-p", str(st.ports[target]),
                "-U", "postgres", "-c", str(clients), "-j", str(min(clients, 2)),
                "-T", str(duration), "-M", mode, "-l", "--log-prefix", f"{logs}/tx"] \
            + MIXED + ["postgres"]
        r = subprocess.run(argv, capture_output=True, text=True, env=client_env(),
                           timeout=duration * 3 + 60)
        rec = parse_pgbench(r.stdout + r.stderr)
        if r.returncode != 0 or rec.get("tps") is None:
            raise RuntimeError(f"pgbench failed: {(r.stdout + r.stderr)[-400:]}")
        # Log lines: client transaction latency_us script_no epoch_s epoch_us; script 1 is
        # update.sql (the second -f).
        updates = []
        for f in Path(logs).iterdir():
            for line in f.read_text().splitlines():
                parts = line.split()
                if len(parts) >= 4 and parts[3] == "1":
                    updates.append(int(parts[2]))
    text = metrics(admin)
    after = metric(text, "pgmemo_cache_hits_total"), metric(text, "pgmemo_cache_misses_total")
    looked = (after[0] - before[0]) + (after[1] - before[1])
    return {"tps": rec["tps"], "command": " ".join(argv),
            "hit_ratio": (after[0] - before[0]) / looked if looked > 0 else None,
            "update_p50_ms": percentile(updates, 0.5) / 1000 if updates else None,
            "update_p99_ms": percentile(updates, 0.99) / 1000 if updates else None,
            "updates": len(updates),
            "write_through": {k: metric(text, "pgmemo_write_through_total", result=k)
                              for k in ("stored", "failed", "other_session", "busy",
                                        "plan_stale")}}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--modes", default="prepared,simple")
    ap.add_argument("--pg-bin")
    ap.add_argument("--out", default=str(REPO / "bench" / "out"))
    args = ap.parse_args()
    out = Path(args.out)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    st = Stack(argparse.Namespace(upstream_via="tcp"), find_pg_bin(args.pg_bin), out)
    result = {"started": datetime.datetime.now().isoformat(timespec="seconds"),
              "args": vars(args), "cells": {}}
    try:
        st.start_postgres()
        result["postgres"] = st.configs["postgres"]
        admins = {"invalidate": start_pgmemo(st, "invalidate", "off")[0],
                  "through": start_pgmemo(st, "through", "off", rest=THROUGH)[0]}
        for mode in args.modes.split(","):
            cell = {t: [] for t in TARGETS}
            for t in TARGETS:
                one_run(st, t, admins[t], mode, args.clients, 5)  # warm-up
            for rep in range(args.reps):
                for t in (TARGETS if rep % 2 == 0 else TARGETS[::-1]):
                    rec = one_run(st, t, admins[t], mode, args.clients, args.duration)
                    cell[t].append(rec)
                    log(f"{mode} rep {rep + 1} {t}: {rec['tps']:.0f} TPS, hits "
                        f"{rec['hit_ratio']}, UPDATE p50 {rec['update_p50_ms']} ms "
                        f"p99 {rec['update_p99_ms']} ms")
            result["cells"][mode] = cell
    finally:
        for t in TARGETS:
            src = st.tmp / f"{t}.log"
            if src.exists():
                (out / "logs" / f"through-{t}.log").write_bytes(src.read_bytes()[-(1 << 20):])
        st.close()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    (out / f"through-{stamp}.json").write_text(json.dumps(result, indent=2))
    print("| mode | policy | TPS | hits | UPDATE p50 ms | UPDATE p99 ms |")
    print("|---|---|---|---|---|---|")
    for mode, cell in result["cells"].items():
        for t in TARGETS:
            runs = cell[t]

            def med(key):
                vals = [r[key] for r in runs if r.get(key) is not None]
                return statistics.median(vals) if vals else float("nan")
            print(f"| -M {mode} | {t} | {med('tps'):.0f} | {100 * med('hit_ratio'):.1f} % | "
                  f"{med('update_p50_ms'):.2f} | {med('update_p99_ms'):.2f} |")


if __name__ == "__main__":
    main()
