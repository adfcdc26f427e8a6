#!/usr/bin/env python3
"""Write-behind benchmark (issue 20): single-row INSERTs and a hot counter, directly on
PostgreSQL and through pgmemo with `write = "behind"` on both queue kinds, interleaved.

Starts a throwaway PostgreSQL (the stack's settings; fsync and synchronous_commit on, as
shipped: both are checked and recorded), a redis-server with AOF and `appendfsync always`,
and two pgmemo (this tree's release build): `behind` with a local journal in the same file
system as the PostgreSQL data directory, `behind-redis` with the queue on a Redis Stream
(`behind.queue = "redis"`; the AOF is in that file system too). Workloads, each
`pgbench -M prepared` with a per-transaction log (-l):
- insert: CLIENTS_INSERT (16) clients, `INSERT INTO bh_events (id, v) VALUES (:id, :v)`;
- counter: CLIENTS_COUNTER (64) clients, `UPDATE bh_counters SET n = n + 1 WHERE id = 1`
  (pgmemo: behind_increments and behind_coalesce).
With --targets including `ceiling`, `ceiling-append`, `ceiling-2w` or `ceiling-4w` (insert
workload only), the ceiling of bench/durable is interleaved too: an instant responder that
answers each INSERT once a record for it is written and fdatasync'd by a group-committing
writer thread (its file preallocated with zeros, or appended to; -2w/-4w: two or four
writers whose fdatasyncs overlap), in the same file system: the least any durable
write-behind queue must do on this machine (built with cargo unless --no-build).
After one warm-up run per target, --reps interleaved repetitions. Reported per workload and
target (medians over reps): TPS, acknowledgement latency p50/p99 (from the logs), and for
pgmemo the flush lag (acknowledgement to commit in PostgreSQL) p50/p99 from
pgmemo_behind_lag_seconds over each run. Before each run pgmemo's queue is drained, and
after the last the counter is checked against the increments acknowledged.

Standard library only; writes bench/out/behind-<time>.json and prints a markdown summary.
"""

import argparse
import datetime
import json
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
from cdc import metric, metrics, start_pgmemo  # noqa: E402
from l2 import SECRET, start_redis  # noqa: E402
from run import parse_pgbench  # noqa: E402
import stack as stackmod  # noqa: E402
from stack import Stack, REPO, client_env, find_pg_bin, log  # noqa: E402

SETUP = """
CREATE TABLE bh_events (id bigint NOT NULL, v int NOT NULL);
CREATE TABLE bh_counters (id int PRIMARY KEY, n bigint NOT NULL);
INSERT INTO bh_counters VALUES (1, 0);
"""
SCRIPTS = {
    "insert": "\\set id random(1, 2000000000)\n\\set v random(1, 1000)\n"
              "INSERT INTO bh_events (id, v) VALUES (:id, :v);\n",
    "counter": "UPDATE bh_counters SET n = n + 1 WHERE id = 1;\n",
}
TARGETS = ("direct", "behind", "behind-redis")
# bench/durable's (file mode, writer threads), by target name (insert workload only).
CEILINGS = {"ceiling": ("zeroed", 1), "ceiling-append": ("append", 1),
            "ceiling-2w": ("zeroed", 2), "ceiling-4w": ("zeroed", 4)}


RULES = ('[[rules]]\ntable = "bh_events"\nwrite = "behind"\n\n'
         '[[rules]]\ntable = "bh_counters"\nwrite = "behind"\n'
         'behind_increments = true\nbehind_coalesce = true\n')


def rules(journal):
    return f'[behind]\njournal_dir = "{journal}"\n\n' + RULES


def redis_rules(port):
    return (f'[cache]\nsecret = "{SECRET}"\n\n'
            f'[cache.redis]\nurl = "redis://127.0.0.1:{port}"\nnamespace = "bh"\n\n'
            '[behind]\nqueue = "redis"\n\n' + RULES)


def percentile(values, q):
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def lag_quantiles(admin):
    """pgmemo_behind_lag_seconds' p50 and p99 (a summary over a recent window)."""
    text = metrics(admin)
    return (metric(text, "pgmemo_behind_lag_seconds", quantile="0.5"),
            metric(text, "pgmemo_behind_lag_seconds", quantile="0.99"))


def drain(admin, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if metric(metrics(admin), "pgmemo_behind_queue_entries") == 0:
            return
        time.sleep(0.1)
    raise RuntimeError("pgmemo's write-behind queue did not drain")


def one_run(st, target, admin, workload, clients, duration):
    if admin:
        drain(admin)
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / f"{workload}.sql"
        script.write_text(SCRIPTS[workload])
        argv = [str(st.pg_bin / "pgbench"), "-n", "-h", "127.0.0.1", "-p", str(st.ports[target]),
                "-U", "postgres", "-c", str(clients), "-j", "2", "-T", str(duration),
                "-M", "prepared", "-l", "--log-prefix", f"{tmp}/tx", "-f", str(script),
                "postgres"]
        r = subprocess.run(argv, capture_output=True, text=True, env=client_env(),
                           timeout=duration * 3 + 60)
        rec = parse_pgbench(r.stdout + r.stderr)
        if r.returncode != 0 or rec.get("tps") is None:
            raise RuntimeError(f"pgbench failed: {(r.stdout + r.stderr)[-400:]}")
        lat = []
        for f in Path(tmp).iterdir():
            if f.name.startswith("tx"):
                for line in f.read_text().splitlines():
                    parts = line.split()
                    if len(parts) >= 3:
                        lat.append(int(parts[2]))
    out = {"tps": rec["tps"], "command": " ".join(argv), "transactions": len(lat),
           "p50_ms": percentile(lat, 0.5) / 1000, "p99_ms": percentile(lat, 0.99) / 1000}
    if admin:
        drain(admin)
        out["lag_p50_ms"], out["lag_p99_ms"] = (q * 1000 for q in lag_quantiles(admin))
        text = metrics(admin)
        out["queued_total"] = metric(text, "pgmemo_behind_queued_total")
        out["forwarded_total"] = metric(text, "pgmemo_behind_forwarded_total")
        out["batches_total"] = metric(text, "pgmemo_behind_batch_entries_count")
        # The local journal's groups (absent with the Redis queue): fdatasync time and writes
        # sharing each one, quantiles over the exporter's recent window.
        for key, name, scale in (("sync", "pgmemo_behind_journal_sync_seconds", 1000),
                                 ("group", "pgmemo_behind_journal_group_records", 1)):
            for q in ("0.5", "0.99"):
                if name in text:
                    out[f"journal_{key}_p{q[2:]}"] = metric(text, name, quantile=q) * scale
    return out


def start_ceiling(st, exe, name):
    """Starts bench/durable as target `name`, its journal next to PostgreSQL's data."""
    port = stackmod.free_port()
    mode, writers = CEILINGS[name]
    argv = [exe, f"127.0.0.1:{port}", str(st.tmp / f"{name}.journal"), "400", mode, "2",
            str(writers)]
    out = open(st.tmp / f"{name}.stdout", "wb")
    proc = st.spawn(name, argv, lambda p: st._stop_simple(p, signal.SIGTERM), stdout=out)
    out.close()
    deadline = time.monotonic() + 120  # zero-filling 2 GiB first
    while "ready" not in (st.tmp / f"{name}.stdout").read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not start: {st.tail(name + '.log', 5)}")
        time.sleep(0.05)
    st.ports[name] = port
    st.configs[name] = {"command": shlex.join(str(a) for a in argv), "pid": proc.pid}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--insert-clients", type=int, default=16)
    ap.add_argument("--counter-clients", type=int, default=64)
    ap.add_argument("--workloads", default="insert,counter")
    ap.add_argument("--pg-bin")
    ap.add_argument("--redis-server", default="redis-server")
    ap.add_argument("--targets", default=",".join(TARGETS),
                    help="comma-separated, from " + ", ".join(TARGETS + tuple(CEILINGS)))
    ap.add_argument("--no-build", action="store_true", help="never run cargo for bench/durable")
    ap.add_argument("--out", default=str(REPO / "bench" / "out"))
    args = ap.parse_args()
    targets = tuple(t for t in args.targets.split(",") if t)
    unknown = [t for t in targets if t not in TARGETS + tuple(CEILINGS)]
    if unknown or "direct" not in targets:
        ap.error(f"--targets must include direct; unknown: {unknown}")
    out = Path(args.out)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    st = Stack(argparse.Namespace(upstream_via="tcp"), find_pg_bin(args.pg_bin), out)
    result = {"started": datetime.datetime.now().isoformat(timespec="seconds"),
              "args": vars(args), "cells": {}}
    try:
        st.start_postgres()
        port = st.ports["direct"]
        for k in ("fsync", "synchronous_commit"):
            if st.psql(port, f"SHOW {k}") != "on":
                raise RuntimeError(f"{k} is not on: the comparison would not be fair")
        st.psql(port, SETUP)
        result["postgres"] = st.configs["postgres"]
        journal = st.tmp / "journal"
        redis_port = start_redis(st, args.redis_server, durable=True)
        result["redis"] = st.configs["redis"]
        admins = {"direct": None}
        if "behind" in targets:
            admins["behind"] = start_pgmemo(st, "behind", "off", rest=rules(journal))[0]
        if "behind-redis" in targets:
            admins["behind-redis"] = start_pgmemo(st, "behind-redis", "off",
                                                  rest=redis_rules(redis_port))[0]
        for name in CEILINGS:
            if name in targets:
                start_ceiling(st, stackmod.bench_tool("durable", args.no_build), name)
                admins[name] = None
        clients = {"insert": args.insert_clients, "counter": args.counter_clients}
        for w in args.workloads.split(","):
            here = tuple(t for t in targets if w == "insert" or t not in CEILINGS)
            cell = {t: [] for t in here}
            for t in here:
                one_run(st, t, admins[t], w, clients[w], 3)  # warm-up
            for rep in range(args.reps):
                for t in (here if rep % 2 == 0 else here[::-1]):
                    rec = one_run(st, t, admins[t], w, clients[w], args.duration)
                    cell[t].append(rec)
                    log(f"{w} rep {rep + 1} {t}: {rec['tps']:.0f} TPS, p50 {rec['p50_ms']:.2f} ms "
                        f"p99 {rec['p99_ms']:.2f} ms"
                        + (f", lag p50 {rec['lag_p50_ms']:.1f} ms p99 {rec['lag_p99_ms']:.1f} ms"
                           if admins[t] else "")
                        + (f", journal fdatasync p50 {rec['journal_sync_p5']:.2f} ms, "
                           f"group p50 {rec['journal_group_p5']:.0f}"
                           if "journal_sync_p5" in rec else ""))
            result["cells"][w] = cell
        if "counter" in result["cells"]:
            n = int(st.psql(port, "SELECT n FROM bh_counters WHERE id = 1"))
            result["counter_value"] = n
            log(f"counter value after the runs: {n}")
    finally:
        for name in ("behind", "behind-redis"):
            src = st.tmp / f"{name}.log"
            if src.exists():
                (out / "logs" / f"{name}.log").write_bytes(src.read_bytes()[-(1 << 20):])
        st.close()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    (out / f"behind-{stamp}.json").write_text(json.dumps(result, indent=2))
    print("| workload | target | TPS | ack p50 ms | ack p99 ms | flush lag p50 ms | flush lag p99 ms |")
    print("|---|---|---|---|---|---|---|")
    for w, cell in result["cells"].items():
        for t in cell:
            runs = cell[t]

            def med(key):
                vals = [r[key] for r in runs if r.get(key) is not None]
                return statistics.median(vals) if vals else float("nan")
            print(f"| {w} | {t} | {med('tps'):.0f} | {med('p50_ms'):.2f} | {med('p99_ms'):.2f} | "
                  f"{med('lag_p50_ms'):.1f} | {med('lag_p99_ms'):.1f} |")
        d = statistics.median(r["tps"] for r in cell["direct"])
        for t in (t for t in cell if t != "direct"):
            b = statistics.median(r["tps"] for r in cell[t])
            print(f"\n{w}: {t} / direct TPS = {b / d:.2f}x")


if __name__ == "__main__":
    main()
