#!/usr/bin/env python3
"""Refresh-ahead benchmark (issue 19): a hot set read at a steady rate through two pgmemo
instances on one PostgreSQL, both with `ttl = "2s"` on `pgbench_accounts`, one of them with
`refresh_ahead = 0.5`, interleaved.

Starts a throwaway PostgreSQL (the stack's settings; pgbench scale 10) and the two pgmemo
instances (this tree's release build; change data capture off: nothing writes). Per rep and
target, `pgbench -M prepared -R RATE -c CLIENTS -T DURATION -f hot.sql` (200 hot keys, read
uniformly at random: about RATE/200 reads per key and second). Reported per target: the hit
ratio over the run (pgmemo_cache_hits_total / lookups; a lookup that waits for a fill or
refresh in flight counts as a miss), misses, refreshes by result and wasted refreshes, TPS and latency.

Standard library only; writes bench/out/ahead-<time>.json and prints a markdown summary.
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

HOT = ["-f", str(REPO / "bench" / "workloads" / "hot.sql")]
RULE = '[[rules]]\ntable = "pgbench_accounts"\nttl = "2s"\n'
TARGETS = {"ttl": RULE, "refresh_ahead": RULE + "refresh_ahead = 0.5\n"}
COUNTERS = ("pgmemo_cache_hits_total", "pgmemo_cache_misses_total")


def counters(admin):
    text = metrics(admin)
    out = {name: metric(text, name) for name in COUNTERS}
    for result in ("stored", "failed", "busy", "queue_full", "fingerprint", "no_login"):
        out[f"refresh_{result}"] = metric(text, "pgmemo_refresh_total", cause="ahead",
                                          result=result)
    out["wasted"] = metric(text, "pgmemo_refresh_wasted_total", cause="ahead")
    return out


def one_run(st, target, admin, args):
    before = counters(admin)
    rec = pgbench(st, st.ports[target], HOT, "prepared", args.clients, args.duration, args.rate)
    after = counters(admin)
    delta = {k: after[k] - before[k] for k in after}
    hits, misses = delta["pgmemo_cache_hits_total"], delta["pgmemo_cache_misses_total"]
    rec.update(delta)
    rec["hit_ratio"] = hits / (hits + misses) if hits + misses > 0 else None
    return rec


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=int, default=60)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--rate", type=int, default=2000)
    ap.add_argument("--pg-bin")
    ap.add_argument("--out", default=str(REPO / "bench" / "out"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    st = Stack(argparse.Namespace(upstream_via="tcp"), find_pg_bin(args.pg_bin), out)
    result = {"started": datetime.datetime.now().isoformat(timespec="seconds"),
              "args": vars(args), "runs": {t: [] for t in TARGETS}}
    try:
        st.start_postgres()
        result["postgres"] = st.configs["postgres"]
        admins = {t: start_pgmemo(st, t, "off", rest=rule)[0] for t, rule in TARGETS.items()}
        names = list(TARGETS)
        for rep in range(args.reps):
            for t in (names if rep % 2 == 0 else names[::-1]):
                rec = one_run(st, t, admins[t], args)
                result["runs"][t].append(rec)
                log(f"rep {rep + 1} {t}: hits {rec['hit_ratio']}, misses "
                    f"{rec['pgmemo_cache_misses_total']:.0f}, refreshes stored "
                    f"{rec['refresh_stored']:.0f}, wasted {rec['wasted']:.0f}, "
                    f"{rec['tps']:.0f} TPS")
    finally:
        st.close()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    (out / f"ahead-{stamp}.json").write_text(json.dumps(result, indent=2))
    print("| rule | hits (median) | hits (worst rep) | misses / run | refreshes / run | "
          "wasted / run | TPS |")
    print("|---|---|---|---|---|---|---|")
    for t, runs in result["runs"].items():
        def med(key):
            vals = [r[key] for r in runs if r.get(key) is not None]
            return statistics.median(vals) if vals else float("nan")
        worst = min((r["hit_ratio"] for r in runs if r.get("hit_ratio") is not None),
                    default=float("nan"))
        print(f"| {t} | {100 * med('hit_ratio'):.2f} % | {100 * worst:.2f} % | "
              f"{med('pgmemo_cache_misses_total'):.0f} | {med('refresh_stored'):.0f} | "
              f"{med('wasted'):.0f} | {med('tps'):.0f} |")


if __name__ == "__main__":
    main()
