#!/usr/bin/env python3
"""Macro benchmark: pgbench against Postgres directly and through PgBouncer, pgpool-II and pgmemo.

One command starts a throwaway PostgreSQL, PgBouncer (session mode), pgpool-II (query cache on),
pgmemo and an instant responder (the ceiling for cache hits), runs every pgbench cell
(workload x mode x clients) `reps` times with the targets interleaved inside each repetition,
and writes a markdown report plus raw JSON. Standard library only. See bench/README.md for the
method and the meaning of every column; bench/stack.py starts and stops the services.
"""

import argparse
import atexit
import datetime
import json
import os
import platform
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.dont_write_bytecode = True  # no __pycache__ left in bench/
sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import render, summarize  # noqa: E402  (bench/report.py, next to this file)
from stack import REPO, Stack, client_env, find_pg_bin, log  # noqa: E402

BENCH = REPO / "bench"
WORKLOADS = BENCH / "workloads"
# Interleaving order within a repetition. `limit` is the instant responder: only for CEILING.
TARGETS = ("direct", "pgbouncer", "pgpool", "pgmemo", "pgmemo-base", "limit")
# pgbench script arguments of workloads that are not a single bench/workloads/NAME.sql.
SCRIPTS = {"tpcb": ["-b", "tpcb-like"],
           "mixed": ["-f", f"{WORKLOADS / 'point.sql'}@9", "-f", f"{WORKLOADS / 'update.sql'}@1"]}
# Workloads a cache can answer: every target gets one untimed warm-up run before the cell.
CACHEABLE = {"point", "heavy", "mixed"}
# The responder answers every query with one int4 row: a valid stand-in only for `point`.
CEILING = {"point"}
# Named sets of cells; explicit --workloads/--modes/--clients override a suite's values.
SUITES = {
    "issue3": {"workloads": "point,heavy,mixed", "modes": "simple", "clients": "8"},
    "issue2": {"workloads": "uncacheable,tpcb", "modes": "simple,prepared", "clients": "1,8,32"},
    "issue4": {"workloads": "point,heavy", "modes": "simple,prepared", "clients": "8"},
    "all": {"workloads": "point,heavy,mixed,uncacheable,tpcb", "modes": "simple,prepared",
            "clients": "1,8,32"},
}


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
            procs[int(entry)] = (raw[lpar + 1:rpar], int(fields[1]), int(fields[11]) + int(fields[12]),
                                 int(fields[13]) + int(fields[14]))
        return procs

    def snapshot(self):
        return self._read()

    def cpu_of(self, pid, before, after):
        """CPU seconds a long-lived service used between two snapshots: the process (all its
        threads) and its descendants, so pgpool-II's preforked children count too. Children
        that ended meanwhile (PostgreSQL's backends when their client disconnects) count
        through what their reaped CPU added to their parent's children time; one that
        started before `before` and ended meanwhile is then counted whole (a slight
        over-count: the benchmark's connections start with its runs)."""
        if pid not in before or pid not in after:
            return None
        tree, changed = {pid}, True
        while changed:
            changed = False
            for p, (_, ppid, _, _) in after.items():
                if ppid in tree and p not in tree:
                    tree.add(p)
                    changed = True
        ticks = sum(after[p][2] - (before[p][2] if p in before else 0) for p in tree)
        reaped = sum(after[p][3] - (before[p][3] if p in before else 0) for p in tree)
        return (ticks + reaped) / self.tick

    def foreign(self, before, after):
        """(cpu seconds, top comms) used between two snapshots by processes not ours."""
        mine = {os.getpid()}
        changed = True
        while changed:  # descendants of this process (runuser -> postgres -> backends, ...)
            changed = False
            for pid, (_, ppid, _, _) in after.items():
                if ppid in mine and pid not in mine:
                    mine.add(pid)
                    changed = True
        by_comm = {}
        for pid, (comm, ppid, ticks, _) in after.items():
            if pid in mine or pid == 2 or ppid == 2:  # ours, or a kernel thread
                continue
            prev = before.get(pid)
            delta = ticks - prev[2] if prev and prev[0] == comm else ticks
            if delta > 0:
                by_comm[comm] = by_comm.get(comm, 0) + delta
        total = sum(by_comm.values()) / self.tick
        top = sorted(by_comm.items(), key=lambda kv: -kv[1])[:3]
        return total, [f"{c}:{t / self.tick:.1f}s" for c, t in top]


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


def run_client(argv, duration, sampler, rec):
    """Runs pgbench `argv` (killed after 3 × its duration + 60 s) between two CPU snapshots;
    fills rec's wall_s, foreign_cpu_pct and foreign_top. Returns (output, exit code or
    "timeout", snapshot before, snapshot after)."""
    before = sampler.snapshot()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    try:
        r = subprocess.run(argv, capture_output=True, text=True, env=client_env(),
                           timeout=duration * 3 + 60)
        out, rc = r.stdout + r.stderr, r.returncode
    except subprocess.TimeoutExpired as e:
        out, rc = ((e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes)
                   else (e.stdout or "")), "timeout"
    rec["wall_s"] = round(time.monotonic() - started, 2)
    now = resource.getrusage(resource.RUSAGE_CHILDREN)  # pgbench, reaped above
    rec["client_cpu_s"] = (now.ru_utime + now.ru_stime) - (children.ru_utime + children.ru_stime)
    after = sampler.snapshot()
    foreign, top = sampler.foreign(before, after)
    rec["foreign_cpu_pct"] = round(100 * foreign / (rec["wall_s"] * (os.cpu_count() or 1)), 1)
    rec["foreign_top"] = top
    return out, rc, before, after


def run_pgbench(stack, sampler, target, workload, mode, clients, duration):
    rec = {"target": target, "tps": None, "error": None}
    dead = stack.alive(target)
    if dead:
        rec["error"] = dead
        return rec
    script = SCRIPTS.get(workload, ["-f", str(WORKLOADS / f"{workload}.sql")])
    argv = [str(stack.pg_bin / "pgbench"), "-n", "-h", "127.0.0.1", "-p", str(stack.ports[target]),
            "-U", "postgres", "-c", str(clients), "-j", str(min(clients, 2)), "-T", str(duration),
            "-M", mode] + script + ["postgres"]
    rec["command"] = " ".join(argv)
    counters = stack.cache_counters(target)
    out, rc, before, after = run_client(argv, duration, sampler, rec)
    proxy = stack.service_pid(target)
    if proxy is not None:  # the proxy's own CPU: what it costs the box per transaction
        rec["proxy_cpu_s"] = sampler.cpu_of(proxy, before, after)
    server = stack.postgres_pid()
    if server is not None:  # the postmaster and every backend (the proxies' included)
        rec["postgres_cpu_s"] = sampler.cpu_of(server, before, after)
    rec.update(parse_pgbench(out))
    rec["rc"] = rc
    if rc != 0:
        tail = " | ".join(out.strip().splitlines()[-4:])
        rec["error"] = f"pgbench exit {rc}: {tail}"
    elif rec["failed"]:
        rec["error"] = f"{rec['failed']} failed transactions"
    elif rec["tps"] is None:
        rec["error"] = "no tps line in pgbench output"
    if counters is not None:  # the cache's hits and misses during this run only
        now = stack.cache_counters(target)
        if now is not None:
            rec["cache_hits"], rec["cache_misses"] = now[0] - counters[0], now[1] - counters[1]
            looked_up = rec["cache_hits"] + rec["cache_misses"]
            rec["hit_ratio"] = rec["cache_hits"] / looked_up if looked_up > 0 else None
    for part in ("proxy", "postgres", "client"):
        if rec.get(f"{part}_cpu_s") is not None and rec.get("processed"):
            rec[f"{part}_cpu_us_per_txn"] = round(1e6 * rec[f"{part}_cpu_s"] / rec["processed"], 1)
    if rec["error"]:
        rec["tps"] = None
        dead = stack.alive(target)
        if dead:
            rec["error"] += f"; {dead}"
    return rec


def balances(stack):
    """The four TPC-B sums, read directly from PostgreSQL."""
    port = stack.ports["direct"]
    sums = {}
    for name, sql in (("accounts", "SELECT sum(abalance) FROM pgbench_accounts"),
                      ("branches", "SELECT sum(bbalance) FROM pgbench_branches"),
                      ("tellers", "SELECT sum(tbalance) FROM pgbench_tellers"),
                      ("history", "SELECT coalesce(sum(delta), 0) FROM pgbench_history")):
        sums[name] = int(stack.psql(port, sql) or 0)
    return sums


def check_invariant(stack, before):
    """Each TPC-B transaction adds the same delta to an account, a teller, a branch and the
    history, so over a TPC-B cell the four sums must move alike. Compared as changes because
    `mixed` updates accounts alone."""
    sums = balances(stack)
    delta = {k: sums[k] - before[k] for k in sums}
    return {"sums": sums, "delta": delta, "ok": len(set(delta.values())) == 1}


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
    ap.add_argument("--suite", choices=sorted(SUITES), default="issue3",
                    help="preset cells: issue3 = point,heavy,mixed -M simple 8 clients "
                         "(default); issue2 = uncacheable,tpcb -M simple,prepared 1,8,32 clients; "
                         "all = both workload sets, both modes, 1,8,32 clients")
    ap.add_argument("--duration", type=int, help="seconds per pgbench run (10; --quick 3)")
    ap.add_argument("--reps", type=int, help="repetitions per cell (3; --quick 1)")
    ap.add_argument("--warmup", type=int, help="seconds of the untimed run every target gets "
                    "before each cell of a cacheable workload (5; 0 = none)")
    ap.add_argument("--clients", help="client counts (from --suite; --quick 8)")
    ap.add_argument("--modes", help="pgbench -M values: simple, extended, prepared (from --suite)")
    ap.add_argument("--workloads", help="point, heavy, mixed, uncacheable, tpcb (built-in "
                    "tpcb-like) or the name of any bench/workloads/NAME.sql (from --suite)")
    ap.add_argument("--peers", "--targets", dest="peers",
                    default=",".join(t for t in TARGETS if t != "pgmemo-base"),
                    help="direct plus any of pgbouncer, pgpool, pgmemo, pgmemo-base (with "
                         "--base-bin), limit (the instant responder, run for `point` only); "
                         "default all but pgmemo-base")
    ap.add_argument("--order", choices=("rotate", "fixed"), default="rotate",
                    help="rotate: repetition r starts at target r mod n; fixed: always "
                         "direct, pgbouncer, pgpool, pgmemo, limit")
    ap.add_argument("--upstream-via", choices=("tcp", "unix"), default="tcp",
                    help="how the proxies reach PostgreSQL: loopback TCP (default) or "
                         "the server's Unix socket (proxy on the database host); clients always "
                         "use TCP")
    ap.add_argument("--out", default=str(BENCH / "out"))
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: 3 s, 1 rep, 8 clients (explicit flags still win)")
    ap.add_argument("--pg-bin", help="directory with initdb/postgres/pgbench/psql")
    ap.add_argument("--pgmemo-bin", help="use this pgmemo binary instead of target/release")
    ap.add_argument("--base-bin", help="a second pgmemo binary, run as target pgmemo-base "
                    "(e.g. the build before a change; add pgmemo-base to --peers)")
    ap.add_argument("--pgmemo-config", help="TOML config file for target pgmemo")
    ap.add_argument("--base-config", help="TOML config file for target pgmemo-base (with "
                    "--base-bin the same binary: a feature's cost, e.g. verify mode)")
    ap.add_argument("--pgpool-bin", help="pgpool executable (default: PATH, /usr/sbin/pgpool)")
    ap.add_argument("--pgpool-mode", choices=("streaming_replication", "raw"),
                    default="streaming_replication",
                    help="pgpool-II backend_clustering_mode over its single backend; raw mode "
                         "(4.3.5) leaves extended-protocol writes in an open transaction")
    ap.add_argument("--limit-bin", help="instant responder executable (default: build "
                    "../shared/tools/limit in /tmp/pgmemo-bench-limit)")
    ap.add_argument("--limit-src", help="responder sources (default ../shared/tools/limit)")
    ap.add_argument("--no-build", action="store_true", help="never run cargo build")
    args = ap.parse_args()
    quick = {"duration": 3, "reps": 1, "clients": "8"}
    full = {"duration": 10, "reps": 3}
    for k, v in list((quick if args.quick else full).items()) + list(SUITES[args.suite].items()):
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.warmup is None:
        args.warmup = 5
    clients = [int(c) for c in args.clients.split(",") if c]
    modes = [m for m in args.modes.split(",") if m]
    workloads = [w for w in args.workloads.split(",") if w]
    wanted = [t for t in args.peers.split(",") if t]
    for w in workloads:
        if w not in SCRIPTS and not (WORKLOADS / f"{w}.sql").exists():
            sys.exit(f"bench: unknown workload {w} (no {WORKLOADS / (w + '.sql')})")
    if "direct" not in wanted or any(t not in TARGETS for t in wanted):
        sys.exit(f"bench: --peers must include direct and only name {', '.join(TARGETS)}")
    if not any(w in CEILING for w in workloads):
        wanted = [t for t in wanted if t != "limit"]  # nothing for the responder to answer
    wanted = [t for t in TARGETS if t in wanted]

    out = Path(args.out)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    pg_bin = find_pg_bin(args.pg_bin)
    meta = {"command": "python3 bench/run.py " + " ".join(sys.argv[1:]),
            "started": datetime.datetime.now().isoformat(timespec="seconds"),
            "duration": args.duration, "reps": args.reps, "warmup": args.warmup,
            "clients": clients, "modes": modes, "workloads": workloads, "order": args.order,
            "upstream_via": args.upstream_via, "machine": machine_info(pg_bin)}

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    # SIGINT too: a shell that started us in the background may have set it to "ignore".
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    stack = Stack(args, pg_bin, out)
    atexit.register(stack.close)
    runs, warmups, invariants, summary, complete = [], [], [], [], False
    targets = ["direct"]
    try:
        stack.start_postgres()
        if "pgbouncer" in wanted:
            stack.start_pgbouncer()
        if "pgpool" in wanted:
            stack.start_pgpool(max(clients))
        if "pgmemo" in wanted:
            stack.start_pgmemo(config=args.pgmemo_config)
        if "pgmemo-base" in wanted:
            if not args.base_bin:
                sys.exit("bench: target pgmemo-base needs --base-bin")
            stack.start_pgmemo("pgmemo-base", args.base_bin, args.base_config)
        if "limit" in wanted:
            stack.start_limit()
        for t, why in stack.skipped.items():
            log(f"SKIPPING {t}: {why}")
        targets = [t for t in wanted if t in stack.ports]
        meta["targets"] = targets

        def cell_targets(workload):
            return [t for t in targets if t != "limit" or workload in CEILING]

        sampler = ProcSampler()
        total = sum(len(modes) * len(clients) * args.reps * len(cell_targets(w))
                    for w in workloads)
        n = 0
        for workload in workloads:
            order = cell_targets(workload)
            for mode in modes:
                for c in clients:
                    stack.psql(stack.ports["direct"], "CHECKPOINT")
                    if workload == "tpcb":
                        start_sums = balances(stack)
                    if workload in CACHEABLE and args.warmup > 0:
                        for target in order:  # fill every cache before anything is timed
                            rec = run_pgbench(stack, sampler, target, workload, mode, c,
                                              args.warmup)
                            rec.update(workload=workload, mode=mode, clients=c, rep=0)
                            warmups.append(rec)
                            if rec["error"]:
                                log(f"warm-up {workload} -M {mode} c={c} {target}: {rec['error']}")
                    for rep in range(args.reps):
                        shift = rep % len(order) if args.order == "rotate" else 0
                        for target in order[shift:] + order[:shift]:
                            n += 1
                            rec = run_pgbench(stack, sampler, target, workload, mode, c,
                                              args.duration)
                            rec.update(workload=workload, mode=mode, clients=c, rep=rep + 1)
                            runs.append(rec)
                            shown = rec["error"] or f"{rec['tps']:,.0f} tps"
                            if rec.get("hit_ratio") is not None:
                                shown += f", {100 * rec['hit_ratio']:.1f} % hits"
                            log(f"[{n}/{total}] {workload} -M {mode} c={c} rep {rep + 1} "
                                f"{target}: {shown}")
                    if workload == "tpcb":
                        inv = check_invariant(stack, start_sums)
                        inv.update(mode=mode, clients=c)
                        invariants.append(inv)
                        log(f"TPC-B invariant after -M {mode} c={c}: "
                            f"{'pass' if inv['ok'] else 'FAIL'} {inv['delta']}")
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
             "runs": runs, "warmups": warmups, "summary": summary,
             "invariants": invariants}, indent=2) + "\n")
        print(report)
        log(f"wrote {out / 'report.md'} and {out / 'results.json'}")
    bad = (not complete or any(not i["ok"] for i in invariants)
           or any(r.get("error") for r in runs))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
