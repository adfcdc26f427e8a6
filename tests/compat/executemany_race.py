#!/usr/bin/env python3
"""How often asyncpg's `test_executemany_server_failure_during_writes` would fail, per path.

That test (asyncpg's tests/test_execute.py) pipelines 128 rows of 32 KB through
`executemany`, the second row a unique violation, and asserts that the client noticed the
server's error before its generator had produced the last row ("should stop early"). Whether
it does is a race between the client writing 4 MB and the error travelling back; any relay
between them adds a hop and its socket buffers to that race. This script runs the test's own
steps N times (new connection, CREATE TABLE, executemany, SELECT 1, DROP) against a fresh
throwaway PostgreSQL 15 directly, through pgmemo (default configuration), and through the
plain relays found on PATH (socat: a byte pipe with no logic at all; PgBouncer, session
pooling), and prints per path how many runs reached the last row (the test's failure) and the
median row at which the client stopped. The asyncpg standing check excludes the test for both
targets with this measurement as its reason (asyncpg_exclude.txt).

usage: executemany_race.py --pgmemo PATH [--runs N] [--rounds R] [--cache-dir DIR]

Needs root (PostgreSQL and PgBouncer then run as the `postgres` OS user) and the PostgreSQL
server binaries; installs the pinned asyncpg the way asyncpg_suite.py does.
"""

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

ROWS = 128


async def one_run(asyncpg, port):
    """The test's steps once; returns the row the generator had reached."""
    con = await asyncpg.connect(host="127.0.0.1", port=port, user="postgres",
                                database="postgres")
    try:
        await con.execute("CREATE TABLE exmany (a text, b int PRIMARY KEY)")
        pos = 0

        def gen():
            nonlocal pos
            while pos < ROWS:
                pos += 1
                yield ("a", 0) if pos < 3 else ("a" * 32768, pos)

        try:
            await con.executemany("INSERT INTO exmany VALUES($1, $2)", gen())
            raise SystemExit("executemany succeeded: the duplicate key was not reported")
        except asyncpg.UniqueViolationError:
            pass
        if await con.fetchval("SELECT 1") != 1:
            raise SystemExit("SELECT 1 after the failed pipeline did not return 1")
        await con.execute("DROP TABLE exmany")
        return pos
    finally:
        await con.close()


def loop_main(port, runs):
    """Child process (asyncpg on its PYTHONPATH): prints `reached median`."""
    import asyncpg

    async def go():
        return [await one_run(asyncpg, port) for _ in range(runs)]

    stops = asyncio.run(go())
    print(sum(1 for p in stops if p >= ROWS), statistics.median(stops), flush=True)
    return 0


def measure(lib, port, runs):
    env = {**os.environ, "PYTHONPATH": lib}
    r = subprocess.run([sys.executable, os.path.abspath(__file__), "--loop", str(port),
                        "--runs", str(runs)], env=env, capture_output=True, text=True,
                       timeout=600)
    if r.returncode != 0:
        raise SystemExit(f"loop against port {port} failed:\n{r.stdout}{r.stderr}")
    reached, median = r.stdout.split()
    return int(reached), float(median)


class Relay:
    """A plain relay in front of PostgreSQL: socat or PgBouncer, as found on PATH."""

    def __init__(self, kind, workdir, pg_port):
        from asyncpg_suite import free_port

        self.kind, self.port, self.proc = kind, free_port(), None
        if kind == "socat":
            cmd = ["socat", f"TCP-LISTEN:{self.port},bind=127.0.0.1,reuseaddr,fork",
                   f"TCP:127.0.0.1:{pg_port}"]
            self.proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
        else:
            d = os.path.join(workdir, "pgbouncer")
            os.makedirs(d)
            with open(os.path.join(d, "users.txt"), "w") as f:
                f.write('"postgres" ""\n')
            with open(os.path.join(d, "pgbouncer.ini"), "w") as f:
                f.write(f"[databases]\n* = host=127.0.0.1 port={pg_port}\n[pgbouncer]\n"
                        f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\n"
                        f"auth_type = trust\nauth_file = {d}/users.txt\npool_mode = session\n"
                        "ignore_startup_parameters = extra_float_digits\n")
            as_postgres = {}
            if os.geteuid() == 0:  # PgBouncer refuses to run as root
                import pwd

                pw = pwd.getpwnam("postgres")
                os.chown(d, pw.pw_uid, pw.pw_gid)
                as_postgres = {"user": "postgres", "group": "postgres", "extra_groups": []}
            self.proc = subprocess.Popen(["pgbouncer", os.path.join(d, "pgbouncer.ini")],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         **as_postgres)
        time.sleep(0.5)
        if self.proc.poll() is not None:
            raise SystemExit(f"{kind} did not start")

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pgmemo", help="the pgmemo binary")
    p.add_argument("--runs", type=int, default=100, help="runs per path and round")
    p.add_argument("--rounds", type=int, default=3, help="rounds, the paths interleaved")
    p.add_argument("--paths", default="direct,pgmemo,socat,pgbouncer",
                   help="which paths, comma-separated (socat and pgbouncer only if on PATH)")
    p.add_argument("--cache-dir", default=os.environ.get("PGMEMO_COMPAT_CACHE",
                                                          "/tmp/pgmemo-compat-cache"))
    p.add_argument("--netns", action="store_true",
                   help="run in a network namespace with only loopback, as the suite does "
                        "(its own TCP buffer limits: the kernel's defaults, not the host's)")
    p.add_argument("--in-netns", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--loop", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.loop:
        return loop_main(args.loop, args.runs)
    if not args.pgmemo:
        p.error("--pgmemo is required")
    import asyncpg_suite as suite

    if args.netns:
        suite.install(args.cache_dir)  # pip needs the host's network
        argv = [a for a in sys.argv[1:] if a != "--netns"]
        cmd = ["unshare", "--net", "--", sys.executable, os.path.abspath(__file__),
               "--in-netns", *argv]
        return subprocess.run(cmd).returncode
    if args.in_netns:
        suite.loopback_up()

    # Loads ctypes here: the children's preexec_fn (parent-death signal) runs after the switch
    # to the postgres OS user, where importing it could fail.
    suite.die_with_parent_sig(suite.signal.SIGTERM)
    lib, _ = suite.install(args.cache_dir)
    workdir = tempfile.mkdtemp(prefix="pgmemo-race-")
    os.chmod(workdir, 0o755)
    pg = suite.Postgres(suite.pg_bin_dir(None), workdir)
    memo, relays = None, []
    try:
        pg.start()
        wanted = args.paths.split(",")
        paths = [("direct", pg.port)] if "direct" in wanted else []
        if "pgmemo" in wanted:
            memo = suite.Pgmemo(os.path.abspath(args.pgmemo), workdir, pg.port)
            memo.start()
            paths.append(("pgmemo", memo.port))
        for kind in ("socat", "pgbouncer"):
            if kind in wanted and shutil.which(kind):
                relay = Relay(kind, workdir, pg.port)
                relays.append(relay)
                paths.append((kind, relay.port))
        totals = {name: [0, []] for name, _ in paths}
        for rnd in range(args.rounds):
            for name, port in paths:
                reached, median = measure(lib, port, args.runs)
                totals[name][0] += reached
                totals[name][1].append(median)
                print(f"round {rnd + 1} {name:9} {reached:3}/{args.runs} reached row {ROWS} "
                      f"(the test's failure); median stop row {median:.0f}", flush=True)
        n = args.runs * args.rounds
        print("\npath       reached-last-row  median stop rows per round")
        for name, (reached, medians) in totals.items():
            print(f"{name:9}  {reached:4}/{n} {100 * reached / n:5.1f} %  "
                  + " ".join(f"{m:.0f}" for m in medians))
        return 0
    finally:
        for relay in relays:
            relay.stop()
        if memo:
            memo.stop()
        pg.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
