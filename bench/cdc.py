#!/usr/bin/env python3
"""CDC benchmark (issue 5): commit-to-bump lag under direct writes, and the 90/10 workload with
the change stream on versus off.

Starts a throwaway PostgreSQL (wal_level = logical, synchronous_commit on, pgbench scale 10)
and two pgmemo processes in front of it: `cdc_on` (invalidation.cdc = "on" for database
postgres) and `cdc_off`. Then:

1. Lag: pgbench writes directly on PostgreSQL (UPDATE of one pgbench_accounts row per
   transaction, -M prepared) for --lag-seconds; pgmemo's own histogram
   pgmemo_cdc_commit_to_bump_seconds (the server's commit timestamp to the bump, same machine
   clock) gives p50 and p99 over that run, and pgmemo_cdc_transactions_total must have grown
   by at least the transactions pgbench committed.
No publication: pgmemo's default stream uses the test_decoding plugin (issue 16; with
--publication, a publication over the three pgbench tables with a primary key is created and
named in the config, so the pgoutput path is measured instead).
2. 90/10: pgbench's point read (9) + update (1) mix through each pgmemo, --reps interleaved
   runs of --duration seconds after one warm-up each; medians and the on/off ratio.

Standard library only; writes bench/out/cdc-<time>.json and prints a markdown summary.
"""

import argparse
import datetime
import json
import re
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
import stack as stackmod  # noqa: E402
from run import parse_pgbench  # noqa: E402
from stack import REPO, Stack, client_env, find_pg_bin, log  # noqa: E402

WORKLOADS = REPO / "bench" / "workloads"
MIXED = ["-f", f"{WORKLOADS / 'point.sql'}@9", "-f", f"{WORKLOADS / 'update.sql'}@1"]


def metrics(admin):
    with urllib.request.urlopen(f"http://{admin}/metrics", timeout=5) as r:
        return r.read().decode()


def metric(text, name, **labels):
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def start_pgmemo(st, name, cdc, publication=None, rest="", exe=None):
    """pgmemo as target `name` (`exe`, default this tree's release build) with
    `invalidation.cdc = cdc` and `rest` appended to its config file (rules, other sections)."""
    cfg = st.tmp / f"{name}.toml"
    extra = f'cdc_publication = "{publication}"\n' if publication else ""
    cfg.write_text(f'[invalidation]\ncdc = "{cdc}"\ncdc_databases = ["postgres"]\n{extra}\n{rest}')
    upstream = f"postgres://postgres@127.0.0.1:{st.ports['direct']}/postgres"
    exe = exe or REPO / "target" / "release" / "pgmemo"
    argv = [exe, "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
            "--upstream", upstream, "--config", cfg]
    out = open(st.tmp / f"{name}.stdout", "wb")
    proc = st.spawn(name, argv, lambda p: st._stop_simple(p, stackmod.signal.SIGTERM), stdout=out)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        m = stackmod.READY_RE.search((st.tmp / f"{name}.stdout").read_text(errors="replace"))
        if m:
            st.ports[name] = int(m.group(2))
            return f"{m.group(3)}:{m.group(4)}", proc
        time.sleep(0.1)
    raise RuntimeError(f"{name} did not start: {st.tail(name + '.log', 5)}")


def pgbench(st, port, script, mode, clients, duration, rate=None):
    """One pgbench run (`rate`: its -R, transactions per second over all clients)."""
    argv = [str(st.pg_bin / "pgbench"), "-n", "-h", "127.0.0.1", "-p", str(port), "-U",
            "postgres", "-c", str(clients), "-j", str(min(clients, 2)), "-T", str(duration),
            "-M", mode] + (["-R", str(rate)] if rate is not None else []) + script + ["postgres"]
    r = subprocess.run(argv, capture_output=True, text=True, env=client_env(),
                       timeout=duration * 3 + 60)
    rec = parse_pgbench(r.stdout + r.stderr)
    rec["command"] = " ".join(argv)
    if r.returncode != 0 or rec.get("tps") is None:
        raise RuntimeError(f"pgbench failed: {(r.stdout + r.stderr)[-400:]}")
    return rec


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lag-seconds", type=int, default=20)
    ap.add_argument("--lag-clients", type=int, default=4)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--clients", type=int, default=8)
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
    result = {"started": datetime.datetime.now().isoformat(timespec="seconds"), "args": vars(args)}
    try:
        st.start_postgres()
        result["postgres"] = st.configs["postgres"]
        if args.publication:
            # pgbench_history has no primary key: a publication of its updates would make
            # PostgreSQL refuse UPDATE/DELETE on it, so only the tables with one are named.
            st.psql(st.ports["direct"], "CREATE PUBLICATION bench FOR TABLE pgbench_accounts, "
                                        "pgbench_branches, pgbench_tellers")
        on_admin, _ = start_pgmemo(st, "cdc_on", "on", "bench" if args.publication else None)
        _off_admin, _ = start_pgmemo(st, "cdc_off", "off")
        deadline = time.monotonic() + 30
        while metric(metrics(on_admin), "pgmemo_cdc_state", state="streaming") != 1.0:
            if time.monotonic() > deadline:
                raise RuntimeError("cdc_on never reached streaming")
            time.sleep(0.2)

        # 1. Commit-to-bump lag under direct writes.
        before = metric(metrics(on_admin), "pgmemo_cdc_transactions_total")
        log(f"lag: pgbench update.sql directly, {args.lag_clients} clients, {args.lag_seconds}s")
        w = pgbench(st, st.ports["direct"], ["-f", str(WORKLOADS / "update.sql")], "prepared",
                    args.lag_clients, args.lag_seconds)
        time.sleep(1)
        text = metrics(on_admin)
        q = {p: metric(text, "pgmemo_cdc_commit_to_bump_seconds", quantile=p)
             for p in ("0.5", "0.9", "0.99", "1")}
        streamed = metric(text, "pgmemo_cdc_transactions_total") - before
        result["lag"] = {"write_tps": w["tps"], "committed": w.get("processed"),
                         "streamed_transactions": streamed,
                         "p50_ms": q["0.5"] * 1e3, "p90_ms": q["0.9"] * 1e3,
                         "p99_ms": q["0.99"] * 1e3, "max_ms": q["1"] * 1e3,
                         "command": w["command"]}
        log(f"lag: {result['lag']}")

        # 2. 90/10 through pgmemo with CDC on and off, interleaved.
        runs = {"cdc_on": [], "cdc_off": []}
        for name in runs:
            pgbench(st, st.ports[name], MIXED, "simple", args.clients, 3)  # warm-up
        for rep in range(args.reps):
            order = ["cdc_on", "cdc_off"] if rep % 2 == 0 else ["cdc_off", "cdc_on"]
            for name in order:
                r = pgbench(st, st.ports[name], MIXED, "simple", args.clients, args.duration)
                runs[name].append(r["tps"])
                log(f"90/10 rep {rep + 1} {name}: {r['tps']:.0f} tps")
        med = {k: statistics.median(v) for k, v in runs.items()}
        result["mixed"] = {"runs": runs, "median_tps": med, "ratio_on_off": med["cdc_on"] / med["cdc_off"]}
    finally:
        for name in ("cdc_on.log", "cdc_off.log"):
            src = st.tmp / name
            if src.exists():
                (out / "logs" / name).write_bytes(src.read_bytes()[-(1 << 20):])
        st.close()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    (out / f"cdc-{stamp}.json").write_text(json.dumps(result, indent=2))
    lag, mixed = result.get("lag", {}), result.get("mixed", {})
    print("| measure | value |\n|---|---|")
    if lag:
        print(f"| direct write load | {lag['write_tps']:.0f} TPS ({args.lag_clients} clients, -M prepared) |")
        print(f"| commit-to-bump p50 / p90 / p99 / max | {lag['p50_ms']:.2f} / {lag['p90_ms']:.2f} / "
              f"{lag['p99_ms']:.2f} / {lag['max_ms']:.2f} ms |")
        print(f"| transactions streamed / committed | {lag['streamed_transactions']:.0f} / {lag['committed']} |")
    if mixed:
        m = mixed["median_tps"]
        print(f"| 90/10, {args.clients} clients, -M simple: CDC on / off | {m['cdc_on']:.0f} / "
              f"{m['cdc_off']:.0f} TPS = {mixed['ratio_on_off']:.3f} |")


if __name__ == "__main__":
    main()
