#!/usr/bin/env python3
"""Macro benchmark: pgbench directly against Postgres, through PgBouncer and through pgmemo.

One command starts a throwaway PostgreSQL, PgBouncer (session mode, if installed) and pgmemo,
runs every pgbench cell (workload x mode x clients) `reps` times with the targets interleaved
inside each repetition, and writes a markdown report plus raw JSON. Standard library only.
See bench/README.md for the method and the meaning of every column.
"""

import argparse
import atexit
import datetime
import json
import os
import platform
import pwd
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.dont_write_bytecode = True  # no __pycache__ left in bench/
sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import render, summarize  # noqa: E402  (bench/report.py, next to this file)

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
WORKLOADS = BENCH / "workloads"
TARGETS = ("direct", "pgbouncer", "pgmemo")
# Only these two settings differ from initdb's defaults; everything else is stock PostgreSQL 15.
PG_SETTINGS = {"max_connections": "200", "shared_buffers": "256MB"}
SCALE = 10
READY_RE = re.compile(r"pgmemo listening on (\S+):(\d+) admin (\S+):(\d+)")


def log(msg):
    print(f"[bench {datetime.datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_pg_bin(explicit):
    """Directory holding initdb/postgres/pgbench/psql: flag, then PG 15, then newest, then PATH."""
    if explicit:
        return Path(explicit)
    if Path("/usr/lib/postgresql/15/bin/initdb").exists():
        return Path("/usr/lib/postgresql/15/bin")
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    sys.exit("bench: PostgreSQL server binaries (initdb, postgres) not found")


def client_env():
    """The environment for psql/pgbench: no inherited PG* variable may redirect them."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGSSLMODE"] = "disable"  # same plain-TCP leg for every target
    env["PGCONNECT_TIMEOUT"] = "10"
    return env


class ProcSampler:
    """CPU used by processes outside this benchmark's process tree, to flag contended runs."""

    def __init__(self):
        self.tick = os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _read():
        procs = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    raw = f.read().decode("utf-8", "replace")
            except OSError:
                continue
            lpar, rpar = raw.find("("), raw.rfind(")")
            fields = raw[rpar + 2:].split()
            if lpar < 0 or rpar < 0 or len(fields) < 13:
                continue
            procs[int(entry)] = (raw[lpar + 1:rpar], int(fields[1]), int(fields[11]) + int(fields[12]))
        return procs

    def snapshot(self):
        return self._read()

    def cpu_of(self, pid, before, after):
        """CPU seconds one long-lived process (all its threads) used between two snapshots."""
        if pid not in before or pid not in after:
            return None
        return (after[pid][2] - before[pid][2]) / self.tick

    def foreign(self, before, after):
        """(cpu seconds, top comms) used between two snapshots by processes not ours."""
        mine = {os.getpid()}
        changed = True
        while changed:  # descendants of this process (runuser -> postgres -> backends, ...)
            changed = False
            for pid, (_, ppid, _) in after.items():
                if ppid in mine and pid not in mine:
                    mine.add(pid)
                    changed = True
        by_comm = {}
        for pid, (comm, ppid, ticks) in after.items():
            if pid in mine or pid == 2 or ppid == 2:  # ours, or a kernel thread
                continue
            prev = before.get(pid)
            delta = ticks - prev[2] if prev and prev[0] == comm else ticks
            if delta > 0:
                by_comm[comm] = by_comm.get(comm, 0) + delta
        total = sum(by_comm.values()) / self.tick
        top = sorted(by_comm.items(), key=lambda kv: -kv[1])[:3]
        return total, [f"{c}:{t / self.tick:.1f}s" for c, t in top]


class Stack:
    """The throwaway services; `close()` stops them all and removes the temp dir, once."""

    def __init__(self, args, pg_bin, out):
        self.args, self.pg_bin, self.out = args, pg_bin, out
        self.tmp = Path(tempfile.mkdtemp(prefix="pgmemo-bench-", dir="/tmp"))
        self.as_root = os.geteuid() == 0
        self.procs = []  # (name, Popen, stop function), stopped in reverse order
        self.ports = {}
        self.skipped = {}
        self.configs = {}
        self.closed = False
        if self.as_root:
            pw = pwd.getpwnam("postgres")
            os.chown(self.tmp, pw.pw_uid, pw.pw_gid)

    def pg_cmd(self, *argv):
        """Postgres refuses to run as root: drop to the postgres OS user when we are root."""
        return (["runuser", "-u", "postgres", "--"] if self.as_root else []) + [str(a) for a in argv]

    def psql(self, port, sql, timeout=120):
        cmd = [self.pg_bin / "psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
               "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-d", "postgres", "-c", sql]
        r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                           env=client_env(), timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"psql on port {port} failed: {r.stderr.strip()}")
        return r.stdout.strip()

    def wait_sql(self, name, port, proc, timeout):
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with code {proc.returncode} during start-up")
            try:
                return self.psql(port, "SELECT 1", timeout=10)
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                last = str(e)
            time.sleep(0.2)
        raise RuntimeError(f"{name} not answering on port {port} after {timeout}s: {last}")

    # --- PostgreSQL -------------------------------------------------------------------------
    def start_postgres(self):
        data = self.tmp / "pgdata"
        r = subprocess.run(self.pg_cmd(self.pg_bin / "initdb", "-D", data, "-U", "postgres",
                                       "--auth=trust", "-E", "UTF8", "--no-sync"),
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"initdb failed: {r.stderr.strip()}")
        port = free_port()
        settings = {"listen_addresses": "127.0.0.1", "port": str(port),
                    "unix_socket_directories": str(self.tmp), **PG_SETTINGS}
        argv = [self.pg_bin / "postgres", "-D", data]
        for k, v in settings.items():
            argv += ["-c", f"{k}={v}"]
        logf = open(self.tmp / "postgres.log", "wb")
        # A new session keeps the terminal's Ctrl-C away: we stop it ourselves, in order.
        proc = subprocess.Popen(self.pg_cmd(*argv), stdout=logf, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        logf.close()
        self.procs.append(("postgres", proc, lambda: self._stop_postgres(proc, data)))
        self.ports["direct"] = port
        self.wait_sql("postgres", port, proc, 60)
        self.configs["postgres"] = {
            "version": self.psql(port, "SHOW server_version"),
            "command": " ".join(str(a) for a in self.pg_cmd(*argv)),
            "scale": SCALE,
            "non_default": PG_SETTINGS,
            "effective": {k: self.psql(port, f"SHOW {k}") for k in
                          ("max_connections", "shared_buffers", "fsync", "synchronous_commit",
                           "wal_level", "max_wal_size", "checkpoint_timeout", "work_mem",
                           "effective_io_concurrency", "jit")},
        }
        log(f"postgres {self.configs['postgres']['version']} on 127.0.0.1:{port}; pgbench -i -s {SCALE}")
        r = subprocess.run([str(self.pg_bin / "pgbench"), "-i", "-s", str(SCALE), "-q",
                            "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "postgres"],
                           capture_output=True, text=True, env=client_env())
        if r.returncode != 0:
            raise RuntimeError(f"pgbench -i failed: {r.stderr.strip()}")
        # Load the whole data set into shared_buffers so the first run is not the cold one.
        try:
            self.psql(port, "CREATE EXTENSION IF NOT EXISTS pg_prewarm")
            for rel in ("pgbench_accounts", "pgbench_accounts_pkey", "pgbench_branches",
                        "pgbench_tellers"):
                self.psql(port, f"SELECT pg_prewarm('{rel}')")
        except RuntimeError as e:
            log(f"pg_prewarm unavailable ({e}); first runs may read from the OS cache")
        self.psql(port, "CHECKPOINT")

    @staticmethod
    def _stop_postgres(proc, data):
        # SIGINT to the postmaster itself is a fast shutdown; runuser would turn a signal
        # into SIGTERM (smart shutdown, which waits for clients), so bypass it.
        try:
            pid = int((data / "postmaster.pid").read_text().split()[0])
            os.kill(pid, signal.SIGINT)
        except (OSError, ValueError, IndexError):
            pass
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    # --- PgBouncer --------------------------------------------------------------------------
    def start_pgbouncer(self):
        exe = shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer" if
                                             Path("/usr/sbin/pgbouncer").exists() else None)
        if not exe:
            self.skipped["pgbouncer"] = "pgbouncer not installed"
            return
        port = free_port()
        # Both proxies reach PostgreSQL the same way: loopback TCP, or (--upstream-via unix)
        # the server's Unix socket, as when a proxy runs on the database host.
        up_host = self.tmp if self.args.upstream_via == "unix" else "127.0.0.1"
        ini = (f"[databases]\npostgres = host={up_host} port={self.ports['direct']} dbname=postgres\n\n"
               "[pgbouncer]\nlisten_addr = 127.0.0.1\n"
               f"listen_port = {port}\nunix_socket_dir =\n"
               f"auth_type = trust\nauth_file = {self.tmp / 'userlist.txt'}\n"
               "pool_mode = session\nmax_client_conn = 200\ndefault_pool_size = 64\n"
               "server_tls_sslmode = disable\nignore_startup_parameters = extra_float_digits\n")
        (self.tmp / "userlist.txt").write_text('"postgres" ""\n')
        (self.tmp / "pgbouncer.ini").write_text(ini)
        version = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
        argv = [exe] + (["-u", "postgres"] if self.as_root else []) + [str(self.tmp / "pgbouncer.ini")]
        logf = open(self.tmp / "pgbouncer.log", "wb")
        proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        logf.close()
        self.procs.append(("pgbouncer", proc, lambda: self._stop_simple(proc, signal.SIGTERM)))
        try:
            self.wait_sql("pgbouncer", port, proc, 20)
        except RuntimeError as e:
            self.skipped["pgbouncer"] = str(e)
            return
        self.ports["pgbouncer"] = port
        self.configs["pgbouncer"] = {"version": version.splitlines()[0] if version else "?",
                                     "command": " ".join(argv), "ini": ini}
        log(f"pgbouncer on 127.0.0.1:{port}")

    @staticmethod
    def _stop_simple(proc, sig):
        if proc.poll() is None:
            try:
                proc.send_signal(sig)
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    # --- pgmemo -----------------------------------------------------------------------------
    def pgmemo_binary(self):
        """The release binary, rebuilt first when missing or older than the sources."""
        if self.args.pgmemo_bin:
            return Path(self.args.pgmemo_bin)
        exe = REPO / "target" / "release" / "pgmemo"
        sources = [REPO / "Cargo.toml", REPO / "Cargo.lock"] + list((REPO / "src").rglob("*.rs"))
        newest = max((p.stat().st_mtime for p in sources if p.exists()), default=0)
        if exe.exists() and exe.stat().st_mtime >= newest:
            return exe
        if self.args.no_build:
            raise RuntimeError(f"{exe} missing or older than the sources and --no-build given")
        log("building pgmemo: cargo build --release --bin pgmemo (may wait for the cargo lock)")
        blog = self.out / "logs" / "cargo-build.log"
        with open(blog, "wb") as f:
            r = subprocess.run(["cargo", "build", "--release", "--bin", "pgmemo"], cwd=REPO,
                               stdout=f, stderr=subprocess.STDOUT)
        if r.returncode != 0:
            tail = blog.read_text(errors="replace").strip().splitlines()[-15:]
            raise RuntimeError("cargo build failed (exit %d); see %s:\n    %s"
                               % (r.returncode, blog, "\n    ".join(tail)))
        return exe

    def start_pgmemo(self):
        try:
            exe = self.pgmemo_binary()
        except RuntimeError as e:
            self.skipped["pgmemo"] = str(e)
            return
        if self.args.upstream_via == "unix":
            enc = str(self.tmp).replace("/", "%2F")
            upstream = f"postgres://postgres@{enc}:{self.ports['direct']}/postgres"
        else:
            upstream = f"postgres://postgres@127.0.0.1:{self.ports['direct']}/postgres"
        argv = [str(exe), "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
                "--upstream", upstream]
        errf = open(self.tmp / "pgmemo.log", "wb")
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=errf,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        errf.close()
        self.procs.append(("pgmemo", proc, lambda: self._stop_simple(proc, signal.SIGTERM)))
        lines = queue.Queue()

        def drain():  # keep reading stdout for the whole run so the pipe never fills
            with open(self.tmp / "pgmemo.stdout", "wb") as f:
                for line in proc.stdout:
                    f.write(line)
                    f.flush()
                    lines.put(line.decode("utf-8", "replace"))
            lines.put(None)

        threading.Thread(target=drain, daemon=True).start()
        deadline, port = time.monotonic() + 20, None
        while port is None and time.monotonic() < deadline:
            try:
                line = lines.get(timeout=max(0.05, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            m = READY_RE.search(line)
            if m:
                port, admin = int(m.group(2)), f"{m.group(3)}:{m.group(4)}"
        if port is None:
            status = "exited with code %s" % proc.poll() if proc.poll() is not None else "no ready line"
            self.skipped["pgmemo"] = (f"pgmemo did not start within 20 s ({status}); log tail: "
                                      + self.tail("pgmemo.log", 5))
            return
        try:
            self.wait_sql("pgmemo", port, proc, 20)
            self.psql(port, "SELECT count(*) FROM pgbench_branches")
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            self.skipped["pgmemo"] = f"pgmemo started but does not serve queries: {e}"
            return
        self.ports["pgmemo"] = port
        env = {k: v for k, v in os.environ.items() if k.startswith(("PGMEMO_", "RUST_LOG"))}
        self.configs["pgmemo"] = {"command": " ".join(argv), "admin": admin, "env": env,
                                  "binary_mtime": datetime.datetime.fromtimestamp(
                                      exe.stat().st_mtime).isoformat(timespec="seconds")}
        log(f"pgmemo on 127.0.0.1:{port} (admin {admin})")

    def service_pid(self, target):
        """The pid of a proxy target's process (PgBouncer and pgmemo run in the foreground)."""
        for n, proc, _ in self.procs:
            if n == target and target != "direct":
                return proc.pid
        return None

    def alive(self, target):
        name = "postgres" if target == "direct" else target
        for n, proc, _ in self.procs:
            if n == name and proc.poll() is not None:
                return f"{name} exited with code {proc.returncode}"
        return None

    def tail(self, name, n):
        try:
            return " | ".join((self.tmp / name).read_text(errors="replace").strip().splitlines()[-n:])
        except OSError:
            return "(no log)"

    def close(self):
        if self.closed:
            return
        self.closed = True
        for name, proc, stop in reversed(self.procs):
            try:
                stop()
            except Exception as e:  # keep stopping the others whatever happens
                log(f"stopping {name}: {e}")
        logs = self.out / "logs"
        for name in ("postgres.log", "pgbouncer.log", "pgmemo.log", "pgmemo.stdout"):
            src = self.tmp / name
            if src.exists():  # keep the last MiB of each log for post-mortems
                data = src.read_bytes()[-(1 << 20):]
                (logs / name).write_bytes(data)
        shutil.rmtree(self.tmp, ignore_errors=True)


def parse_pgbench(text):
    def grab(pattern, conv=float):
        m = re.search(pattern, text, re.M)
        return conv(m.group(1)) if m else None

    return {
        "tps": grab(r"^tps = ([0-9.]+) \(without initial connection time\)"),
        "latency_ms": grab(r"^latency average = ([0-9.]+) ms"),
        "processed": grab(r"^number of transactions actually processed: (\d+)", int),
        "failed": grab(r"^number of failed transactions: (\d+)", int),
        "conn_ms": grab(r"^initial connection time = ([0-9.]+) ms"),
    }


def run_pgbench(stack, sampler, target, workload, mode, clients, duration):
    rec = {"target": target, "tps": None, "error": None}
    dead = stack.alive(target)
    if dead:
        rec["error"] = dead
        return rec
    script = ["-b", "tpcb-like"] if workload == "tpcb" else ["-f", str(WORKLOADS / f"{workload}.sql")]
    argv = [str(stack.pg_bin / "pgbench"), "-n", "-h", "127.0.0.1", "-p", str(stack.ports[target]),
            "-U", "postgres", "-c", str(clients), "-j", str(min(clients, 2)), "-T", str(duration),
            "-M", mode] + script + ["postgres"]
    rec["command"] = " ".join(argv)
    before = sampler.snapshot()
    started = time.monotonic()
    try:
        r = subprocess.run(argv, capture_output=True, text=True, env=client_env(),
                           timeout=duration * 3 + 60)
        out, rc = r.stdout + r.stderr, r.returncode
    except subprocess.TimeoutExpired as e:
        out, rc = ((e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes)
                   else (e.stdout or "")), "timeout"
    rec["wall_s"] = round(time.monotonic() - started, 2)
    after = sampler.snapshot()
    foreign, top = sampler.foreign(before, after)
    proxy = stack.service_pid(target)
    if proxy is not None:  # the proxy's own CPU: what it costs the box per transaction
        rec["proxy_cpu_s"] = sampler.cpu_of(proxy, before, after)
    rec["foreign_cpu_pct"] = round(100 * foreign / (rec["wall_s"] * (os.cpu_count() or 1)), 1)
    rec["foreign_top"] = top
    rec.update(parse_pgbench(out))
    rec["rc"] = rc
    if rc != 0:
        tail = " | ".join(out.strip().splitlines()[-4:])
        rec["error"] = f"pgbench exit {rc}: {tail}"
    elif rec["failed"]:
        rec["error"] = f"{rec['failed']} failed transactions"
    elif rec["tps"] is None:
        rec["error"] = "no tps line in pgbench output"
    if rec.get("proxy_cpu_s") is not None and rec["processed"]:
        rec["proxy_cpu_us_per_txn"] = round(1e6 * rec["proxy_cpu_s"] / rec["processed"], 1)
    if rec["error"]:
        rec["tps"] = None
        dead = stack.alive(target)
        if dead:
            rec["error"] += f"; {dead}"
    return rec


def check_invariant(stack):
    port = stack.ports["direct"]
    sums = {}
    for name, sql in (("accounts", "SELECT sum(abalance) FROM pgbench_accounts"),
                      ("branches", "SELECT sum(bbalance) FROM pgbench_branches"),
                      ("tellers", "SELECT sum(tbalance) FROM pgbench_tellers"),
                      ("history", "SELECT coalesce(sum(delta), 0) FROM pgbench_history")):
        sums[name] = int(stack.psql(port, sql) or 0)
    return {"sums": sums, "ok": len(set(sums.values())) == 1}


def machine_info(pg_bin):
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    pgbench = subprocess.run([str(pg_bin / "pgbench"), "--version"], capture_output=True, text=True)
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                         text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock"],
                           cwd=REPO, capture_output=True, text=True)
    return {"nproc": os.cpu_count(), "kernel": platform.release(), "cpu": cpu,
            "python": platform.python_version(), "pgbench": pgbench.stdout.strip(),
            "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
            "git_head": (rev.stdout.strip() or "(no commit)")
            + (" + uncommitted changes in src/Cargo.*" if dirty.stdout.strip() else "")}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=int, help="seconds per pgbench run (10; --quick 3)")
    ap.add_argument("--reps", type=int, help="repetitions per cell (3; --quick 1)")
    ap.add_argument("--clients", help="client counts (1,8,32; --quick 8)")
    ap.add_argument("--modes", default="simple,prepared")
    ap.add_argument("--workloads", default="uncacheable,tpcb",
                    help="tpcb (built-in tpcb-like) or the name of bench/workloads/NAME.sql")
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--order", choices=("rotate", "fixed"), default="rotate",
                    help="rotate: repetition r starts at target r mod n; fixed: always "
                         "direct, pgbouncer, pgmemo")
    ap.add_argument("--upstream-via", choices=("tcp", "unix"), default="tcp",
                    help="how PgBouncer and pgmemo reach PostgreSQL: loopback TCP (default) or "
                         "the server's Unix socket (proxy on the database host); clients always "
                         "use TCP")
    ap.add_argument("--out", default=str(BENCH / "out"))
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: 3 s, 1 rep, 8 clients (explicit flags still win)")
    ap.add_argument("--pg-bin", help="directory with initdb/postgres/pgbench/psql")
    ap.add_argument("--pgmemo-bin", help="use this pgmemo binary instead of target/release")
    ap.add_argument("--no-build", action="store_true", help="never run cargo build")
    args = ap.parse_args()
    quick = {"duration": 3, "reps": 1, "clients": "8"}
    full = {"duration": 10, "reps": 3, "clients": "1,8,32"}
    for k, v in (quick if args.quick else full).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    clients = [int(c) for c in args.clients.split(",") if c]
    modes = [m for m in args.modes.split(",") if m]
    workloads = [w for w in args.workloads.split(",") if w]
    wanted = [t for t in args.targets.split(",") if t]
    for w in workloads:
        if w != "tpcb" and not (WORKLOADS / f"{w}.sql").exists():
            sys.exit(f"bench: unknown workload {w} (no {WORKLOADS / (w + '.sql')})")
    if "direct" not in wanted or any(t not in TARGETS for t in wanted):
        sys.exit(f"bench: --targets must include direct and only name {', '.join(TARGETS)}")

    out = Path(args.out)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    pg_bin = find_pg_bin(args.pg_bin)
    meta = {"command": "python3 bench/run.py " + " ".join(sys.argv[1:]),
            "started": datetime.datetime.now().isoformat(timespec="seconds"),
            "duration": args.duration, "reps": args.reps, "clients": clients, "modes": modes,
            "workloads": workloads, "order": args.order, "upstream_via": args.upstream_via, "machine": machine_info(pg_bin)}

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    # SIGINT too: a shell that started us in the background may have set it to "ignore".
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    stack = Stack(args, pg_bin, out)
    atexit.register(stack.close)
    runs, invariants, summary, complete = [], [], [], False
    targets = ["direct"]
    try:
        stack.start_postgres()
        if "pgbouncer" in wanted:
            stack.start_pgbouncer()
        if "pgmemo" in wanted:
            stack.start_pgmemo()
        for t, why in stack.skipped.items():
            log(f"SKIPPING {t}: {why}")
        targets = [t for t in wanted if t in stack.ports]
        meta["targets"] = targets
        sampler = ProcSampler()
        total = len(workloads) * len(modes) * len(clients) * args.reps * len(targets)
        n = 0
        for workload in workloads:
            for mode in modes:
                for c in clients:
                    stack.psql(stack.ports["direct"], "CHECKPOINT")
                    for rep in range(args.reps):
                        shift = rep % len(targets) if args.order == "rotate" else 0
                        for target in targets[shift:] + targets[:shift]:
                            n += 1
                            rec = run_pgbench(stack, sampler, target, workload, mode, c,
                                              args.duration)
                            rec.update(workload=workload, mode=mode, clients=c, rep=rep + 1)
                            runs.append(rec)
                            shown = rec["error"] or f"{rec['tps']:,.0f} tps"
                            log(f"[{n}/{total}] {workload} -M {mode} c={c} rep {rep + 1} "
                                f"{target}: {shown}")
                    if workload == "tpcb":
                        inv = check_invariant(stack)
                        inv.update(mode=mode, clients=c)
                        invariants.append(inv)
                        log(f"TPC-B invariant after -M {mode} c={c}: "
                            f"{'pass' if inv['ok'] else 'FAIL'} {inv['sums']}")
        complete = True
    except KeyboardInterrupt as e:
        log(f"interrupted ({e or 'Ctrl-C'}); cleaning up")
    except Exception as e:
        log(f"error: {e}")
        meta["error"] = str(e)
    finally:
        meta["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
        meta.setdefault("targets", targets)
        skipped, configs = dict(stack.skipped), dict(stack.configs)
        stack.close()
        summary = summarize(runs, meta["targets"])
        report = render(meta, summary, runs, invariants, skipped, configs, complete)
        (out / "report.md").write_text(report + "\n")
        (out / "results.json").write_text(json.dumps(
            {"meta": meta, "complete": complete, "skipped": skipped, "configs": configs,
             "runs": runs, "summary": summary, "invariants": invariants}, indent=2) + "\n")
        print(report)
        log(f"wrote {out / 'report.md'} and {out / 'results.json'}")
    bad = (not complete or any(not i["ok"] for i in invariants)
           or any(r.get("error") for r in runs))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
