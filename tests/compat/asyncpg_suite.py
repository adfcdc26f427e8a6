#!/usr/bin/env python3
"""asyncpg's own test suite as a standing check on pgmemo (issue 16).

Installs the pinned asyncpg (the library with pip, the suite's `tests/` from its source
distribution on PyPI) into a cache directory outside the repository, then, inside a network
namespace that has only loopback (so the suite's deliberately unroutable addresses never
leave the machine), runs the suite twice, each time against a fresh throwaway PostgreSQL 15
(`wal_level = logical`, as the Rust test harness starts it):

  direct   the suite talks to PostgreSQL itself;
  pgmemo   the suite talks to pgmemo (default configuration: cache on, CDC auto) in front
           of its own fresh PostgreSQL.

It prints both sets of failing tests (fail or error) with their messages and the
differences, and both wall times and their ratio. Exit status: 0 when the sets are equal
(and, with --max-ratio R, pgmemo's time is within R x direct), 1 when they differ, 2 on a
setup problem. Tests listed in asyncpg_exclude.txt are not run for either target.

usage: asyncpg_suite.py --pgmemo PATH [--pg-bin DIR] [--cache-dir DIR] [--max-ratio R]
                        [--keep] [--only ID_PREFIX ...] [--json OUT]

Needs root (network namespace; PostgreSQL then runs as the `postgres` OS user through
runuser), python3 with pip, util-linux `unshare`, and the PostgreSQL server binaries.
"""

import argparse
import fcntl
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tarfile
import tempfile
import time

ASYNCPG_VERSION = "0.32.0"
# What the suite imports beyond asyncpg and the standard library (its `test` dependency
# group pins distro ~= 1.9; the linters, uvloop and the GSSAPI packages are not needed: the
# tests that use them are excluded or skip themselves).
SUITE_DEPS = ["distro==1.9.0"]
HERE = os.path.dirname(os.path.abspath(__file__))
RUNNER = os.path.join(HERE, "asyncpg_runner.py")
EXCLUDE_FILE = os.path.join(HERE, "asyncpg_exclude.txt")
READY_PREFIX = "pgmemo listening on "
# The whole suite takes a few minutes per target; a run past this is killed and reported.
TARGET_TIMEOUT = int(os.environ.get("PGMEMO_COMPAT_TARGET_TIMEOUT", "1200"))
# A test with no result after this long is killed (the runner's faulthandler watchdog) and
# recorded as an error; the rest of the suite then runs in a new runner process. Direct, the
# slowest test takes about 6 s.
HANG_SECONDS = int(os.environ.get("PGMEMO_COMPAT_HANG_SECONDS", "120"))
# A runner that died (the hang watchdog) is restarted on the rest at most this often.
MAX_RESTARTS = 10


def die_with_parent_sig(sig):
    """prctl(PR_SET_PDEATHSIG): the kernel sends SIG to this process when its parent dies."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, int(sig), 0, 0, 0)


def die_with_parent():
    """preexec_fn: SIGKILL this child when the process that started it dies, so nothing
    outlives a killed check."""
    die_with_parent_sig(signal.SIGKILL)


def log(msg):
    print(msg, flush=True)


def fail_setup(msg):
    log(f"SETUP ERROR: {msg}")
    sys.exit(2)


# ---------------------------------------------------------------- installation (outside)


def pip_flags(install=True):
    flags = ["--no-input", "--disable-pip-version-check", "--quiet"]
    if not install:
        return flags
    help_text = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--help"],
        capture_output=True,
        text=True,
    ).stdout
    if "--break-system-packages" in help_text:
        flags.append("--break-system-packages")
    return flags


def install(cache_dir):
    """CACHE/asyncpg-VERSION/{lib,src}: the library (pip --target) and the unpacked
    sdist's tests/. Idempotent; concurrent callers serialise on a lock file."""
    os.environ["PIP_ROOT_USER_ACTION"] = "ignore"
    base = os.path.join(cache_dir, f"asyncpg-{ASYNCPG_VERSION}+" + "+".join(SUITE_DEPS))
    os.makedirs(base, exist_ok=True)
    lib = os.path.join(base, "lib")
    src = os.path.join(base, "src")
    with open(os.path.join(base, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.isdir(lib):
            tmp = tempfile.mkdtemp(dir=base, prefix="lib.")
            log(f"installing asyncpg=={ASYNCPG_VERSION} into {lib}")
            r = subprocess.run(
                [sys.executable, "-m", "pip", "install", *pip_flags()]
                + ["--target", tmp, f"asyncpg=={ASYNCPG_VERSION}", *SUITE_DEPS]
            )
            if r.returncode != 0:
                shutil.rmtree(tmp, ignore_errors=True)
                fail_setup(f"pip install asyncpg=={ASYNCPG_VERSION} failed")
            os.rename(tmp, lib)
        if not os.path.isdir(src):
            tmp = tempfile.mkdtemp(dir=base, prefix="src.")
            log(f"downloading the asyncpg {ASYNCPG_VERSION} source distribution")
            r = subprocess.run(
                [sys.executable, "-m", "pip", "download", *pip_flags(install=False)]
                + ["--no-binary", ":all:", "--no-deps"]
                + ["-d", tmp, f"asyncpg=={ASYNCPG_VERSION}"]
            )
            sdists = [f for f in os.listdir(tmp) if f.endswith(".tar.gz")]
            if r.returncode != 0 or not sdists:
                shutil.rmtree(tmp, ignore_errors=True)
                fail_setup(f"pip download of the asyncpg=={ASYNCPG_VERSION} sdist failed")
            prefix = f"asyncpg-{ASYNCPG_VERSION}/tests/"
            with tarfile.open(os.path.join(tmp, sdists[0])) as tar:
                members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
                for m in members:
                    m.name = m.name[len(f"asyncpg-{ASYNCPG_VERSION}/") :]
                tar.extractall(os.path.join(tmp, "suite"), members=members)
            os.rename(os.path.join(tmp, "suite"), src)
            shutil.rmtree(tmp, ignore_errors=True)
    check = subprocess.run(
        [sys.executable, "-c", "import asyncpg, sys; print(asyncpg.__version__, asyncpg.__file__)"],
        env={**os.environ, "PYTHONPATH": lib},
        capture_output=True,
        text=True,
    )
    if check.returncode != 0 or not check.stdout.startswith(ASYNCPG_VERSION + " " + lib):
        fail_setup(f"the installed asyncpg is not the pinned one: {check.stdout}{check.stderr}")
    return lib, src


# ---------------------------------------------------------------- inside the namespace


def loopback_up():
    """`ip link set lo up` without iproute2: SIOCGIFFLAGS/SIOCSIFFLAGS on "lo"."""
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16sh22x", b"lo", 0)
        flags = struct.unpack("16sh22x", fcntl.ioctl(s, siocgifflags, ifreq))[1]
        fcntl.ioctl(s, siocsifflags, struct.pack("16sh22x", b"lo", flags | iff_up))


def check_isolated():
    """The namespace must have no route out: an unroutable address fails at once."""
    names = sorted(name for _, name in socket.if_nameindex())
    if names != ["lo"]:
        fail_setup(f"network namespace has interfaces {names}, expected only lo")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        try:
            s.connect(("192.0.2.1", 5432))  # TEST-NET-1: no route here
            fail_setup("a connection to 192.0.2.1 succeeded inside the namespace")
        except OSError:
            pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_bin_dir(given):
    candidates = [given] if given else []
    candidates += ["/usr/lib/postgresql/15/bin"]
    for d in candidates:
        if d and os.path.exists(os.path.join(d, "postgres")):
            return d
    fail_setup("PostgreSQL 15 server binaries not found (/usr/lib/postgresql/15/bin)")


class Postgres:
    """A throwaway PostgreSQL in DIR/pg, run as the postgres OS user when we are root."""

    def __init__(self, bin_dir, workdir):
        self.bin = bin_dir
        self.dir = os.path.join(workdir, "pg")
        self.data = os.path.join(self.dir, "data")
        self.sock = os.path.join(self.dir, "sock")
        self.log_path = os.path.join(self.dir, "postgres.log")
        self.port = None
        self.proc = None
        os.makedirs(self.sock)
        os.chmod(workdir, 0o755)
        os.chmod(self.dir, 0o755)
        if os.geteuid() == 0:
            import pwd

            pw = pwd.getpwnam("postgres")
            for path in (self.dir, self.sock):
                os.chown(path, pw.pw_uid, pw.pw_gid)

    def cmd(self, *args):
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        return prefix + [os.path.join(self.bin, args[0]), *args[1:]]

    def start(self):
        r = subprocess.run(
            self.cmd("initdb", "-D", self.data, "-U", "postgres", "-A", "trust", "-E", "UTF8",
                     "--locale=C.UTF-8", "--no-sync"),
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            fail_setup(f"initdb failed: {r.stderr}")
        self.port = free_port()
        conf = (
            "listen_addresses = '127.0.0.1'\n"
            f"port = {self.port}\n"
            f"unix_socket_directories = '{self.sock}'\n"
            "max_connections = 100\n"
            "wal_level = logical\n"
            "max_wal_senders = 10\n"
            "max_replication_slots = 10\n"
            "fsync = off\n"
            "synchronous_commit = off\n"
            "full_page_writes = off\n"
            # asyncpg's own test clusters run with jit off (its timing tests).
            "jit = off\n"
            "logging_collector = off\n"
        )
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            f.write("\n" + conf)
        with open(os.path.join(self.data, "pg_hba.conf"), "w") as f:
            f.write(
                "local all all trust\n"
                "host all all 127.0.0.1/32 trust\n"
                "host replication all 127.0.0.1/32 trust\n"
            )
        # The postmaster runs as our child (no pg_ctl, which detaches it into a session of its
        # own) and dies with us.
        self.log = open(self.log_path, "w")
        # As root: the postgres OS user set by Popen itself (not runuser, whose own process
        # would be the one the parent-death signal reaches), before preexec_fn runs.
        as_postgres = {"user": "postgres", "group": "postgres", "extra_groups": []}
        self.proc = subprocess.Popen([os.path.join(self.bin, "postgres"), "-D", self.data],
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, preexec_fn=die_with_parent,
                                     **(as_postgres if os.geteuid() == 0 else {}))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                fail_setup(f"postgres exited ({self.proc.returncode}):\n{self.log_tail()}")
            try:
                with open(os.path.join(self.data, "postmaster.pid")) as f:
                    lines = f.read().splitlines()
                if len(lines) >= 8 and lines[7].strip() == "ready":
                    return
            except OSError:
                pass
            time.sleep(0.05)
        fail_setup(f"postgres not ready after 60 s:\n{self.log_tail()}")

    def log_tail(self, n=40):
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def stop(self):
        if self.port is None or self.proc is None:
            return
        self.port = None
        self.proc.send_signal(signal.SIGQUIT)  # immediate shutdown
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Pgmemo:
    def __init__(self, binary, workdir, upstream_port):
        self.binary = binary
        self.log_path = os.path.join(workdir, "pgmemo.log")
        self.upstream = f"postgres://postgres@127.0.0.1:{upstream_port}/postgres"
        self.proc = None
        self.port = None

    def start(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("PGMEMO_")}
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [self.binary, "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
             "--upstream", self.upstream],
            stdout=subprocess.PIPE,
            stderr=self.log,
            env=env,
            text=True,
            preexec_fn=die_with_parent,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            if line.startswith(READY_PREFIX):
                addr = line[len(READY_PREFIX) :].split()[0]
                self.port = int(addr.rsplit(":", 1)[1])
                return
        self.stop()
        fail_setup(f"pgmemo did not print its ready line; log:\n{self.log_tail()}")

    def log_tail(self, n=40):
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self.proc = None


def read_results(path):
    started, ended = [], {}
    if not os.path.exists(path):
        return started, ended
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if obj["event"] == "start":
                started.append(obj["id"])
            else:
                ended[obj["id"]] = obj
    return started, ended


def run_suite(target, port, lib, src, workdir, only):
    """Runs the suite against 127.0.0.1:PORT; returns (results by id, wall seconds)."""
    out = os.path.join(workdir, f"{target}.jsonl")
    console = os.path.join(workdir, f"{target}.out")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "PGMEMO_"))}
    env.update(
        PGHOST="127.0.0.1",
        PGPORT=str(port),
        PGUSER="postgres",
        PGDATABASE="postgres",
        PYTHONPATH=lib,
        PYTHONUNBUFFERED="1",
        PYTHONDONTWRITEBYTECODE="1",
        PGMEMO_COMPAT_HANG_SECONDS=str(HANG_SECONDS),
    )
    exclude = EXCLUDE_FILE
    if only:
        # --only: run just these (for debugging one test); the exclusions still apply.
        env["PGMEMO_COMPAT_ONLY"] = ",".join(only)
    start = time.monotonic()
    deadline = start + TARGET_TIMEOUT
    skip = []
    restarts = 0
    with open(console, "a") as cons:
        while True:
            args = [sys.executable, RUNNER, src, exclude, out]
            if skip:
                args += ["--skip", *skip]
            proc = subprocess.Popen(args, env=env, stdout=cons, stderr=subprocess.STDOUT,
                                    start_new_session=True, preexec_fn=die_with_parent)
            try:
                proc.wait(timeout=max(1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            started, ended = read_results(out)
            unfinished = [t for t in started if t not in ended]
            if proc.returncode == 0 or time.monotonic() >= deadline:
                for t in unfinished:
                    with open(out, "a") as f:
                        f.write(json.dumps({"event": "end", "id": t, "status": "error",
                                            "message": "killed: the target run's time limit",
                                            "seconds": 0}) + "\n")
                break
            # The runner died (a hang past its watchdog): record the hung test, go on.
            restarts += 1
            for t in unfinished:
                with open(out, "a") as f:
                    f.write(json.dumps({"event": "end", "id": t, "status": "error",
                                        "message": f"killed: no result within {HANG_SECONDS} s "
                                                   "(its stacks are in the console log)",
                                        "seconds": 0}) + "\n")
            if restarts > MAX_RESTARTS:
                break
            skip = list(set(started))
    wall = time.monotonic() - start
    _, ended = read_results(out)
    return ended, wall


def failing(results):
    return {t: r for t, r in results.items() if r["status"] in ("fail", "error")}


def counts(results):
    c = {}
    for r in results.values():
        c[r["status"]] = c.get(r["status"], 0) + 1
    return ", ".join(f"{k} {v}" for k, v in sorted(c.items()))


def one_target(target, args, lib, src, workdir):
    tdir = os.path.join(workdir, target)
    os.makedirs(tdir)
    pg = Postgres(pg_bin_dir(args.pg_bin), tdir)
    memo = None
    try:
        pg.start()
        port = pg.port
        if target == "pgmemo":
            memo = Pgmemo(args.pgmemo, tdir, pg.port)
            memo.start()
            port = memo.port
        log(f"--- {target}: suite against 127.0.0.1:{port} (PostgreSQL on {pg.port})")
        results, wall = run_suite(target, port, lib, src, tdir, args.only)
        alive = memo is None or memo.proc.poll() is None
        if not alive:
            log(f"!!! pgmemo exited during the run ({memo.proc.returncode}); log tail:\n"
                f"{memo.log_tail()}")
        log(f"--- {target}: {len(results)} tests ({counts(results)}) in {wall:.1f} s")
        return results, wall, alive
    finally:
        if memo:
            memo.stop()
        pg.stop()


def report(direct, pgmemo, wall_d, wall_p, max_ratio):
    fd, fp = failing(direct), failing(pgmemo)
    log("")
    log(f"=== failing direct ({len(fd)}):")
    for t in sorted(fd):
        log(f"  {t}: {fd[t]['status']}: {fd[t]['message']}")
    log(f"=== failing through pgmemo ({len(fp)}):")
    for t in sorted(fp):
        log(f"  {t}: {fp[t]['status']}: {fp[t]['message']}")
    only_p = sorted(set(fp) - set(fd))
    only_d = sorted(set(fd) - set(fp))
    log(f"=== fail only through pgmemo ({len(only_p)}):")
    for t in only_p:
        log(f"  {t}: {fp[t]['status']}: {fp[t]['message']}")
    log(f"=== fail only direct ({len(only_d)}):")
    for t in only_d:
        state = pgmemo.get(t, {}).get("status", "not run")
        log(f"  {t}: {fd[t]['status']}: {fd[t]['message']} (through pgmemo: {state})")
    ran_d, ran_p = set(direct), set(pgmemo)
    if ran_d != ran_p:
        log(f"=== tests recorded on one target only: direct {sorted(ran_d - ran_p)}, "
            f"pgmemo {sorted(ran_p - ran_d)}")
    # Where the time went: the tests that slowed down most.
    slow = sorted(
        ((pgmemo[t]["seconds"] - direct[t]["seconds"], t) for t in ran_d & ran_p),
        reverse=True,
    )[:10]
    log("=== slowest through pgmemo relative to direct (pgmemo - direct seconds):")
    for delta, t in slow:
        log(f"  {delta:+7.2f} s  {t} ({direct[t]['seconds']:.2f} -> {pgmemo[t]['seconds']:.2f})")
    ratio = wall_p / wall_d if wall_d > 0 else float("inf")
    log("")
    log(f"runtime: direct {wall_d:.1f} s, pgmemo {wall_p:.1f} s, ratio {ratio:.2f}"
        + (f" (bound {max_ratio})" if max_ratio else " (not asserted)"))
    same = not only_p and not only_d and ran_d == ran_p
    log(f"result: failing sets {'EQUAL' if same else 'DIFFER'}: direct {len(fd)}, "
        f"pgmemo {len(fp)}, only through pgmemo {len(only_p)}, only direct {len(only_d)}")
    ok = same
    if max_ratio and ratio > max_ratio:
        log(f"result: runtime ratio {ratio:.2f} above the bound {max_ratio}")
        ok = False
    return ok, {
        "asyncpg": ASYNCPG_VERSION,
        "wall_direct": wall_d,
        "wall_pgmemo": wall_p,
        "ratio": ratio,
        "failing_direct": fd,
        "failing_pgmemo": fp,
        "only_pgmemo": only_p,
        "only_direct": only_d,
        "counts_direct": counts(direct),
        "counts_pgmemo": counts(pgmemo),
    }


def inside(args):
    # Killed from outside (a test's timeout, Ctrl-C, the outer process dying): unwind, so
    # the finally blocks stop PostgreSQL and pgmemo and remove the work directory.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    die_with_parent_sig(signal.SIGTERM)
    loopback_up()
    check_isolated()
    workdir = tempfile.mkdtemp(prefix="pgmemo-compat-", dir=args.workdir or "/tmp")
    os.chmod(workdir, 0o755)  # PostgreSQL runs as another user below it
    keep = args.keep
    try:
        # Each target gets a fresh server: the suite creates and drops databases and roles.
        direct, wall_d, _ = one_target("direct", args, args.lib, args.src, workdir)
        if args.direct_only:
            fd = failing(direct)
            log(f"=== failing direct ({len(fd)}), {wall_d:.1f} s:")
            for t in sorted(fd):
                log(f"  {t}: {fd[t]['status']}: {fd[t]['message']}")
            return 0
        pgmemo, wall_p, alive = one_target("pgmemo", args, args.lib, args.src, workdir)
        ok, summary = report(direct, pgmemo, wall_d, wall_p, args.max_ratio)
        if not alive:
            ok = False
        if args.json:
            with open(args.json, "w") as f:
                json.dump(summary, f, indent=1)
        if not ok:
            keep = True
            log(f"logs kept in {workdir}")
        return 0 if ok else 1
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pgmemo", required=True, help="the pgmemo binary")
    p.add_argument("--pg-bin", help="PostgreSQL server binaries (default /usr/lib/postgresql/15/bin)")
    p.add_argument("--cache-dir", default=os.environ.get("PGMEMO_COMPAT_CACHE",
                                                          "/tmp/pgmemo-compat-cache"))
    p.add_argument("--max-ratio", type=float, help="fail when pgmemo's wall time > R x direct")
    p.add_argument("--keep", action="store_true", help="keep the logs and results")
    p.add_argument("--workdir", help="parent of the run's temp directory (default /tmp)")
    p.add_argument("--only", nargs="*", default=[], help="run only tests with these id prefixes")
    p.add_argument("--json", help="write a summary here")
    p.add_argument("--direct-only", action="store_true",
                   help="only the direct run (learning the baseline; compares nothing)")
    p.add_argument("--in-netns", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--lib", help=argparse.SUPPRESS)
    p.add_argument("--src", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.in_netns:
        return inside(args)
    if os.geteuid() != 0:
        fail_setup("run as root: the suite runs in a network namespace of its own "
                   "(unshare -n) and PostgreSQL as the postgres OS user")
    if not os.access(args.pgmemo, os.X_OK):
        fail_setup(f"pgmemo binary not executable: {args.pgmemo}")
    if shutil.which("unshare") is None:
        fail_setup("unshare (util-linux) not found")
    lib, src = install(args.cache_dir)
    cmd = ["unshare", "--net", "--", sys.executable, os.path.abspath(__file__), "--in-netns",
           "--lib", lib, "--src", src, "--pgmemo", os.path.abspath(args.pgmemo)]
    if args.pg_bin:
        cmd += ["--pg-bin", args.pg_bin]
    if args.max_ratio:
        cmd += ["--max-ratio", str(args.max_ratio)]
    if args.keep:
        cmd.append("--keep")
    if args.workdir:
        cmd += ["--workdir", os.path.abspath(args.workdir)]
    if args.json:
        cmd += ["--json", os.path.abspath(args.json)]
    if args.only:
        cmd += ["--only", *args.only]
    if args.direct_only:
        cmd.append("--direct-only")
    return subprocess.run(cmd).returncode


if __name__ == "__main__":
    sys.exit(main())
