#!/usr/bin/env python3
"""Query statistics cost (issue 21): point lookups through two pgmemo instances of the same
binary on one PostgreSQL, one with `admin.query_stats = true` (the default) and one with
`admin.query_stats = false`, interleaved.

Starts a throwaway PostgreSQL (the stack's settings, pgbench scale 10, change data capture
off) and the two instances. Per -M mode, after one warm-up run per target (which also fills
the cache), --reps repetitions of `pgbench -c CLIENTS -f point.sql`, the order of the two
targets alternating between repetitions. Reports the median TPS of each and the ratio on/off
per mode, the acceptance being >= 0.97 (see the README, "Observability / admin API").

Standard library only; writes bench/out/stats-<time>.json and prints a markdown summary.
"""

import argparse
import datetime
import json
import statistics
import sys
from pathlib import Path

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
from cdc import metric, metrics, pgbench, start_pgmemo  # noqa: E402
from stack import REPO, Stack, find_pg_bin, log  # noqa: E402

POINT = ["-f", str(REPO / "bench" / "workloads" / "point.sql")]
CONFIGS = {"stats_on": "[admin]\nquery_stats = true\n",
           "stats_off": "[admin]\nquery_stats = false\n"}
TARGETS = tuple(CONFIGS)
ACCEPT = 0.97


def one_run(st, target, admin, mode, clients, duration):
    text = metrics(admin)
    hits = metric(text, "pgmemo_cache_hits_total")
    rec = pgbench(st, st.ports[target], POINT, mode, clients, duration)
    rec["hits"] = metric(metrics(admin), "pgmemo_cache_hits_total") - hits
    return rec


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--modes", default="simple,prepared")
    ap.add_argument("--pgmemo-bin", help="the pgmemo binary (default target/release/pgmemo)")
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
        admins = {t: start_pgmemo(st, t, "off", rest=CONFIGS[t], exe=args.pgmemo_bin)[0]
                  for t in TARGETS}
        for mode in args.modes.split(","):
            cell = {t: [] for t in TARGETS}
            for t in TARGETS:
                one_run(st, t, admins[t], mode, args.clients, 5)  # warm-up, fills the cache
            for rep in range(args.reps):
                for t in (TARGETS if rep % 2 == 0 else TARGETS[::-1]):
                    rec = one_run(st, t, admins[t], mode, args.clients, args.duration)
                    cell[t].append(rec)
                    log(f"{mode} rep {rep + 1} {t}: {rec['tps']:.0f} TPS, {rec['hits']:.0f} hits")
            result["cells"][mode] = cell
    finally:
        st.close()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    (out / f"stats-{stamp}.json").write_text(json.dumps(result, indent=2))
    print("| mode | stats on TPS | stats off TPS | on / off | reps |")
    print("|---|---|---|---|---|")
    ok = True
    for mode, cell in result["cells"].items():
        on = statistics.median(r["tps"] for r in cell["stats_on"])
        off = statistics.median(r["tps"] for r in cell["stats_off"])
        ok &= on / off >= ACCEPT
        print(f"| -M {mode} | {on:.0f} | {off:.0f} | {on / off:.3f} | {args.reps} |")
    print(f"\nacceptance (on / off >= {ACCEPT}): {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
