#!/usr/bin/env python3
"""Soak (issue 22): --minutes of mixed load through pgmemo with faults injected on a schedule,
sampled every 10 s into a CSV and an SVG plot, then judged against the issue's acceptance.

The stack (bench/stack.py, bench/l2.py, bench/cdc.py): a throwaway PostgreSQL 15 with fsync
and synchronous_commit on (checked), wal_level = logical, max_prepared_transactions = 20,
pgbench scale 10; a redis-server without persistence (the shared tier); pgmemo (release build)
with the Redis tier (`consistency = "strict"`) and change data capture on for `postgres`.

The load, all through pgmemo for the whole run:
- pgbench, one process per protocol mode (-M simple, extended, prepared), each --clients
  clients at --rate transactions/s (open loop, -R: a stall shows as latency), the scripts
  point read (bench/workloads/point.sql), heavy read (heavy.sql: GROUP BY over 100k rows) and
  a write (update.sql) weighted 94/1/5; run in segments of 60 s (pgbench does not reconnect
  after PostgreSQL restarts) with a per-transaction log (-l);
- the staleness checker (`examples/staleness.rs`, `--duration`): concurrent clients reading
  and writing its own schema in every protocol, two of them straight to PostgreSQL so only
  the change stream tells pgmemo about their writes; every stale, phantom or leaked read and
  every error is printed as it happens with the wall clock;
- connection churn: a raw-socket client connects, runs a point read (simple or extended
  protocol alternately), disconnects; every third one sends a heavy read and drops the socket
  without reading or a Terminate;
- cancels: `SELECT pg_sleep(10)` (simple and extended alternately), cancelled 0.3 s later
  through pgmemo; the only right answer is 57014 well before 10 s.
Faults, on a schedule scaled to the run (`--minutes 60`: the issue's):
- SIGHUP to pgmemo every minute, the file's `cache.ttl` and `catalog.poll_interval`
  alternating (each reload must be counted ok in pgmemo_config_reloads_total);
- DDL every 3 minutes (a quarter of the run if shorter), alternately through pgmemo and
  directly: ALTER TABLE pgbench_accounts ADD / DROP COLUMN, CREATE / DROP INDEX on
  pgbench_branches;
- Redis restarted once, at 1/3 (killed, back on the same port 2 s later, empty);
- PostgreSQL restarted once, at 2/3 (fast shutdown, back 2 s later). Errors from the stop to
  --grace seconds after it answers again are expected and counted apart; no other error is.
With --contention a busy loop runs pinned on every CPU for the whole load.

Every 10 s: pgmemo's RSS, open fds, threads, tokio tasks (pgmemo_runtime_alive_tasks),
sessions and L1 size; TPS and p50/p99/p99.9/max latency per 10 s by completion time (pgbench
logs; measured from each transaction's scheduled start, so queueing behind a slow one counts,
per script too), the point reads' service time (from when pgbench sent them: p99 and max),
the longest gap between two completed transactions of one pgbench client, transactions
pgbench skipped, the hit ratio, the checker's operations and violations, errors expected and
unexpected, pgmemo's WARN/ERROR log lines, and what was injected. Output: bench/soak/soak[-contention]-<time>.csv,
.svg (the plot) and .json (verdicts, events, every unexpected error's text, pgmemo's counters).

Verdicts (exit 1 when one fails): 0 unexpected errors; 0 stale, phantom or leaked reads; RSS
within +-10 % of its value at the settle point (5 minutes; a third of shorter runs); no fd or
task growth (the highest count of the last quarter not above the highest of the first
quarter after the settle point, plus a small allowance for connections being opened at that
moment) and no session left 10 s after the load stopped; with --contention, no point read
slower than --stall-ms (service time) outside the restart and DDL windows (the stall
detector; always reported). Standard library only.
"""

import argparse
import datetime
import json
import math
import os
import re
import shlex
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
import stack as stackmod  # noqa: E402
from cdc import metric, metrics, start_pgmemo  # noqa: E402
from firstquery import Conn, ProtocolError, cstr, msg, one_connection  # noqa: E402
from l2 import SECRET, redis_cmd, start_redis  # noqa: E402
from run import ProcSampler  # noqa: E402
from stack import REPO, Stack, client_env, find_pg_bin, log  # noqa: E402

WORKLOADS = REPO / "bench" / "workloads"
SCRIPTS = ("point", "heavy", "update")  # pgbench script numbers 0, 1, 2 in the log
WEIGHTS = (94, 1, 5)
MODES = ("simple", "extended", "prepared")
SAMPLE_S = 10
SEGMENT_S = 60
CANCEL_CODE = "57014"
# Allowances for the growth verdict: connections being opened or closed at a sampling instant
# (churn, cancels, a pgbench segment starting) move fds and tasks by a few.
FD_SLACK, TASK_SLACK = 8, 8
# What the staleness checker's schema needs (README, "The staleness checker"): its audit
# trigger's writes declared, else every counter update flushes the whole cache, and its tenant
# view cacheable (it calls current_setting).
CHECKER_CONFIG = ('[[functions.writes]]\nfunction = "public.counters_audit_fn"\n'
                  'tables = ["public.counters_audit"]\n\n'
                  '[[rules]]\ntable = "public.iso_tenant_view"\nallow_stable_functions = true\n')
PG_EXTRA = {"wal_level": "logical", "max_wal_senders": "10", "max_replication_slots": "10",
            "max_prepared_transactions": "20"}


def now():
    return time.time()


# --- what happened, stamped ---------------------------------------------------------------
class Events:
    """Everything the threads report, stamped with the wall clock; judged at the end, when
    the restart windows are known."""

    def __init__(self):
        self.lock = threading.Lock()
        self.errors = []      # (t, source, text)
        self.injected = []    # (t, kind, detail)
        self.windows = []     # (start, end, kind): errors inside are expected
        self.ddl_windows = []  # (start, end): lock waits behind DDL are PostgreSQL's
        self.counts = {}      # name -> [(t, n)]

    def error(self, source, text, t=None):
        with self.lock:
            self.errors.append((t or now(), source, text[:500]))

    def inject(self, kind, detail=""):
        with self.lock:
            self.injected.append((now(), kind, detail))
        log(f"inject {kind} {detail}")

    def count(self, name, n=1, t=None):
        with self.lock:
            self.counts.setdefault(name, []).append((t or now(), n))

    def expected(self, t):
        return any(a <= t <= b for a, b, _ in self.windows)


# --- latency histograms ---------------------------------------------------------------------
class Hist:
    """Latencies (µs) in log bins 2 % wide, plus the exact max: percentiles to 2 %."""
    BASE = math.log(1.02)

    def __init__(self):
        self.bins, self.n, self.max = {}, 0, 0

    def add(self, us):
        b = int(math.log(max(us, 1)) / self.BASE)
        self.bins[b] = self.bins.get(b, 0) + 1
        self.n += 1
        self.max = max(self.max, us)

    def merge(self, other):
        for b, c in other.bins.items():
            self.bins[b] = self.bins.get(b, 0) + c
        self.n += other.n
        self.max = max(self.max, other.max)

    def pct(self, q):
        """The q-quantile in ms (upper edge of its bin, capped at the max), or None."""
        if not self.n:
            return None
        rank, seen = q * self.n, 0
        for b in sorted(self.bins):
            seen += self.bins[b]
            if seen >= rank:
                return min(math.exp((b + 1) * self.BASE), self.max) / 1000
        return self.max / 1000


class Latencies:
    """Per 10-s bucket (by completion time) and script: a histogram; per bucket the longest
    gap between two completions of one client (a stalled worker stalls its sessions only)."""

    def __init__(self, t0):
        self.t0, self.lock = t0, threading.Lock()
        self.buckets = {}  # (bucket, script) -> Hist
        self.gaps = {}     # bucket -> (gap ms, client label, end time)
        self.skipped = {}  # bucket -> transactions pgbench skipped (over --latency-limit late)
        # Service time (latency less schedule lag) per (bucket, script), and per bucket the
        # slowest point read: the stall detector's measure (a point read is a hit or an index
        # lookup; a stalled worker shows as one that took seconds).
        self.svc = {}
        self.point_worst = {}  # bucket -> (service ms, client label, completion time)
        self.all = Hist()

    def bucket(self, t):
        return int((t - self.t0) // SAMPLE_S)

    def add_log(self, path, label, events):
        """One pgbench per-transaction log: `client txn latency_us script epoch us [lag]`."""
        local, last, gaps, skipped, svc, worst = {}, {}, [], {}, {}, {}
        try:
            lines = path.read_text().splitlines()
        except OSError as e:
            events.error("soak", f"cannot read pgbench log {path}: {e}")
            return
        for line in lines:
            f = line.split()
            if len(f) < 6:
                continue
            if f[2] == "skipped" and f[4].isdigit():
                b = self.bucket(int(f[4]))
                skipped[b] = skipped.get(b, 0) + 1
            if not f[2].isdigit():
                continue  # a failed or skipped transaction has no latency
            client, lat, script = f[0], int(f[2]), int(f[3])
            done = int(f[4]) + int(f[5]) / 1e6
            key = (self.bucket(done), SCRIPTS[script] if script < len(SCRIPTS) else "other")
            local.setdefault(key, Hist()).add(lat)
            service = lat - (int(f[6]) if len(f) > 6 and f[6].isdigit() else 0)
            svc.setdefault(key, Hist()).add(service)
            if script == 0 and service / 1000 > worst.get(key[0], (0,))[0]:
                worst[key[0]] = (service / 1000, f"{label} client {client}", done)
            if client in last:
                gaps.append((done - last[client], f"{label} client {client}", done))
            last[client] = done
        with self.lock:
            for key, h in local.items():
                self.buckets.setdefault(key, Hist()).merge(h)
                self.all.merge(h)
            for key, h in svc.items():
                self.svc.setdefault(key, Hist()).merge(h)
            for b, w in worst.items():
                if w[0] > self.point_worst.get(b, (0,))[0]:
                    self.point_worst[b] = w
            for b, n in skipped.items():
                self.skipped[b] = self.skipped.get(b, 0) + n
            for gap, who, end in gaps:
                b = self.bucket(end)
                if gap * 1000 > self.gaps.get(b, (0,))[0]:
                    self.gaps[b] = (gap * 1000, who, end)

    def of(self, b, scripts=SCRIPTS, service=False):
        h, table = Hist(), self.svc if service else self.buckets
        with self.lock:
            for s in scripts:
                if (b, s) in table:
                    h.merge(table[(b, s)])
        return h


# --- the load -----------------------------------------------------------------------------
class Soak:
    def __init__(self, args, st, out_dir):
        self.args, self.st, self.out_dir = args, st, out_dir
        self.ev = Events()
        self.stop = threading.Event()
        self.threads = []
        self.checker_proc = None
        self.checker_last = {}
        self.logdir = st.tmp / "pgbench-logs"
        self.logdir.mkdir()
        self.config_variant = 0
        self.samples = []
        self.spinners = []
        self.pgbench_procs = {}  # mode -> the running segment, killed if the run is cut short

    # pgmemo's configuration file, rewritten for each SIGHUP
    def pgmemo_rest(self, variant):
        ttl, poll = (("60s", "5s"), ("61s", "4s"))[variant % 2]
        return (f'[cache]\nsecret = "{SECRET}"\nttl = "{ttl}"\n\n'
                f'[cache.redis]\nurl = "redis://127.0.0.1:{self.st.ports["redis"]}"\n'
                f'namespace = "soak"\nconsistency = "strict"\n\n'
                f'[catalog]\npoll_interval = "{poll}"\n\n' + CHECKER_CONFIG)

    def start_services(self):
        st, args = self.st, self.args
        st.start_postgres()
        port = st.ports["direct"]
        for k in ("fsync", "synchronous_commit"):
            if st.psql(port, f"SHOW {k}") != "on":
                raise RuntimeError(f"{k} is not on")
        start_redis(st, args.redis_server)
        self.admin, self.pgmemo_proc = start_pgmemo(
            st, "pgmemo", "on", rest=self.pgmemo_rest(0), exe=args.pgmemo_bin)
        self.pgmemo_pid = self.pgmemo_proc.pid
        self.port = st.ports["pgmemo"]
        deadline = time.monotonic() + 60
        while metric(metrics(self.admin), "pgmemo_cdc_state", state="streaming") != 1.0:
            if time.monotonic() > deadline:
                raise RuntimeError("pgmemo's change stream never reached streaming")
            time.sleep(0.2)
        log(f"pgmemo pid {self.pgmemo_pid} on {self.port}, admin {self.admin}; CDC streaming")

    # -- pgbench, in segments ------------------------------------------------------------
    def pgbench_loop(self, mode):
        seg = 0
        scripts = []
        for name, w in zip(SCRIPTS, WEIGHTS):
            scripts += ["-f", f"{WORKLOADS / (name + '.sql')}@{w}"]
        while not self.stop.is_set():
            left = self.end - now()
            if left < 3:
                break
            dur = int(min(SEGMENT_S, left))
            prefix = self.logdir / f"{mode}-{seg}"
            argv = [str(self.st.pg_bin / "pgbench"), "-n", "-h", "127.0.0.1", "-p",
                    str(self.port), "-U", "postgres", "-c", str(self.args.clients), "-j", "1",
                    "-T", str(dur), "-R", str(self.args.rate), "-L", str(self.args.latency_limit),
                    "-M", mode, "-l",
                    "--log-prefix", str(prefix)] + scripts + ["postgres"]
            started = now()
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True, env=client_env())
            self.pgbench_procs[mode] = proc
            for line in proc.stderr:  # live, so each error is stamped when it happened
                line = line.strip()
                if not line or "Run was aborted" in line or "results are incomplete" in line:
                    continue
                self.ev.error(f"pgbench-{mode}", line)
            out = proc.stdout.read()
            rc = proc.wait()
            m = re.search(r"number of failed transactions: (\d+)", out)
            if m and int(m.group(1)):
                self.ev.error(f"pgbench-{mode}", f"{m.group(1)} failed transactions in segment")
            for f in sorted(self.logdir.glob(f"{mode}-{seg}.*")):
                self.lat.add_log(f, f"{mode}#{seg}", self.ev)
                f.unlink()
            if rc != 0:
                self.ev.error(f"pgbench-{mode}", f"segment {seg} exited {rc}", t=now())
                if now() - started < 2:
                    time.sleep(1)  # e.g. cannot connect while PostgreSQL restarts
            seg += 1

    # -- the staleness checker -----------------------------------------------------------
    def start_checker(self, seconds):
        a = self.args
        argv = [str(a.checker_bin), "--proxy", f"127.0.0.1:{self.port}",
                "--direct", f"127.0.0.1:{self.st.ports['direct']}", "--admin", self.admin,
                "--duration", str(seconds), "--progress", "1", "--echo",
                "--reconnect-for", "120", "--clients", str(a.checker_clients),
                "--direct-clients", "2", "--write-percent", "10",
                "--proxied-write-percent", "5", "--small-shape",
                "--op-pause-us", str(a.checker_pause_us), "--op-timeout", "30"]
        self.checker_argv = argv
        self.checker_proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                             text=True)
        self.checker_report = []
        started = threading.Event()

        def read_out():
            for line in self.checker_proc.stdout:
                if line.startswith("progress "):
                    kv = dict(p.split("=", 1) for p in line.split()[1:])
                    self.checker_last = {k: int(v) for k, v in kv.items()}
                    started.set()
                else:
                    self.checker_report.append(line.rstrip())

        def read_err():
            for line in self.checker_proc.stderr:
                m = re.match(r"checker-event unix_ms=(\d+) (\w+): (.*)", line.strip())
                if not m:
                    self.checker_report.append("stderr: " + line.rstrip())
                    continue
                t, kind, text = int(m.group(1)) / 1000, m.group(2), m.group(3)
                if kind == "ERROR":
                    self.ev.error("checker", text, t=t)
                else:
                    self.ev.count(f"checker_{kind.lower()}", 1, t=t)
                    self.ev.error(f"checker-{kind.lower()}", text, t=t)

        for fn in (read_out, read_err):
            th = threading.Thread(target=fn, daemon=True)
            th.start()
            self.threads.append(th)
        if not started.wait(120):
            raise RuntimeError("the staleness checker printed no progress in 120 s: "
                               + " | ".join(self.checker_report[-5:]))

    # -- connection churn and cancels ----------------------------------------------------
    def churn_loop(self):
        i = 0
        while not self.stop.is_set():
            i += 1
            try:
                if i % 3 == 0:
                    c = Conn(self.port, 10)
                    try:
                        c.startup("postgres", "postgres")
                        c.sock.sendall(msg(b"Q", cstr(
                            "SELECT bid, count(*) FROM pgbench_accounts GROUP BY bid")))
                    finally:
                        c.sock.close()  # abrupt: no Terminate, reply unread
                else:
                    one_connection(self.port, ("simple", "extended")[i % 2], 1 + i % 10000, 10)
                self.ev.count("churn")
            except (OSError, ProtocolError) as e:
                self.ev.error("churn", f"{type(e).__name__}: {e}")
            self.stop.wait(self.args.churn_pause)

    def cancel_once(self, extended):
        c = Conn(self.port, 20)
        try:
            payload = struct.pack("!i", 196608) + cstr("user") + cstr("postgres")
            payload += cstr("database") + cstr("postgres") + b"\0"
            c.sock.sendall(struct.pack("!i", len(payload) + 4) + payload)
            key = None
            while True:
                kind, body = c.recv_msg()
                if kind == b"K":
                    key = struct.unpack("!ii", body[:8])
                elif kind == b"E":
                    raise ProtocolError(f"login failed: {body!r}")
                elif kind == b"Z":
                    break
            if key is None:
                raise ProtocolError("no BackendKeyData")
            sql = "SELECT pg_sleep(10)"
            if extended:
                c.sock.sendall(msg(b"P", cstr("") + cstr(sql) + struct.pack("!h", 0))
                               + msg(b"B", cstr("") + cstr("") + struct.pack("!hhh", 0, 0, 0))
                               + msg(b"E", cstr("") + struct.pack("!i", 0)) + msg(b"S", b""))
            else:
                c.sock.sendall(msg(b"Q", cstr(sql)))
            t0 = time.monotonic()
            time.sleep(0.3)
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
                s.sendall(struct.pack("!iiii", 16, 80877102, *key))
                s.recv(1)  # the server closes it once the request is on its way
            code = None
            while True:
                kind, body = c.recv_msg()
                if kind == b"E":
                    fields = dict((f[:1], f[1:]) for f in body.split(b"\0") if f)
                    code = fields.get(b"C", b"").decode() + " " + fields.get(b"M", b"").decode()
                elif kind == b"Z":
                    break
            took = time.monotonic() - t0
            if not code or not code.startswith(CANCEL_CODE) or took > 5:
                raise ProtocolError(f"cancel ({'extended' if extended else 'simple'}): "
                                    f"answer {code!r} after {took:.2f} s, want {CANCEL_CODE}")
        finally:
            c.close()

    def cancel_loop(self):
        i = 0
        while not self.stop.wait(self.args.cancel_every):
            i += 1
            try:
                self.cancel_once(i % 2 == 0)
                self.ev.count("cancels")
            except (OSError, ProtocolError) as e:
                self.ev.error("cancel", f"{type(e).__name__}: {e}")

    # -- faults --------------------------------------------------------------------------
    def sighup(self):
        self.config_variant += 1
        cfg = self.st.tmp / "pgmemo.toml"
        # The layout of cdc.start_pgmemo's file, with the other variant of the rest.
        text = cfg.read_text()
        head = text[:text.index("[cache]")]
        cfg.write_text(head + self.pgmemo_rest(self.config_variant))
        os.kill(self.pgmemo_pid, signal.SIGHUP)
        self.ev.inject("sighup", f"variant {self.config_variant % 2}")

    DDL = [("ALTER TABLE pgbench_accounts ADD COLUMN soak_extra int", "add-column"),
           ("CREATE INDEX soak_branches_bbalance ON pgbench_branches (bbalance)", "create-index"),
           ("ALTER TABLE pgbench_accounts DROP COLUMN soak_extra", "drop-column"),
           ("DROP INDEX soak_branches_bbalance", "drop-index")]

    def ddl(self, n):
        sql, kind = self.DDL[n % len(self.DDL)]
        via = ("pgmemo", "direct")[(n // len(self.DDL) + n) % 2]
        port = self.port if via == "pgmemo" else self.st.ports["direct"]
        self.ev.inject("ddl", f"{kind} via {via}")
        last, started = None, now()
        try:
            for attempt in range(3):
                try:
                    self.st.psql(port, f"SET lock_timeout = '3s'; {sql}", timeout=30)
                    return
                except (RuntimeError, subprocess.TimeoutExpired) as e:
                    last = str(e)
                    if "lock timeout" in last:
                        self.ev.count("ddl_lock_timeouts")
                    time.sleep(2)
            self.ev.error("ddl", f"{kind} via {via} failed 3 times: {last}")
        finally:
            # Statements queue behind the DDL's lock (and all miss after its invalidation).
            with self.ev.lock:
                self.ev.ddl_windows.append((started, now() + 2))

    def restart_redis(self):
        st = self.st
        self.ev.inject("redis-restart", "stop")
        for i, (name, proc, stop) in enumerate(st.procs):
            if name == "redis":
                stop()
                argv = shlex.split(st.configs["redis"]["command"])
                time.sleep(2)
                logf = open(st.tmp / "redis.log", "ab")
                new = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
                logf.close()
                st.procs[i] = (name, new, lambda p=new: st._stop_simple(p, signal.SIGTERM))
                break
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if redis_cmd(st.ports["redis"], "PING", timeout=1) == "PONG":
                    break
            except (OSError, RuntimeError):
                time.sleep(0.1)
        else:
            self.ev.error("soak", "redis did not come back within 20 s")
        self.ev.inject("redis-restart", "up")

    def restart_postgres(self):
        st = self.st
        t_stop = now()
        self.ev.inject("pg-restart", "stop (fast shutdown)")
        data = st.tmp / "pgdata"
        for i, (name, proc, stop) in enumerate(st.procs):
            if name == "postgres":
                stop()
                time.sleep(2)
                argv = st.configs["postgres"]["command"].split()
                logf = open(st.tmp / "postgres.log", "ab")
                new = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
                logf.close()
                st.procs[i] = (name, new, lambda p=new: st._stop_postgres(p, data))
                try:
                    st.wait_sql("postgres", st.ports["direct"], new, 60)
                except RuntimeError as e:
                    self.ev.error("soak", f"postgres did not come back: {e}")
                break
        t_up = now()
        self.ev.inject("pg-restart", f"up after {t_up - t_stop:.1f} s")
        with self.ev.lock:
            self.ev.windows.append((t_stop, t_up + self.args.grace, "pg-restart"))

    def scheduler(self):
        """SIGHUPs, DDL and the two restarts at their times (seconds after the start)."""
        T = self.seconds
        plan = []
        hup = min(60.0, T / 6)
        plan += [(k * hup, "sighup", None) for k in range(1, int(T / hup)) if k * hup < T - 5]
        every = min(180.0, T / 4)
        plan += [(k * every, "ddl", k - 1) for k in range(1, int(T / every))
                 if k * every < T - 5]
        plan += [(T / 3, "redis", None), (2 * T / 3, "postgres", None)]
        # Keep DDL out of the restarts' way: a DDL within 20 s of one moves 20 s later.
        for i, (t, kind, n) in enumerate(plan):
            if kind == "ddl" and any(abs(t - r) < 20 for r in (T / 3, 2 * T / 3)):
                plan[i] = (t + 20, kind, n)
        plan.sort(key=lambda p: p[0])
        self.plan = [(round(t, 1), kind) for t, kind, _ in plan]
        for t, kind, n in plan:
            if self.stop.wait(max(0.0, self.t0 + t - now())):
                return
            try:
                if kind == "sighup":
                    self.sighup()
                elif kind == "ddl":
                    self.ddl(n)
                elif kind == "redis":
                    self.restart_redis()
                else:
                    self.restart_postgres()
            except Exception as e:  # a fault that could not be injected is a failed run
                self.ev.error("soak", f"injecting {kind}: {e}\n{traceback.format_exc()}")

    # -- sampling ------------------------------------------------------------------------
    def proc_status(self):
        pid = self.pgmemo_pid
        st = {}
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            k, _, v = line.partition(":")
            st[k] = v.strip()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        return int(st["VmRSS"].split()[0]), fds, int(st["Threads"])

    def scrape(self):
        try:
            text = metrics(self.admin)
        except OSError as e:
            return {"error": str(e)}
        m = {
            "tasks_main": metric(text, "pgmemo_runtime_alive_tasks", runtime="main"),
            "tasks_workers": metric(text, "pgmemo_runtime_alive_tasks", runtime="workers"),
            "sessions": metric(text, "pgmemo_client_connections_active"),
            "cache_mb": metric(text, "pgmemo_cache_bytes") / 2**20,
            "cache_entries": metric(text, "pgmemo_cache_entries"),
            "hits": metric(text, "pgmemo_cache_hits_total"),
            "misses": metric(text, "pgmemo_cache_misses_total"),
            "reloads_ok": metric(text, "pgmemo_config_reloads_total", result="ok"),
            "reloads_all": metric(text, "pgmemo_config_reloads_total"),
            "cdc_streaming": metric(text, "pgmemo_cdc_state", state="streaming"),
            "l2_usable": metric(text, "pgmemo_l2_usable"),
        }
        m["has_tasks"] = "pgmemo_runtime_alive_tasks" in text
        return m

    def sample(self, k):
        """Sample k, at t0 + 10 k: the process, its counters, and what the events say of
        bucket k - 1 (latencies are added when segments end; `finish` fills them in)."""
        t = now()
        row = {"t_s": round(t - self.t0, 1),
               "time": datetime.datetime.fromtimestamp(t).isoformat(timespec="seconds")}
        try:
            row["rss_mb"], row["fds"], row["threads"] = self.proc_status()
            row["rss_mb"] = round(row["rss_mb"] / 1024, 1)
        except (OSError, KeyError, ValueError) as e:
            self.ev.error("soak", f"pgmemo process gone? {e}")
            row["rss_mb"] = row["fds"] = row["threads"] = None
        row["_metrics"] = self.scrape()
        row["_checker"] = dict(self.checker_last)
        self.samples.append(row)

    def sampler(self):
        k = 1
        while not self.stop.wait(max(0.0, self.t0 + k * SAMPLE_S - now())):
            if now() > self.end + 1:
                break
            self.sample(k)
            k += 1

    def spin(self):
        cpus = sorted(os.sched_getaffinity(0))
        for cpu in cpus:
            p = subprocess.Popen([sys.executable, "-c", "while True: pass"],
                                 preexec_fn=lambda c=cpu: os.sched_setaffinity(0, {c}),
                                 stdin=subprocess.DEVNULL)
            self.spinners.append(p)
        log(f"contention: a busy loop pinned on each of CPUs {cpus}")

    # -- the run -------------------------------------------------------------------------
    def run(self):
        a = self.args
        self.seconds = a.minutes * 60
        self.before_idle = self.idle_reading()
        self.ps = ProcSampler()
        self.ps_before = self.ps.snapshot()
        if a.contention:
            self.spin()
        # The checker's own clock starts once its schema is set up; the soak's when it runs.
        self.start_checker(int(self.seconds) + 5)
        self.t0 = now()
        self.end = self.t0 + self.seconds
        self.lat = Latencies(self.t0)
        jobs = [(self.pgbench_loop, (m,)) for m in MODES]
        jobs += [(self.churn_loop, ()), (self.cancel_loop, ()), (self.scheduler, ()),
                 (self.sampler, ())]
        for fn, fa in jobs:
            th = threading.Thread(target=fn, args=fa, daemon=True)
            th.start()
            self.threads.append(th)
        log(f"soak running for {a.minutes} min (until "
            f"{datetime.datetime.fromtimestamp(self.end):%H:%M:%S})"
            + (" under CPU contention" if a.contention else ""))
        while now() < self.end:
            if self.pgmemo_proc.poll() is not None:
                self.ev.error("soak", f"pgmemo exited with code {self.pgmemo_proc.returncode}")
                break
            time.sleep(1)
        self.stop.set()
        for th in self.threads[:]:
            th.join(timeout=90)
        try:
            self.checker_proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.ev.error("soak", "the staleness checker did not end; killed")
            self.checker_proc.kill()
        self.checker_rc = self.checker_proc.returncode
        time.sleep(1)
        for p in self.spinners:
            p.kill()
            p.wait()
        self.ps_after = self.ps.snapshot()
        time.sleep(10)  # let the last sessions and pgmemo's side connections close
        self.after_idle = self.idle_reading()

    def idle_reading(self):
        rss, fds, threads = self.proc_status()
        m = self.scrape()
        tasks = (m["tasks_main"] + m["tasks_workers"]) if m.get("has_tasks") else None
        return {"rss_mb": round(rss / 1024, 1), "fds": fds, "threads": threads,
                "tasks": tasks, "sessions": m.get("sessions")}


# --- judging and writing ------------------------------------------------------------------
def pgmemo_log_levels(path, t0):
    """Per 10-s bucket, pgmemo's WARN and ERROR lines (tracing's default format starts with
    an RFC 3339 UTC time), and the first few of them."""
    counts, firsts = {}, []
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return counts, firsts
    ansi = re.compile(r"\x1b\[[0-9;]*m")
    for line in text.splitlines():
        line = ansi.sub("", line)
        m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?)Z\s+(WARN|ERROR)\b", line)
        if not m:
            continue
        t = datetime.datetime.fromisoformat(m.group(1)[:26]).replace(
            tzinfo=datetime.timezone.utc).timestamp()
        b = int((t - t0) // SAMPLE_S)
        counts[b] = counts.get(b, 0) + 1
        if len(firsts) < 30:
            firsts.append(line[:400])
    return counts, firsts


def build_rows(s, log_counts):
    ev, lat = s.ev, s.lat
    rows = []
    prev = None
    for r in s.samples:
        b = int(round(r["t_s"] / SAMPLE_S)) - 1  # the bucket ending at this sample
        lo, hi = s.t0 + b * SAMPLE_S, s.t0 + (b + 1) * SAMPLE_S
        m, c = r["_metrics"], r["_checker"]
        allh = lat.of(b)
        row = {k: r[k] for k in ("t_s", "time", "rss_mb", "fds", "threads")}
        row["tasks"] = (m.get("tasks_main", 0) + m.get("tasks_workers", 0)
                        if m.get("has_tasks") else None)
        row["sessions"] = m.get("sessions")
        row["cache_mb"] = round(m["cache_mb"], 1) if "cache_mb" in m else None
        row["cache_entries"] = m.get("cache_entries")
        row["tps"] = round(allh.n / SAMPLE_S, 1)
        for script in SCRIPTS:
            row[f"tps_{script}"] = round(lat.of(b, (script,)).n / SAMPLE_S, 1)
        for name, q in (("p50_ms", 0.5), ("p99_ms", 0.99), ("p999_ms", 0.999)):
            v = allh.pct(q)
            row[name] = round(v, 3) if v is not None else None
        row["max_ms"] = round(allh.max / 1000, 3) if allh.n else None
        for script in SCRIPTS:
            v = lat.of(b, (script,)).pct(0.99)
            row[f"p99_{script}_ms"] = round(v, 3) if v is not None else None
        point_svc = lat.of(b, ("point",), service=True)
        v = point_svc.pct(0.99)
        row["svc_p99_point_ms"] = round(v, 3) if v is not None else None
        row["svc_max_point_ms"] = round(point_svc.max / 1000, 3) if point_svc.n else None
        gap = lat.gaps.get(b)
        row["max_client_gap_ms"] = round(gap[0], 1) if gap else None
        row["skipped"] = lat.skipped.get(b, 0)
        if prev is not None and "hits" in m and "hits" in prev:
            dh, dm = m["hits"] - prev["hits"], m["misses"] - prev["misses"]
            row["hit_ratio"] = round(dh / (dh + dm), 4) if dh + dm > 0 else None
        else:
            row["hit_ratio"] = None
        prev = m
        row["checker_ops"] = c.get("ops")
        for k in ("stale", "phantom", "leaked"):
            row[k] = c.get(k)
        errs = [e for e in ev.errors if lo <= e[0] < hi and not e[1].startswith("checker-")]
        row["errors_expected"] = sum(1 for e in errs if ev.expected(e[0]))
        row["errors_unexpected"] = len(errs) - row["errors_expected"]
        row["cancels"] = sum(n for t, n in ev.counts.get("cancels", []) if lo <= t < hi)
        row["churn_conns"] = sum(n for t, n in ev.counts.get("churn", []) if lo <= t < hi)
        row["pgmemo_warn_lines"] = log_counts.get(b, 0)
        row["events"] = " ".join(f"{k}" + (f"({d.split()[0]})" if k == "ddl" else "")
                                 for t, k, d in ev.injected
                                 if lo <= t < hi and not d.startswith("up"))
        rows.append(row)
    return rows


def verdicts(s, rows, args):
    """[(name, ok, text)] against the acceptance."""
    ev, out = s.ev, []
    unexpected = [e for e in ev.errors if not e[1].startswith("checker-") and not ev.expected(e[0])]
    expected = [e for e in ev.errors if not e[1].startswith("checker-") and ev.expected(e[0])]
    by_src = {}
    for e in unexpected:
        by_src[e[1]] = by_src.get(e[1], 0) + 1
    last = s.samples[-1]["_metrics"] if s.samples else {}
    reloads_ok, reloads_all = last.get("reloads_ok", 0), last.get("reloads_all", 0)
    hups = sum(1 for _, k, _ in ev.injected if k == "sighup")
    # Every SIGHUP must have been reloaded, and each successfully (the last one may still be
    # in flight at the last sample: it is at most 1 behind).
    reload_ok = reloads_ok == reloads_all and hups - 1 <= reloads_ok <= hups
    out.append(("errors", not unexpected and reload_ok,
                f"{len(unexpected)} unexpected errors {by_src or ''}, {len(expected)} expected "
                f"(PostgreSQL restart window); {hups} SIGHUPs, reloads ok/all = "
                f"{reloads_ok:.0f}/{reloads_all:.0f}; checker exit {s.checker_rc}"))
    c = s.checker_last
    bad = c.get("stale", 0) + c.get("phantom", 0) + c.get("leaked", 0)
    out.append(("stale reads", bad == 0 and c.get("ops", 0) > 0,
                f"stale {c.get('stale')}, phantom {c.get('phantom')}, leaked {c.get('leaked')} "
                f"over {c.get('ops')} checker operations ({c.get('reads')} reads)"))
    settle = args.settle if args.settle is not None else (
        300 if s.seconds >= 900 else s.seconds / 3)
    after = [r for r in rows if r["t_s"] >= settle and r["rss_mb"]]
    if after:
        ref = after[0]["rss_mb"]
        lo, hi = min(r["rss_mb"] for r in after), max(r["rss_mb"] for r in after)
        dev = max(hi / ref - 1, 1 - lo / ref)
        out.append(("rss band", dev <= 0.10,
                    f"RSS at {after[0]['t_s']:.0f} s {ref:.1f} MB; after it {lo:.1f}-{hi:.1f} MB "
                    f"= {dev * 100:+.1f} % at most (limit 10 %); settle point {settle:.0f} s"))
        q = max(1, len(after) // 4)
        first, last = after[:q], after[-q:]
        for key, slack in (("fds", FD_SLACK), ("tasks", TASK_SLACK), ("threads", 0)):
            if any(r[key] is None for r in after):
                out.append((f"{key} growth", False, f"{key} not sampled"))
                continue
            a_, b_ = max(r[key] for r in first), max(r[key] for r in last)
            out.append((f"{key} growth", b_ <= a_ + slack,
                        f"max {key} first quarter after settle {a_:.0f}, last quarter {b_:.0f} "
                        f"(allowance {slack}); idle before load {s.before_idle.get(key)}, "
                        f"after {s.after_idle.get(key)}"))
    else:
        out.append(("rss band", False, "no sample after the settle point"))
    left = s.after_idle.get("sessions")
    out.append(("sessions drained", left == 0, f"{left:.0f} sessions open 10 s after the "
                                               "load stopped" if left is not None else "not scraped"))
    # The stall detector: the slowest point read (service time: from when pgbench sent it) and
    # the longest gap between two completions of one pgbench client, outside the restart
    # windows (the fault's) and the DDL windows (PostgreSQL's lock queue).
    excluded = [(a, b_) for a, b_, _ in ev.windows] + ev.ddl_windows

    def outside(end, ms):
        return not any(a <= end and end - ms / 1000 <= b_ for a, b_ in excluded)
    gaps = [g for g in s.lat.gaps.values() if outside(g[2], g[0])]
    gap = max(gaps, default=(0, "-", s.t0))
    points = [w for w in s.lat.point_worst.values() if outside(w[2], w[0])]
    point = max(points, default=(0, "-", s.t0))
    allh = s.lat.all
    text = (f"slowest point read outside restart and DDL windows {point[0]:.0f} ms ({point[1]} "
            f"at {point[2] - s.t0:.0f} s); longest client gap {gap[0]:.0f} ms ({gap[1]} at "
            f"{gap[2] - s.t0:.0f} s); latency from schedule p99 {allh.pct(0.99) or 0:.1f} ms, "
            f"p99.9 {allh.pct(0.999) or 0:.1f} ms, max {allh.max / 1000:.1f} ms over {allh.n} "
            "transactions")
    out.append(("stalls", point[0] <= args.stall_ms or not args.contention,
                text + (f" (limit {args.stall_ms:.0f} ms on the point read)" if args.contention
                        else " (judged only with --contention)")))
    return out


def svg_plot(rows, events, t0, title, path):
    """A self-contained SVG: one panel per measure over minutes, faults as vertical lines."""
    panels = [("RSS and L1 cache (MB)", [("rss_mb", "#1f77b4"), ("cache_mb", "#ff7f0e")], False),
              ("fds / threads / tasks / sessions", [("fds", "#1f77b4"), ("threads", "#ff7f0e"),
                                                     ("tasks", "#2ca02c"), ("sessions", "#9467bd")],
               False),
              ("TPS", [("tps", "#1f77b4")], False),
              ("latency (ms, log)", [("p99_ms", "#1f77b4"), ("svc_p99_point_ms", "#2ca02c"),
                                     ("svc_max_point_ms", "#ff7f0e"),
                                     ("max_client_gap_ms", "#7f7f7f")], True),
              ("errors / stale reads", [("errors_unexpected", "#d62728"),
                                        ("errors_expected", "#ff9896"), ("stale", "#000000")],
               False)]
    W, PH, L, R, TOP = 1000, 150, 70, 170, 40
    H = TOP + len(panels) * (PH + 30) + 20
    xmax = max((r["t_s"] for r in rows), default=60) / 60
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
           f'font-family="sans-serif" font-size="11">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{L}" y="20" font-size="14">{title}</text>']

    def X(minutes):
        return L + (W - L - R) * minutes / max(xmax, 1e-9)

    for i, (name, series, logy) in enumerate(panels):
        top = TOP + i * (PH + 30)
        vals = [r[k] for k, _ in series for r in rows if r.get(k) is not None]
        if logy:
            vals = [v for v in vals if v > 0]
        lo = 0.0 if not logy else (min(vals) if vals else 0.1)
        hi = max(vals) if vals else 1.0
        if logy:
            lo, hi = math.log10(max(lo, 1e-3)), math.log10(max(hi, 1e-3))
        if hi <= lo:
            hi = lo + 1

        def Y(v):
            v = math.log10(max(v, 1e-3)) if logy else v
            return top + PH - PH * (v - lo) / (hi - lo)

        out.append(f'<rect x="{L}" y="{top}" width="{W - L - R}" height="{PH}" fill="none" '
                   'stroke="#999"/>')
        out.append(f'<text x="{L}" y="{top - 5}" font-weight="bold">{name}</text>')
        for frac in (0, 0.5, 1):
            v = lo + (hi - lo) * frac
            label = 10 ** v if logy else v
            y = top + PH - PH * frac
            out.append(f'<text x="{L - 5}" y="{y + 4:.1f}" text-anchor="end">{label:.3g}</text>')
        for t, kind, detail in events:
            if kind == "sighup" or detail.startswith("up"):
                continue
            x = X((t - t0) / 60)
            color = {"ddl": "#bbbbbb", "redis-restart": "#d62728",
                     "pg-restart": "#9467bd"}.get(kind, "#999")
            out.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + PH}" '
                       f'stroke="{color}" stroke-dasharray="4,3"/>')
        for j, (key, color) in enumerate(series):
            pts = [(X(r["t_s"] / 60), Y(r[key])) for r in rows
                   if r.get(key) is not None and (not logy or r[key] > 0)]
            if pts:
                out.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="'
                           + " ".join(f"{x:.1f},{y:.1f}" for x, y in pts) + '"/>')
            out.append(f'<rect x="{W - R + 10}" y="{top + 8 + j * 16}" width="10" height="10" '
                       f'fill="{color}"/><text x="{W - R + 25}" y="{top + 17 + j * 16}">{key}</text>')
        if i == len(panels) - 1:
            for m in range(0, int(xmax) + 1, max(1, int(xmax) // 12 or 1)):
                out.append(f'<text x="{X(m):.1f}" y="{top + PH + 14}" text-anchor="middle">'
                           f'{m}</text>')
            out.append(f'<text x="{(L + W - R) / 2}" y="{top + PH + 28}" text-anchor="middle">'
                       'minutes (dashed: DDL grey, Redis restart red, PostgreSQL restart '
                       'purple)</text>')
    out.append("</svg>")
    path.write_text("\n".join(out))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=60)
    ap.add_argument("--contention", action="store_true",
                    help="a busy loop pinned on every CPU for the whole load")
    ap.add_argument("--rate", type=int, default=200, help="pgbench TPS per protocol mode")
    ap.add_argument("--clients", type=int, default=8, help="pgbench clients per mode")
    ap.add_argument("--latency-limit", type=int, default=5000,
                    help="pgbench -L: a transaction this many ms behind its schedule is skipped "
                         "(counted), so an overloaded box does not pile up lag without bound")
    ap.add_argument("--checker-clients", type=int, default=6)
    ap.add_argument("--checker-pause-us", type=int, default=2000)
    ap.add_argument("--churn-pause", type=float, default=0.1)
    ap.add_argument("--cancel-every", type=float, default=2.0)
    ap.add_argument("--grace", type=float, default=15.0,
                    help="seconds after PostgreSQL answers again that errors are expected")
    ap.add_argument("--settle", type=float,
                    help="seconds before the RSS band and growth are judged (default 300, a "
                         "third of runs under 15 min)")
    ap.add_argument("--stall-ms", type=float, default=1000.0)
    ap.add_argument("--pgmemo-bin", required=True)
    ap.add_argument("--checker-bin", required=True)
    ap.add_argument("--redis-server", default="redis-server")
    ap.add_argument("--pg-bin")
    ap.add_argument("--out", default=str(REPO / "bench" / "soak"))
    args = ap.parse_args()
    out_dir = Path(args.out)
    logs = REPO / "bench" / "out" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    stackmod.PG_SETTINGS.update(PG_EXTRA)
    st = Stack(argparse.Namespace(upstream_via="tcp"), find_pg_bin(args.pg_bin), logs.parent)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = out_dir / f"soak{'-contention' if args.contention else ''}-{stamp}"

    def on_term(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)
    s = Soak(args, st, out_dir)
    failed_to_run = None
    try:
        s.start_services()
        s.run()
    except (Exception, KeyboardInterrupt) as e:
        failed_to_run = f"{type(e).__name__}: {e}"
        log(f"soak failed to run: {failed_to_run}\n{traceback.format_exc()}")
        s.stop.set()
    finally:
        for p in s.spinners + list(s.pgbench_procs.values()):
            if p.poll() is None:
                p.kill()
        if s.checker_proc and s.checker_proc.poll() is None:
            s.checker_proc.kill()
        final_metrics = ""
        try:
            final_metrics = metrics(s.admin)
        except Exception:
            pass
        pgmemo_log = st.tmp / "pgmemo.log"
        log_counts, log_firsts = pgmemo_log_levels(pgmemo_log, getattr(s, "t0", now()))
        st.close()
    if not s.samples:
        print(f"soak: did not run: {failed_to_run}")
        return 2
    rows = build_rows(s, log_counts)
    cols = list(rows[0].keys())
    with open(base.with_suffix(".csv"), "w") as f:
        f.write(",".join(cols) + "\n")
        for r in rows:
            f.write(",".join("" if r[c] is None else str(r[c]).replace(",", ";")
                             for c in cols) + "\n")
    title = (f"pgmemo soak {args.minutes:g} min{' under CPU contention' if args.contention else ''}"
             f", {stamp}")
    svg_plot(rows, s.ev.injected, s.t0, title, base.with_suffix(".svg"))
    if failed_to_run:  # what was sampled is written; the verdicts need the whole run
        print(f"soak: did not run to the end ({failed_to_run}); samples so far in "
              f"{base.with_suffix('.csv')} and {base.with_suffix('.svg')}")
        return 2
    v = verdicts(s, rows, args)
    foreign = s.ps.foreign(s.ps_before, s.ps_after)
    pgmemo_cpu = s.ps.cpu_of(s.pgmemo_pid, s.ps_before, s.ps_after)
    interesting = ("pgmemo_cdc_reconnects_total", "pgmemo_l2_breaker_changes_total",
                   "pgmemo_cache_epoch_bumps_total", "pgmemo_config_reloads_total",
                   "pgmemo_cancel_requests_total", "pgmemo_upstream_connect_errors_total",
                   "pgmemo_session_migrations_total", "pgmemo_l2_bumps_total",
                   "pgmemo_client_connections_total", "pgmemo_cache_bypasses_total",
                   "pgmemo_client_connections_rejected_total", "pgmemo_l2_lookups_total")
    summary = {
        "started": datetime.datetime.fromtimestamp(s.t0).isoformat(timespec="seconds"),
        "args": vars(args), "plan": s.plan, "verdicts": v,
        "checker_command": " ".join(s.checker_argv), "checker_report": s.checker_report,
        "checker_last": s.checker_last,
        "injected": [(round(t - s.t0, 1), k, d) for t, k, d in s.ev.injected],
        "windows": [(round(a - s.t0, 1), round(b - s.t0, 1), k) for a, b, k in s.ev.windows],
        "ddl_windows": [(round(a - s.t0, 1), round(b - s.t0, 1)) for a, b in s.ev.ddl_windows],
        "unexpected_errors": [(round(t - s.t0, 1), src, txt) for t, src, txt in s.ev.errors
                              if not src.startswith("checker-") and not s.ev.expected(t)][:200],
        "expected_errors": [(round(t - s.t0, 1), src, txt) for t, src, txt in s.ev.errors
                            if not src.startswith("checker-") and s.ev.expected(t)][:50],
        "violations": [(round(t - s.t0, 1), src, txt) for t, src, txt in s.ev.errors
                       if src.startswith("checker-")][:50],
        "counts": {k: sum(n for _, n in v_) for k, v_ in s.ev.counts.items()},
        "idle_before": s.before_idle, "idle_after": s.after_idle,
        "foreign_cpu_s": foreign[0], "foreign_top": foreign[1], "pgmemo_cpu_s": pgmemo_cpu,
        "skipped_total": sum(s.lat.skipped.values()),
        "pgmemo_warn_lines_first": log_firsts,
        "pgmemo_counters": [line for line in final_metrics.splitlines()
                            if line.startswith(interesting)],
        "postgres": st.configs.get("postgres"), "redis": st.configs.get("redis"),
        "pgmemo": st.configs.get("pgmemo"),
    }
    base.with_suffix(".json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"soak {args.minutes:g} min{' --contention' if args.contention else ''}: "
          f"{base.with_suffix('.csv')}, {base.with_suffix('.svg')}, {base.with_suffix('.json')}")
    print(f"pgmemo used {pgmemo_cpu or 0:.0f} CPU-s; other processes (not this run's) "
          f"{foreign[0]:.0f} CPU-s ({', '.join(foreign[1])}); pgbench skipped "
          f"{summary['skipped_total']} transactions over {args.latency_limit} ms late")
    for t, src, txt in summary["unexpected_errors"][:10]:
        print(f"  unexpected at {t:.0f} s [{src}] {txt}")
    for name, ok, text in v:
        print(f"{'PASS' if ok else 'FAIL'} {name}: {text}")
    return 0 if all(ok for _, ok, _ in v) else 1


if __name__ == "__main__":
    sys.exit(main())
