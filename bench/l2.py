#!/usr/bin/env python3
"""Shared Redis cache benchmark (issue 6): point-read throughput with the L2 tier, compression of
pgbench rows in Redis, and `fast` cross-instance invalidation latency.

Starts a throwaway PostgreSQL (pgbench scale 10, bench/stack.py), its own redis-server on a free
loopback port (`--save "" --appendonly no --maxmemory-policy noeviction`) and pgmemo processes in
front of both, all with the same `cache.secret` and `invalidation.cdc = "off"`, each target in
its own `cache.redis.namespace`:

  strict         consistency "strict", L1 on
  strict_l2only  consistency "strict", [cache.l1] enabled = false (every hit read from Redis)
  fast           consistency "fast", L1 on (also instance B of part 3)
  fast_a         consistency "fast", same namespace as `fast` (instance A of part 3, started
                 for part 3 only)

1. Throughput: pgbench point lookups (bench/workloads/point.sql: 10,000 hot keys) with -M simple
   and -M prepared, --clients clients, against direct (PostgreSQL itself) and the three pgmemo
   targets: one untimed --warmup run per target and mode, then --reps repetitions of
   --duration seconds, the targets interleaved (repetition r starts at target r mod 4); a
   warm-up is repeated (at most 3 in all) while it still missed or bypassed > 2 % of its reads
   (a cold start can trip pgmemo's adaptive bypass for 16,384 executions). TPS
   medians and medians of per-repetition ratios to direct. Issue 6 acceptance, -M simple:
   strict >= 1.5x direct, strict_l2only >= 1.2x direct.
   With -M simple the ceilings of bench/ceiling (built with cargo unless --no-build; skipped
   with --no-ceiling) are interleaved too: `ceiling` (the instant responder), and
   `ceiling_counters` / `ceiling_l2`, which answer each query only after the Redis round trip
   strict (L1 on) / L2-only must at least make, batched as well as found here: what any design
   that asks Redis per lookup can reach on this machine.
2. Compression: pgmemo_l2_bytes_total{stage="raw"} / {stage="stored"} of every instance after
   part 1 (point results are a few bytes, under compress_min = 1 KiB), and the same ratio over
   five 500-row `SELECT * FROM pgbench_accounts WHERE aid BETWEEN ...` reads, each run three
   times through `strict` (their results are compressed); one of them is compared with what
   PostgreSQL returns.
3. `fast` invalidation across instances (needs psycopg 3: pip install "psycopg[binary]"):
   per sample, on persistent autocommit connections with the simple query protocol, read
   `SELECT abalance FROM pgbench_accounts WHERE aid = K` twice through B (cached there), UPDATE
   that row through A to a new value (t0 = when A's acknowledgement arrives), then poll B with
   the same SELECT until it returns the new value (t1); latency = t1 - t0. --samples samples
   with B otherwise idle, then --samples more while --clients pgbench clients run point.sql's
   read through B (as `SELECT abalance, bid ...`: another statement shape, so the adaptive
   bypass its misses may trigger never applies to the probe). p50 / p99 / max; acceptance
   p99 <= 5 ms. Also reported: the stale window (ack to the sending of the first read that
   saw the new value) and the round trips of B's hits and misses.

pgmemo is target/release/pgmemo (or --pgmemo-bin), rebuilt with `cargo build --release --bin
pgmemo` when missing or older than src/, Cargo.toml or Cargo.lock; with --no-build a stale
binary is used anyway and flagged in the output (a missing one is an error).

Standard library only (psycopg is optional, for part 3). Writes bench/out/l2-<time>.json with
every raw number and prints a markdown summary. Every process it started (PostgreSQL, Redis,
pgmemo, pgbench) is stopped and the temp dir removed on exit, error, Ctrl-C or SIGTERM.
"""

import argparse
import datetime
import json
import os
import random
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
import stack as stackmod  # noqa: E402
from cdc import metric, metrics  # noqa: E402
from run import ProcSampler, parse_pgbench, run_client  # noqa: E402
from stack import REPO, Stack, client_env, find_pg_bin, log  # noqa: E402

WORKLOADS = REPO / "bench" / "workloads"
POINT = ["-f", str(WORKLOADS / "point.sql")]
SECRET = "00112233445566778899aabbccddeeff"
TARGETS = ("direct", "strict", "strict_l2only", "fast")
PGMEMO_TARGETS = {  # name: (namespace, consistency, l1 enabled)
    "strict": ("bench_strict", "strict", True),
    "strict_l2only": ("bench_l2only", "strict", False),
    "fast": ("bench_fast", "fast", True),
}
MODES = ("simple", "prepared")
# The ceilings (bench/ceiling, -M simple only): name: (mode, threads, yields, layout).
# `ceiling` is the instant responder; the other two add what any design that asks Redis per
# lookup must at least do (see bench/ceiling/src/main.rs), with the best batching found here
# (of one shared connection on 1 or 2 threads and per-thread connections, 0 to 2 yields).
CEILINGS = {"ceiling": ("none", 2, 0, "shared"),
            "ceiling_counters": ("counters", 2, 1, "per-thread"),
            "ceiling_l2": ("l2", 2, 1, "per-thread")}
# Which ceiling bounds which target.
BOUND_BY = {"strict": "ceiling_counters", "strict_l2only": "ceiling_l2", "fast": "ceiling"}
ACCEPT = {"strict": 1.5, "strict_l2only": 1.2}  # x direct, -M simple
ACCEPT_P99_MS = 5.0
MAX_WARMUPS = 3  # per target and mode, while a warm-up still missed > 2 % of its reads
WIDE_ROWS = 500  # rows per compression query (pgbench_accounts rows are ~100 bytes of text)
WIDE_QUERIES = 5
WIDE_REPEATS = 3


# --- metrics ------------------------------------------------------------------------------
def has_metric(text, name):
    return any(line.startswith((name + "{", name + " ")) for line in text.splitlines())


L2_LOOKUP_RESULTS = ("hit", "miss", "error", "refused", "breaker_open")
L2_WRITE_RESULTS = ("written", "dropped")


def counters(admin):
    """The cache counters of one pgmemo, as a flat dict (cumulative)."""
    t = metrics(admin)
    c = {"l1_hits": metric(t, "pgmemo_cache_hits_total"),
         "l1_misses": metric(t, "pgmemo_cache_misses_total"),
         "raw_bytes": metric(t, "pgmemo_l2_bytes_total", stage="raw"),
         "stored_bytes": metric(t, "pgmemo_l2_bytes_total", stage="stored"),
         "bumps_applied": metric(t, "pgmemo_l2_bumps_total", result="applied"),
         "bumps_failed": metric(t, "pgmemo_l2_bumps_total", result="failed"),
         "counter_read_errors": metric(t, "pgmemo_l2_counter_reads_total", result="error"),
         "breaker_changes": metric(t, "pgmemo_l2_breaker_changes_total"),
         "cache_bypasses": metric(t, "pgmemo_cache_bypasses_total"),
         "l2_usable": metric(t, "pgmemo_l2_usable"),
         "l2_subscribed": metric(t, "pgmemo_l2_subscribed")}
    for r in L2_LOOKUP_RESULTS:
        c[f"l2_{r}"] = metric(t, "pgmemo_l2_lookups_total", result=r)
    for r in L2_WRITE_RESULTS:
        c[f"l2_writes_{r}"] = metric(t, "pgmemo_l2_writes_total", result=r)
    return c


def delta(after, before):
    return {k: after[k] - before.get(k, 0.0) for k in after
            if k not in ("l2_usable", "l2_subscribed")}


# --- Redis --------------------------------------------------------------------------------
def redis_cmd(port, *args, timeout=5):
    """One RESP command on a fresh connection; the reply as str (simple, bulk or integer)."""
    payload = b"*%d\r\n" % len(args) + b"".join(
        b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(payload)
        f = s.makefile("rb")
        line = f.readline()
        if not line:
            raise OSError("redis closed the connection")
        kind, rest = line[:1], line[1:].rstrip(b"\r\n")
        if kind == b"-":
            raise RuntimeError(f"redis: {rest.decode(errors='replace')}")
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else f.read(n + 2)[:n].decode(errors="replace")
        return rest.decode(errors="replace")


def redis_info(port, section):
    text = redis_cmd(port, "INFO", section) or ""
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line
                and not line.startswith("#"))


def start_redis(st, exe, durable=False):
    """redis-server on a free port; `durable`: AOF with `appendfsync always` (a write-behind
    queue's durability), else no persistence (a cache)."""
    port = stackmod.free_port()
    persist = (["--appendonly", "yes", "--appendfsync", "always"] if durable
               else ["--appendonly", "no"])
    argv = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", ""] + persist + [
            "--maxmemory-policy", "noeviction", "--daemonize", "no", "--dir", str(st.tmp)]
    proc = st.spawn("redis", argv, lambda p: st._stop_simple(p, signal.SIGTERM))
    deadline, last = time.monotonic() + 20, ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with code {proc.returncode}: "
                               + st.tail("redis.log", 5))
        try:
            if redis_cmd(port, "PING", timeout=1) == "PONG":
                break
        except (OSError, RuntimeError) as e:
            last = str(e)
        time.sleep(0.1)
    else:
        raise RuntimeError(f"redis-server not answering on port {port}: {last}")
    st.ports["redis"] = port
    st.configs["redis"] = {"version": redis_info(port, "server").get("redis_version", "?"),
                           "command": shlex.join(str(a) for a in argv), "port": port,
                           "pid": proc.pid}
    log(f"redis {st.configs['redis']['version']} on 127.0.0.1:{port}")
    return port


# --- pgmemo -------------------------------------------------------------------------------
def pgmemo_exe(st, args):
    """(binary, note): the flag, else target/release/pgmemo built when missing or stale."""
    if args.pgmemo_bin:
        exe = Path(args.pgmemo_bin)
        if not exe.exists():
            raise RuntimeError(f"--pgmemo-bin {exe} does not exist")
        return exe, None
    exe = REPO / "target" / "release" / "pgmemo"
    sources = [REPO / "Cargo.toml", REPO / "Cargo.lock"] + list((REPO / "src").rglob("*.rs"))
    newest = max(sources, key=lambda p: p.stat().st_mtime if p.exists() else 0)
    if exe.exists() and exe.stat().st_mtime >= newest.stat().st_mtime:
        return exe, None
    if args.no_build:
        if not exe.exists():
            raise RuntimeError(f"{exe} is missing and --no-build was given")
        note = (f"binary older than the sources ({newest.relative_to(REPO)} modified "
                f"{datetime.datetime.fromtimestamp(newest.stat().st_mtime):%H:%M:%S}, binary "
                f"{datetime.datetime.fromtimestamp(exe.stat().st_mtime):%H:%M:%S}); "
                "--no-build: used as is")
        log(f"WARNING: {note}")
        return exe, note
    return st.pgmemo_binary(), None  # builds (stack.py), raises with the build log's tail


def start_pgmemo(st, exe, name, redis_port, namespace, consistency, l1):
    cfg = st.tmp / f"{name}.toml"
    text = (f'[cache]\nsecret = "{SECRET}"\n\n[cache.l1]\nenabled = {str(l1).lower()}\n\n'
            f'[cache.redis]\nurl = "redis://127.0.0.1:{redis_port}"\nnamespace = "{namespace}"\n'
            f'consistency = "{consistency}"\n\n[invalidation]\ncdc = "off"\n')
    cfg.write_text(text)
    upstream = f"postgres://postgres@127.0.0.1:{st.ports['direct']}/postgres"
    argv = [exe, "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
            "--upstream", upstream, "--config", cfg]
    out = open(st.tmp / f"{name}.stdout", "wb")
    proc = st.spawn(name, argv, lambda p: st._stop_simple(p, signal.SIGTERM), stdout=out)
    out.close()
    deadline, admin = time.monotonic() + 20, None
    while time.monotonic() < deadline:
        m = stackmod.READY_RE.search((st.tmp / f"{name}.stdout").read_text(errors="replace"))
        if m:
            st.ports[name] = int(m.group(2))
            admin = f"{m.group(3)}:{m.group(4)}"
            break
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    if admin is None:
        raise RuntimeError(f"{name} did not start (exit {proc.poll()}): {st.tail(name + '.log', 8)}")
    st.wait_sql(name, st.ports[name], proc, 20)
    st.psql(st.ports[name], "SELECT count(*) FROM pgbench_branches")
    # The tier must be usable (eviction policy checked) and, for fast, subscribed.
    deadline = time.monotonic() + 20
    while True:
        c = counters(admin)
        if c["l2_usable"] == 1 and (consistency != "fast" or c["l2_subscribed"] == 1):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name}: L2 not ready after 20 s (pgmemo_l2_usable="
                               f"{c['l2_usable']:g}, pgmemo_l2_subscribed={c['l2_subscribed']:g}); "
                               f"log: {st.tail(name + '.log', 8)}")
        time.sleep(0.2)
    st.configs[name] = {"command": shlex.join(str(a) for a in argv), "config": text,
                        "admin": admin, "pid": proc.pid, "port": st.ports[name]}
    log(f"{name} on 127.0.0.1:{st.ports[name]} (admin {admin}; {consistency}, namespace "
        f"{namespace}, L1 {'on' if l1 else 'off'})")
    return admin


# --- part 1 -------------------------------------------------------------------------------
def pgbench(st, sampler, target, mode, clients, duration):
    """One pgbench run of point.sql; never raises (an error is recorded in the result)."""
    port = st.ports[target]
    argv = [str(st.pg_bin / "pgbench"), "-n", "-h", "127.0.0.1", "-p", str(port), "-U",
            "postgres", "-c", str(clients), "-j", str(min(clients, 2)), "-T", str(duration),
            "-M", mode] + POINT + ["postgres"]
    rec = {"target": target, "mode": mode, "command": " ".join(argv), "tps": None, "error": None}
    admin = st.configs.get(target, {}).get("admin")
    try:
        before_c = counters(admin) if admin else None
    except OSError as e:
        before_c, rec["metrics_error"] = None, str(e)
    out, rc, before, after = run_client(argv, duration, sampler, rec)
    rec.update(parse_pgbench(out))
    rec["rc"] = rc
    if rc != 0:
        rec["error"] = f"pgbench exit {rc}: " + " | ".join(out.strip().splitlines()[-4:])
    elif rec["failed"]:
        rec["error"] = f"{rec['failed']} failed transactions"
    elif rec["tps"] is None:
        rec["error"] = "no tps line in pgbench output"
    redis_pid = st.configs.get("redis", {}).get("pid")
    cpu = sampler.cpu_of(redis_pid, before, after) if redis_pid else None
    if cpu is not None and rec.get("processed"):
        rec["redis_cpu_us_per_txn"] = round(1e6 * cpu / rec["processed"], 1)
    pid = st.configs.get(target, {}).get("pid")
    if pid:  # a pgmemo or a ceiling
        cpu = sampler.cpu_of(pid, before, after)
        if cpu is not None and rec.get("processed"):
            rec["pgmemo_cpu_us_per_txn"] = round(1e6 * cpu / rec["processed"], 1)
    if admin:
        try:
            if before_c is not None:
                d = delta(counters(admin), before_c)
                rec["counters"] = d
                if rec.get("processed"):
                    rec["served_from_cache"] = (d["l1_hits"] + d["l2_hit"]) / rec["processed"]
                    rec["served_from_l2"] = d["l2_hit"] / rec["processed"]
        except OSError as e:
            rec["metrics_error"] = str(e)
    if rec["error"]:
        rec["tps"] = None
        for n, proc, _ in st.procs:
            if n == target and proc.poll() is not None:
                rec["error"] += f"; {target} exited with code {proc.returncode}"
    return rec


def targets_for(st, mode):
    """The targets of one mode: pgmemo's and direct, and the ceilings that were started."""
    extra = tuple(c for c in CEILINGS if mode == "simple" and c in st.ports)
    return TARGETS + extra


def throughput(st, args, sampler, result):
    part = result["throughput"] = {"clients": args.clients, "duration_s": args.duration,
                                   "reps": args.reps, "warmup_s": args.warmup, "cells": {}}
    for mode in MODES:
        cell = part["cells"][mode] = {"warmups": [], "runs": []}
        st.psql(st.ports["direct"], "CHECKPOINT")
        if args.warmup > 0:
            for t in TARGETS:  # the ceilings need none
                for attempt in range(MAX_WARMUPS):
                    w = pgbench(st, sampler, t, mode, args.clients, args.warmup)
                    w["attempt"] = attempt + 1
                    cell["warmups"].append(w)
                    c = w.get("counters", {})
                    cold = c.get("l1_misses", 0) + c.get("cache_bypasses", 0)
                    log(f"-M {mode} warm-up {t}: "
                        + (f"{w['tps']:.0f} tps" if w["tps"] else f"ERROR {w['error']}")
                        + (f", {cold:.0f} misses + bypasses" if c else ""))
                    # Again while the hot set is not filled yet: a cold start can trip the
                    # adaptive bypass (16,384 executions uncached), and with the L1 off a
                    # dropped L2 write is a miss again next time.
                    if w["error"] or not w.get("processed") or cold <= 0.02 * w["processed"]:
                        break
        for rep in range(args.reps):
            targets = targets_for(st, mode)
            order = targets[rep % len(targets):] + targets[:rep % len(targets)]
            for t in order:
                r = pgbench(st, sampler, t, mode, args.clients, args.duration)
                r["rep"] = rep
                cell["runs"].append(r)
                extra = ""
                if "served_from_cache" in r:
                    extra = (f", {100 * r['served_from_cache']:.1f} % from cache "
                             f"({100 * r['served_from_l2']:.1f} % from Redis)")
                log(f"-M {mode} rep {rep + 1} {t}: "
                    + (f"{r['tps']:.0f} tps{extra}" if r["tps"] else f"ERROR {r['error']}"))
        cell["summary"] = summarize_cell(cell["runs"], args.reps, targets_for(st, mode))


def med_range(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values)}


def summarize_cell(runs, reps, targets):
    by = {(r["rep"], r["target"]): r for r in runs}
    s = {}
    for t in targets:
        rs = [by.get((rep, t)) for rep in range(reps)]
        rs = [r for r in rs if r is not None]
        s[t] = {"tps": med_range([r["tps"] for r in rs]),
                "errors": sum(1 for r in rs if r["error"]),
                "served_from_cache": med_range([r.get("served_from_cache") for r in rs]),
                "served_from_l2": med_range([r.get("served_from_l2") for r in rs]),
                "pgmemo_cpu_us_per_txn": med_range([r.get("pgmemo_cpu_us_per_txn") for r in rs]),
                "redis_cpu_us_per_txn": med_range([r.get("redis_cpu_us_per_txn") for r in rs]),
                "contended_runs": sum(1 for r in rs if r.get("foreign_cpu_pct", 0) >= 5)}
        if t != "direct":
            ratios = []
            for rep in range(reps):
                a, d = by.get((rep, t)), by.get((rep, "direct"))
                if a and d and a["tps"] and d["tps"]:
                    ratios.append(a["tps"] / d["tps"])
            s[t]["ratio_to_direct"] = med_range(ratios)
            s[t]["ratio_to_direct_per_rep"] = ratios
    return s


# --- part 2 -------------------------------------------------------------------------------
def compression(st, result):
    part = result["compression"] = {"per_instance": {}}
    for name in PGMEMO_TARGETS:
        c = counters(st.configs[name]["admin"])
        part["per_instance"][name] = {
            "raw_bytes": c["raw_bytes"], "stored_bytes": c["stored_bytes"],
            "ratio": c["raw_bytes"] / c["stored_bytes"] if c["stored_bytes"] else None,
            "l2_writes_written": c["l2_writes_written"], "l2_writes_dropped": c["l2_writes_dropped"]}
    admin, port = st.configs["strict"]["admin"], st.ports["strict"]
    before = counters(admin)
    queries = [f"SELECT * FROM pgbench_accounts WHERE aid BETWEEN {k * WIDE_ROWS + 1} AND "
               f"{(k + 1) * WIDE_ROWS} ORDER BY aid" for k in range(WIDE_QUERIES)]
    outputs = {}
    for q in queries:
        for _ in range(WIDE_REPEATS):
            outputs.setdefault(q, []).append(st.psql(port, q))
    time.sleep(1)  # L2 writes are queued: let them land before reading the counters
    d = delta(counters(admin), before)
    direct = st.psql(st.ports["direct"], queries[0])
    consistent = all(len(set(v)) == 1 for v in outputs.values())
    part["wide_reads"] = {
        "instance": "strict", "queries": queries, "repeats": WIDE_REPEATS,
        "result_bytes_as_text": [len(outputs[q][0]) for q in queries],
        "raw_bytes": d["raw_bytes"], "stored_bytes": d["stored_bytes"],
        "ratio": d["raw_bytes"] / d["stored_bytes"] if d["stored_bytes"] else None,
        "l1_hits": d["l1_hits"], "l2_writes_written": d["l2_writes_written"],
        "l2_writes_dropped": d["l2_writes_dropped"],
        "repeats_identical": consistent, "matches_direct": outputs[queries[0]][0] == direct,
        "rows_first_query": len(direct.splitlines())}
    w = part["wide_reads"]
    log(f"compression: {WIDE_QUERIES} x {WIDE_ROWS}-row reads through strict: raw "
        f"{w['raw_bytes']:.0f} B, stored {w['stored_bytes']:.0f} B"
        + (f" = {w['ratio']:.2f}x" if w["ratio"] else "")
        + f"; identical repeats {consistent}, matches direct {w['matches_direct']}")


# --- part 3 -------------------------------------------------------------------------------
def pct(values, p):
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    v = sorted(values)
    k = max(0, min(len(v) - 1, int(-(-p * len(v) // 100)) - 1))
    return v[k]


def connect(psycopg, port):
    return psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres",
                           sslmode="disable", connect_timeout=10, autocommit=True)


def invalidation_phase(a, b, keys, base, poll_timeout):
    samples, hit_rtts = [], []
    consecutive_timeouts = 0
    for i, k in enumerate(keys):
        q = f"SELECT abalance FROM pgbench_accounts WHERE aid = {k}"
        old = b.execute(q, prepare=False).fetchone()[0]
        t = time.perf_counter()
        again = b.execute(q, prepare=False).fetchone()[0]
        hit_rtts.append(time.perf_counter() - t)
        new = base + i
        if new == old:
            new += 1
        s = {"aid": k, "old": old, "new": new, "second_read": again}
        a.execute(f"UPDATE pgbench_accounts SET abalance = {new} WHERE aid = {k}", prepare=False)
        t0 = time.perf_counter()
        polls, stale, wrong = 0, 0, []
        while True:
            sent = time.perf_counter()
            v = b.execute(q, prepare=False).fetchone()[0]
            now = time.perf_counter()
            polls += 1
            if v == new:
                s["latency_ms"] = (now - t0) * 1e3
                # When the poll that saw the new value was sent: B served the old value (or
                # was about to) until somewhere in [previous poll's send, this send].
                s["stale_window_ms"] = (sent - t0) * 1e3
                s["fresh_poll_rtt_ms"] = (now - sent) * 1e3
                break
            if v == old:
                stale += 1
            else:
                wrong.append(v)
            if now - t0 > poll_timeout:
                s["timeout"] = True
                break
        s.update(polls=polls, stale_polls=stale)
        if wrong:
            s["wrong_values"] = wrong[:5]
        samples.append(s)
        consecutive_timeouts = consecutive_timeouts + 1 if s.get("timeout") else 0
        if consecutive_timeouts >= 10:
            log("invalidation: 10 timeouts in a row; phase stopped early")
            break
    return samples, hit_rtts


def phase_summary(samples, hit_rtts):
    lat = [s["latency_ms"] for s in samples if "latency_ms" in s]
    out = {"samples": len(samples), "converged": len(lat),
           "timeouts": sum(1 for s in samples if s.get("timeout")),
           "wrong_value_samples": sum(1 for s in samples if s.get("wrong_values")),
           "second_read_differs": sum(1 for s in samples if s["second_read"] != s["old"]),
           "first_poll_fresh": sum(1 for s in samples if s.get("latency_ms") is not None
                                   and s["polls"] == 1),
           "hit_rtt_p50_ms": statistics.median(hit_rtts) * 1e3 if hit_rtts else None}
    if lat:
        out.update(p50_ms=pct(lat, 50), p90_ms=pct(lat, 90), p99_ms=pct(lat, 99), max_ms=max(lat),
                   mean_ms=statistics.mean(lat))
        # Timeouts count as above the limit: p99 is only "ok" if it is over every sample.
        full = lat + [float("inf")] * out["timeouts"]
        out["p99_ms_incl_timeouts"] = pct(full, 99)
        stale = [s["stale_window_ms"] for s in samples if "stale_window_ms" in s]
        out.update(stale_window_p50_ms=pct(stale, 50), stale_window_p99_ms=pct(stale, 99),
                   stale_window_max_ms=max(stale),
                   fresh_poll_rtt_p50_ms=pct([s["fresh_poll_rtt_ms"] for s in samples
                                              if "fresh_poll_rtt_ms" in s], 50))
        out["pass"] = out["p99_ms_incl_timeouts"] <= ACCEPT_P99_MS and not out["wrong_value_samples"]
    return out


def invalidation(st, args, exe, redis_port, result):
    part = result["invalidation"] = {"samples_per_phase": args.samples,
                                     "poll_timeout_s": args.poll_timeout}
    try:
        import psycopg
    except ImportError:
        part["skipped"] = ('psycopg 3 is not importable: pip install "psycopg[binary]" to measure '
                           "fast cross-instance invalidation latency")
        log(part["skipped"])
        return
    part["psycopg"] = psycopg.__version__
    ns = PGMEMO_TARGETS["fast"][0]
    admin_a = start_pgmemo(st, exe, "fast_a", redis_port, ns, "fast", True)
    admin_b = st.configs["fast"]["admin"]
    part["instances"] = {"A": "fast_a", "B": "fast", "namespace": ns}
    keys = random.Random(6).sample(range(10001, 1000001), 2 * args.samples)
    a, b = connect(psycopg, st.ports["fast_a"]), connect(psycopg, st.ports["fast"])
    bg = None
    try:
        phases = [("idle", keys[:args.samples], 10_000_000),
                  ("loaded", keys[args.samples:], 20_000_000)]
        for phase, ks, base in phases:
            if phase == "loaded":
                # point.sql's read with another select list: a statement shape of its own, so
                # that the adaptive bypass the background's misses may trigger (every UPDATE
                # invalidates the table) never applies to the probe's shape.
                script = st.tmp / "bg_point.sql"
                script.write_text("\\set aid random(1, 10000)\n"
                                  "SELECT abalance, bid FROM pgbench_accounts WHERE aid = :aid;\n")
                argv = [str(st.pg_bin / "pgbench"), "-n", "-h", "127.0.0.1", "-p",
                        str(st.ports["fast"]), "-U", "postgres", "-c", str(args.clients), "-j",
                        str(min(args.clients, 2)), "-T", "3600", "-M", "simple", "-f", str(script),
                        "postgres"]
                logf = open(st.tmp / "bgload.log", "wb")
                bg = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, env=client_env(),
                                      start_new_session=True)
                logf.close()
                st.procs.append(("bgload", bg, lambda p=bg: st._stop_simple(p, signal.SIGTERM)))
                part["background_load"] = " ".join(argv)
                time.sleep(2)  # connected and running
                if bg.poll() is not None:
                    raise RuntimeError("background pgbench exited: " + st.tail("bgload.log", 4))
            ca, cb = counters(admin_a), counters(admin_b)
            log(f"invalidation ({phase}): {len(ks)} samples, A=fast_a B=fast")
            started = time.monotonic()
            samples, rtts = invalidation_phase(a, b, ks, base, args.poll_timeout)
            wall = time.monotonic() - started
            summ = phase_summary(samples, rtts)
            summ["wall_s"] = round(wall, 2)
            summ["counters_A"] = delta(counters(admin_a), ca)
            summ["counters_B"] = delta(counters(admin_b), cb)
            summ["B_lookups_per_s"] = round((summ["counters_B"]["l1_hits"]
                                             + summ["counters_B"]["l1_misses"]) / wall)
            part[phase] = {"summary": summ, "samples": samples}
            if phase == "loaded":
                st._stop_simple(bg, signal.SIGTERM)
            log(f"invalidation ({phase}): " + ", ".join(
                f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                for k, v in summ.items() if not k.startswith("counters")))
    finally:
        if bg is not None:
            st._stop_simple(bg, signal.SIGTERM)
        a.close()
        b.close()


# --- report -------------------------------------------------------------------------------
def fmt_range(m, spec, unit=""):
    """A median with its spread in brackets when there were several values; "–" for none."""
    if not m:
        return "–"
    s = f"{m['median']:{spec}}{unit}"
    return s if m["n"] == 1 else s + f" ({m['min']:{spec}}{unit}–{m['max']:{spec}}{unit})"


def fmt_tps(m):
    return fmt_range(m, ",.0f")


def fmt_ratio(m):
    return fmt_range(m, ".2f", "×")


def fmt_us(m):
    return fmt_range(m, ".1f")


def fmt_pct(m):
    return "–" if not m else f"{100 * m['median']:.1f} %"


def fmt_ms(v):
    return "–" if v is None else f"{v:.2f}"


def report(result, args):
    lines = ["# pgmemo shared Redis tier (issue 6)", "",
             f"Command: `{result['command']}` (started {result['started']}, finished "
             f"{result.get('finished', '?')})", ""]
    info = result.get("setup", {})
    if info:
        lines.append(f"PostgreSQL {info.get('postgres', '?')}, Redis {info.get('redis', '?')}, "
                     f"{os.cpu_count()} CPUs, load average at start {info.get('loadavg', '?')}; "
                     f"pgmemo `{info.get('pgmemo', '?')}` built "
                     f"{info.get('pgmemo_mtime', '?')}" + (
                         f" — **{info['pgmemo_note']}**" if info.get("pgmemo_note") else ""))
        lines.append("")
    if result.get("error"):
        lines += [f"**The benchmark did not complete:** {result['error']}", ""]
    tp = result.get("throughput")
    verdicts = []
    if tp and tp.get("cells"):
        lines += [f"## Point lookups, {tp['clients']} clients ({tp['reps']} × {tp['duration_s']} s "
                  f"interleaved, {tp['warmup_s']} s warm-up per target, repeated up to "
                  f"{MAX_WARMUPS}× while it missed > 2 %)", "",
                  "| mode | target | TPS | ÷ direct | from cache | from Redis | pgmemo µs/txn "
                  "| Redis µs/txn | errors | contended |", "|---|---|---|---|---|---|---|---|---|---|"]
        for mode, cell in tp["cells"].items():
            s = cell.get("summary")
            if not s:
                continue
            for t, x in s.items():
                lines.append(
                    f"| `-M {mode}` | {t} | {fmt_tps(x['tps'])} | "
                    f"{fmt_ratio(x.get('ratio_to_direct')) if t != 'direct' else '1.00×'} | "
                    f"{fmt_pct(x['served_from_cache']) if t in PGMEMO_TARGETS else '–'} | "
                    f"{fmt_pct(x['served_from_l2']) if t in PGMEMO_TARGETS else '–'} | "
                    f"{fmt_us(x['pgmemo_cpu_us_per_txn'])} | "
                    f"{fmt_us(x['redis_cpu_us_per_txn']) if t not in ('direct', 'ceiling') else '–'} | "
                    f"{x['errors']} | {x['contended_runs']} |")
        lines += ["", "\"from cache\" = (L1 hits + L2 hits) ÷ transactions, \"from Redis\" = L2 "
                  "hits ÷ transactions, during the timed runs; µs/txn = CPU time of that process (all "
                  "threads; for a ceiling, the ceiling's own) during the run ÷ transactions; \"contended\" = runs in which "
                  "processes outside the benchmark used ≥ 5 % of the machine's CPU.", ""]
        if any(c in (tp["cells"].get("simple", {}).get("summary") or {}) for c in CEILINGS):
            lines += ["Ceilings (`bench/ceiling`, `-M simple` only): `ceiling` answers every query "
                      "from memory at once (the instant responder); `ceiling_counters` first waits "
                      "for one Redis counter read requested after the query arrived (`GET` marker + "
                      "`HMGET` versions, shared by every query that arrived while the previous "
                      "read was out), the least `strict` with the L1 on must do; `ceiling_l2` also "
                      "`GET`s each query's entry in that round trip, the least L2-only must do. "
                      "Nothing is parsed, checked or stored: the most any design that asks Redis "
                      "per lookup can reach on this machine.", ""]
        simple = tp["cells"].get("simple", {}).get("summary")
        for t, need in ACCEPT.items():
            r = simple and simple[t].get("ratio_to_direct")
            if r:
                ok = r["median"] >= need
                bound = simple.get(BOUND_BY[t], {}).get("ratio_to_direct")
                verdicts.append(f"{t} `-M simple`: {r['median']:.2f}× direct (need ≥ {need:.1f}×): "
                                f"**{'pass' if ok else 'FAIL'}**"
                                + (f"; its ceiling {BOUND_BY[t]} reached {bound['median']:.2f}× "
                                   if bound else ""))
            else:
                verdicts.append(f"{t} `-M simple`: no ratio (runs failed): **FAIL**")
    comp = result.get("compression")
    if comp:
        lines += ["## Compression in Redis (`pgmemo_l2_bytes_total`)", "",
                  "| what | raw bytes | stored bytes | raw ÷ stored |", "|---|---|---|---|"]
        for name, c in comp["per_instance"].items():
            lines.append(f"| {name}: everything after part 1 (point results) | {c['raw_bytes']:,.0f} | "
                         f"{c['stored_bytes']:,.0f} | "
                         f"{'–' if c['ratio'] is None else '%.2f×' % c['ratio']} |")
        w = comp.get("wide_reads")
        if w:
            lines.append(f"| strict: {WIDE_QUERIES} × `SELECT * FROM pgbench_accounts` of "
                         f"{WIDE_ROWS} rows, each {WIDE_REPEATS}× | {w['raw_bytes']:,.0f} | "
                         f"{w['stored_bytes']:,.0f} | "
                         f"{'–' if w['ratio'] is None else '%.2f×' % w['ratio']} |")
            lines += ["", f"The wide reads: {w['l2_writes_written']:.0f} L2 writes, "
                      f"{w['l1_hits']:.0f} L1 hits; repeats identical: {w['repeats_identical']}; "
                      f"first query matches PostgreSQL: {w['matches_direct']} "
                      f"({w['rows_first_query']} rows)."]
        lines.append("")
    inv = result.get("invalidation")
    if inv:
        lines += ["## `fast` cross-instance invalidation (UPDATE acknowledged by A → B serves "
                  "the new value)", ""]
        if inv.get("skipped"):
            lines += [f"Skipped: {inv['skipped']}", ""]
            verdicts.append("fast invalidation p99: not measured (psycopg missing)")
        else:
            lines += ["| phase | samples | p50 ms | p90 ms | p99 ms | max ms | stale window p50 / p99 "
                      "/ max ms | first poll fresh | timeouts | wrong values | B hit RTT p50 ms "
                      "| B miss RTT p50 ms | B lookups/s |",
                      "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
            for phase in ("idle", "loaded"):
                if phase not in inv:
                    continue
                s = inv[phase]["summary"]
                label = phase if phase == "idle" else (f"{phase} ({args.clients} pgbench clients "
                                                       "reading through B)")
                lines.append(f"| {label} | {s['samples']} | {fmt_ms(s.get('p50_ms'))} | "
                             f"{fmt_ms(s.get('p90_ms'))} | {fmt_ms(s.get('p99_ms'))} | "
                             f"{fmt_ms(s.get('max_ms'))} | {fmt_ms(s.get('stale_window_p50_ms'))} / "
                             f"{fmt_ms(s.get('stale_window_p99_ms'))} / "
                             f"{fmt_ms(s.get('stale_window_max_ms'))} | {s['first_poll_fresh']} | "
                             f"{s['timeouts']} | {s['wrong_value_samples']} | "
                             f"{fmt_ms(s['hit_rtt_p50_ms'])} | {fmt_ms(s.get('fresh_poll_rtt_p50_ms'))} | "
                             f"{s['B_lookups_per_s']:,} |")
                p99 = s.get("p99_ms_incl_timeouts")
                verdicts.append(
                    f"fast invalidation p99 ({phase}): "
                    + ("no sample converged" if p99 is None else
                       ("∞ (timeouts)" if p99 == float("inf") else f"{p99:.2f} ms"))
                    + f" (need ≤ {ACCEPT_P99_MS:.0f} ms): **{'pass' if s.get('pass') else 'FAIL'}**")
            lines += ["", "Latency is from the UPDATE's acknowledgement on A to the first read "
                      "through B that returns the new value (B polled back to back; the "
                      "resolution is one B round trip), as the issue defines it; it includes the "
                      "round trip of that last read, a miss that goes to PostgreSQL (\"B miss "
                      "RTT\"). \"stale window\" is from the ack to the sending of that read: how "
                      "long B could still answer the old value (0 when the first read after the "
                      "ack was already fresh). \"first poll fresh\" counts samples "
                      f"where B never served the old value after the ack; timeouts = still "
                      f"stale after {args.poll_timeout} s."
                      + (" With fewer than 100 samples p99 is the maximum." if args.samples < 100
                         else ""), ""]
    if verdicts:
        lines += ["## Issue 6 acceptance (this run)", ""] + [f"- {v}" for v in verdicts] + [""]
    if result.get("problems"):
        lines += ["## Problems and observations (from pgmemo's counters and the checks)", ""] + [f"- {p}" for p in result["problems"]] + [""]
    lines.append(f"Raw numbers: `{result.get('json', '?')}`")
    return "\n".join(lines)


def find_problems(result):
    """Things that look wrong in pgmemo itself, from the counters and the checks."""
    probs = []
    tp = result.get("throughput", {})
    for mode, cell in tp.get("cells", {}).items():
        for r in cell.get("warmups", []) + cell.get("runs", []):
            if r.get("error"):
                probs.append(f"-M {mode} {r['target']}: {r['error']}")
            c = r.get("counters", {})
            for k in ("l2_error", "l2_refused", "l2_breaker_open", "l2_writes_dropped",
                      "bumps_failed", "counter_read_errors", "breaker_changes", "cache_bypasses"):
                if c.get(k):
                    when = (f"rep {r['rep'] + 1}" if "rep" in r
                            else f"warm-up {r.get('attempt', 1)}")
                    probs.append(f"-M {mode} {r['target']} {when}: {k} = {c[k]:.0f}"
                                 + (" (write queue full or breaker open)"
                                    if k == "l2_writes_dropped" else ""))
        s = cell.get("summary", {})
        for t in ("strict", "strict_l2only", "fast"):
            m = s.get(t, {}).get("served_from_cache")
            if m and m["median"] < 0.9:
                probs.append(f"-M {mode} {t}: only {100 * m['median']:.1f} % of transactions "
                             "served from cache")
        m = s.get("strict_l2only", {}).get("served_from_l2")
        if m and m["median"] < 0.9:
            probs.append(f"-M {mode} strict_l2only: only {100 * m['median']:.1f} % served from Redis")
    w = result.get("compression", {}).get("wide_reads")
    if w:
        if not w["matches_direct"] or not w["repeats_identical"]:
            probs.append("wide reads through strict differ from PostgreSQL or between repeats")
        if w["ratio"] is None or w["ratio"] <= 1.0:
            probs.append(f"wide reads not compressed in Redis (raw {w['raw_bytes']:.0f} B, "
                         f"stored {w['stored_bytes']:.0f} B)")
    inv = result.get("invalidation", {})
    for phase in ("idle", "loaded"):
        s = inv.get(phase, {}).get("summary")
        if not s:
            continue
        if s["timeouts"]:
            probs.append(f"invalidation ({phase}): {s['timeouts']} samples still stale on B "
                         f"after {inv['poll_timeout_s']} s")
        if s["wrong_value_samples"]:
            probs.append(f"invalidation ({phase}): {s['wrong_value_samples']} samples read a value "
                         "that was neither the old nor the new one")
        if s["second_read_differs"]:
            probs.append(f"invalidation ({phase}): {s['second_read_differs']} second reads differ "
                         "from the first")
        for who in ("counters_A", "counters_B"):
            c = s.get(who, {})
            for k in ("l2_error", "l2_refused", "bumps_failed", "breaker_changes",
                      "cache_bypasses"):
                if c.get(k):
                    probs.append(f"invalidation ({phase}) {who[-1]}: {k} = {c[k]:.0f}"
                                 + (" (the background load's shape)"
                                    if k == "cache_bypasses" and phase == "loaded" else ""))
        if phase == "idle" and s["samples"] and s["counters_B"].get("l1_hits", 0) < s["samples"]:
            probs.append(f"invalidation (idle): B had only {s['counters_B'].get('l1_hits', 0):.0f} "
                         f"L1 hits over {s['samples']} samples (the second read should hit)")
    return probs


def start_ceilings(st, exe, redis_port):
    for name, (mode, threads, yields, layout) in CEILINGS.items():
        port = stackmod.free_port()
        argv = [exe, f"127.0.0.1:{port}", f"127.0.0.1:{redis_port}", mode, str(threads),
                str(yields), layout]
        out = open(st.tmp / f"{name}.stdout", "wb")
        proc = st.spawn(name, argv, lambda p: st._stop_simple(p, signal.SIGTERM), stdout=out)
        out.close()
        deadline = time.monotonic() + 20
        while "ready" not in (st.tmp / f"{name}.stdout").read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start: {st.tail(name + '.log', 5)}")
            time.sleep(0.05)
        st.ports[name] = port
        st.configs[name] = {"command": shlex.join(str(a) for a in argv), "pid": proc.pid}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, help="interleaved repetitions (3; --quick 1)")
    ap.add_argument("--duration", type=int, help="seconds per pgbench run (10; --quick 3)")
    ap.add_argument("--warmup", type=int, help="seconds of one untimed run per target and mode "
                    "(5; --quick 3; 0 = none)")
    ap.add_argument("--clients", type=int, default=8, help="pgbench clients (8)")
    ap.add_argument("--samples", type=int, help="invalidation samples per phase (200; --quick 50)")
    ap.add_argument("--poll-timeout", type=float, default=2.0,
                    help="seconds B may stay stale before a sample counts as a timeout (2)")
    ap.add_argument("--quick", action="store_true", help="1 rep, 3 s runs, 50 samples")
    ap.add_argument("--pgmemo-bin")
    ap.add_argument("--no-build", action="store_true",
                    help="never run cargo; a stale target/release/pgmemo is used and flagged")
    ap.add_argument("--redis-bin", default="redis-server")
    ap.add_argument("--no-ceiling", action="store_true",
                    help="do not measure the ceilings (bench/ceiling)")
    ap.add_argument("--pg-bin")
    ap.add_argument("--out", default=str(REPO / "bench" / "out"))
    args = ap.parse_args()
    q = args.quick
    args.reps = args.reps if args.reps is not None else (1 if q else 3)
    args.duration = args.duration if args.duration is not None else (3 if q else 10)
    args.warmup = args.warmup if args.warmup is not None else (3 if q else 5)
    args.samples = args.samples if args.samples is not None else (50 if q else 200)
    if args.reps < 1 or args.duration < 1 or args.clients < 1 or args.samples < 1:
        ap.error("--reps, --duration, --clients and --samples must be at least 1")
    redis_exe = args.redis_bin if os.sep in args.redis_bin else shutil.which(args.redis_bin)
    if not redis_exe or not Path(redis_exe).exists():
        sys.exit(f"l2: {args.redis_bin} not found (apt-get install redis-server, or --redis-bin)")
    out = Path(args.out)
    (out / "logs").mkdir(parents=True, exist_ok=True)

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    result = {"command": "python3 " + shlex.join(sys.argv), "cwd": os.getcwd(),
              "started": datetime.datetime.now().isoformat(timespec="seconds"),
              "args": vars(args)}
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    result["json"] = str(out / f"l2-{stamp}.json")
    st = Stack(argparse.Namespace(upstream_via="tcp", pgmemo_bin=args.pgmemo_bin,
                                  no_build=args.no_build), find_pg_bin(args.pg_bin), out)
    ok = False
    try:
        exe, note = pgmemo_exe(st, args)
        st.start_postgres()
        redis_port = start_redis(st, redis_exe)
        result["setup"] = {
            "postgres": st.configs["postgres"]["version"],
            "redis": st.configs["redis"]["version"],
            "loadavg": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
            "pgmemo": str(exe), "pgmemo_note": note,
            "pgmemo_mtime": datetime.datetime.fromtimestamp(exe.stat().st_mtime)
            .isoformat(timespec="seconds")}
        for name, (ns, consistency, l1) in PGMEMO_TARGETS.items():
            start_pgmemo(st, exe, name, redis_port, ns, consistency, l1)
        if not args.no_ceiling:
            start_ceilings(st, stackmod.bench_tool("ceiling", args.no_build), redis_port)
        sampler = ProcSampler()
        throughput(st, args, sampler, result)
        compression(st, result)
        invalidation(st, args, exe, redis_port, result)
        try:
            result["redis_after"] = {"memory": redis_info(redis_port, "memory").get("used_memory_human"),
                                     "keyspace": redis_info(redis_port, "keyspace"),
                                     "evicted_keys": redis_info(redis_port, "stats").get("evicted_keys")}
        except (OSError, RuntimeError) as e:
            result["redis_after"] = {"error": str(e)}
        ok = True
    except KeyboardInterrupt as e:
        result["error"] = f"interrupted ({e})"
        log(result["error"])
    except Exception as e:  # noqa: BLE001 — keep what was measured, say why it stopped
        result["error"] = f"{type(e).__name__}: {e}"
        result["traceback"] = traceback.format_exc()
        log(result["traceback"])
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # finish the clean-up whatever arrives now
        st.configs.setdefault("redis", {})
        result["configs"] = {k: v for k, v in st.configs.items()}
        for name in list(PGMEMO_TARGETS) + ["fast_a", "redis", "bgload"] + list(CEILINGS):
            for suffix in (".log", ".stdout"):
                src = st.tmp / (name + suffix)
                if src.exists():
                    (out / "logs" / f"l2-{name}{suffix}").write_bytes(src.read_bytes()[-(1 << 20):])
        st.close()
    result["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
    tp = result.get("throughput", {})
    for cell in tp.get("cells", {}).values():
        if "summary" not in cell and cell["runs"]:  # interrupted in this cell: what it has
            cell["summary"] = summarize_cell(cell["runs"], tp["reps"],
                                             list(dict.fromkeys(r["target"] for r in cell["runs"])))
    result["problems"] = find_problems(result)
    Path(result["json"]).write_text(json.dumps(result, indent=2, default=str))
    print(report(result, args))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
