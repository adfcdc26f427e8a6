#!/usr/bin/env python3
"""Row-level invalidation benchmark (issue 18), the cell `run.py` cannot express: point reads
through a target while the updates of the same hot set go straight to PostgreSQL, so pgmemo
only learns of them through change data capture.

Starts a throwaway PostgreSQL (wal_level = logical; the stack's settings, synchronous_commit
on) with pgbench scale 10 and pgmemo (invalidation.cdc = "on", the default test_decoding
stream; --publication follows a publication with pgoutput instead). Then, per -M mode:

1. Calibration: the 90/10 mix (point.sql@9 + update.sql@1, --clients clients) directly on
   PostgreSQL for --duration seconds; the write rate R is a tenth of its TPS: the updates a
   90/10 application sends.
2. --reps interleaved repetitions (direct, pgmemo; then pgmemo, direct; ...) of --duration
   seconds, after one warm-up per target: readers `pgbench -c CLIENTS -f point.sql` against
   the target, and at the same time a writer `pgbench -c 2 -R R -f update.sql` straight to
   PostgreSQL. Reported: read TPS, write TPS, their sum, pgmemo ÷ direct on the sum (medians),
   and pgmemo's hit ratio over each run (pgmemo_cache_hits_total / lookups).

Standard library only; writes bench/out/rows-<time>.json and prints a markdown summary.
"""

import argparse
import datetime
import json
import statistics
import sys
import threading
import time
from pathlib import Path

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
import stack as stackmod  # noqa: E402
from cdc import metric, metrics, pgbench, start_pgmemo  # noqa: E402
from stack import REPO, Stack, find_pg_bin, log  # noqa: E402

WORKLOADS = REPO / "bench" / "workloads"
POINT = ["-f", str(WORKLOADS / "point.sql")]
UPDATE = ["-f", str(WORKLOADS / "update.sql")]
MIXED = ["-f", f"{WORKLOADS / 'point.sql'}@9", "-f", f"{WORKLOADS / 'update.sql'}@1"]


def hits(admin):
    text = metrics(admin)
    return metric(text, "pgmemo_cache_hits_total"), metric(text, "pgmemo_cache_misses_total")


def one_run(st, target, admin, mode, clients, duration, rate):
    """Readers on `target`, the writer directly; returns the record."""
    before = hits(admin)
    box = {}
    writer = threading.Thread(target=lambda: box.setdefault(
        "w", pgbench(st, st.ports["direct"], UPDATE, mode, 2, duration, rate)))
    writer.start()
    reads = pgbench(st, st.ports[target], POINT, mode, clients, duration)
    writer.join()
    after = hits(admin)
    looked = (after[0] - before[0]) + (after[1] - before[1])
    rec = {"read_tps": reads["tps"], "write_tps": box["w"]["tps"],
           "read_command": reads["command"], "write_command": box["w"]["command"]}
    rec["tps"] = rec["read_tps"] + rec["write_tps"]
    if target != "direct":
        rec["hit_ratio"] = (after[0] - before[0]) / looked if looked > 0 else None
    return rec


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--modes", default="prepared,simple")
    ap.add_argument("--pg-bin")
    ap.add_argument("--publication", action="store_true",
                    help="follow a publication with pgoutput instead of test_decoding")
    ap.add_argument("--out", default=str(REPO / "bench" / "out"))
    args = ap.parse_args()
    out = Path(args.out)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    stackmod.PG_SETTINGS.update({"wal_level": "logical", "max_wal_senders": "10",
                                 "max_replication_slots": "10"})
    st = Stack(argparse.Namespace(upstream_via="tcp"), find_pg_bin(args.pg_bin), out)
    result = {"started": datetime.datetime.now().isoformat(timespec="seconds"),
              "args": vars(args), "cells": {}}
    try:
        st.start_postgres()
        result["postgres"] = st.configs["postgres"]
        if args.publication:
            st.psql(st.ports["direct"], "CREATE PUBLICATION bench FOR TABLE pgbench_accounts, "
                                        "pgbench_branches, pgbench_tellers")
        admin, _ = start_pgmemo(st, "pgmemo", "on", "bench" if args.publication else None)
        deadline = time.monotonic() + 30
        while metric(metrics(admin), "pgmemo_cdc_state", state="streaming") != 1.0:
            if time.monotonic() > deadline:
                raise RuntimeError("pgmemo's change stream never reached streaming")
            time.sleep(0.2)
        for mode in args.modes.split(","):
            cal = pgbench(st, st.ports["direct"], MIXED, mode, args.clients, args.duration)
            rate = max(1, round(cal["tps"] / 10))
            log(f"{mode}: direct 90/10 {cal['tps']:.0f} TPS -> direct writer at {rate}/s")
            cell = {"calibration_tps": cal["tps"], "write_rate": rate,
                    "runs": {"direct": [], "pgmemo": []}}
            for target in ("direct", "pgmemo"):
                one_run(st, target, admin, mode, args.clients, 5, rate)  # warm-up
            for rep in range(args.reps):
                order = ["direct", "pgmemo"] if rep % 2 == 0 else ["pgmemo", "direct"]
                for target in order:
                    rec = one_run(st, target, admin, mode, args.clients, args.duration, rate)
                    cell["runs"][target].append(rec)
                    log(f"{mode} rep {rep + 1} {target}: {rec['read_tps']:.0f} reads + "
                        f"{rec['write_tps']:.0f} writes/s, hits {rec.get('hit_ratio')}")
            med = {t: statistics.median(r["tps"] for r in runs)
                   for t, runs in cell["runs"].items()}
            cell["median_tps"] = med
            cell["ratio"] = med["pgmemo"] / med["direct"]
            cell["median_hit_ratio"] = statistics.median(
                r["hit_ratio"] for r in cell["runs"]["pgmemo"] if r.get("hit_ratio") is not None)
            result["cells"][mode] = cell
    finally:
        src = st.tmp / "pgmemo.log"
        if src.exists():
            (out / "logs" / "rows-pgmemo.log").write_bytes(src.read_bytes()[-(1 << 20):])
        st.close()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    (out / f"rows-{stamp}.json").write_text(json.dumps(result, indent=2))
    print("| mode | writer rate | direct TPS (reads+writes) | pgmemo TPS | pgmemo ÷ direct | pgmemo hits |")
    print("|---|---|---|---|---|---|")
    for mode, c in result["cells"].items():
        print(f"| -M {mode} | {c['write_rate']}/s | {c['median_tps']['direct']:.0f} | "
              f"{c['median_tps']['pgmemo']:.0f} | {c['ratio']:.2f} | "
              f"{100 * c['median_hit_ratio']:.1f} % |")


if __name__ == "__main__":
    main()
