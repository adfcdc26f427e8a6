"""The benchmark's throwaway services: PostgreSQL, PgBouncer, pgpool-II, pgmemo, the responder.

`Stack` starts each one on a free loopback port inside one temp dir, checks that it answers a
query before anything is measured, records how it was configured, reads its cache hit counters
where it has them, and stops everything (in reverse order) on `close()`. A peer that is missing
or does not serve is skipped with the reason recorded, never faked. Standard library only.
"""

import datetime
import os
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
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Only these two settings differ from initdb's defaults; everything else is stock PostgreSQL 15.
PG_SETTINGS = {"max_connections": "200", "shared_buffers": "256MB"}
SCALE = 10
READY_RE = re.compile(r"pgmemo listening on (\S+):(\d+) admin (\S+):(\d+)")
# pgmemo's cache counters on its admin /metrics (Prometheus text). Names may change while the
# cache is being built: a missing metric only means "no hit ratio", never an error.
PGMEMO_HITS_METRIC = "pgmemo_cache_hits_total"
PGMEMO_MISSES_METRIC = "pgmemo_cache_misses_total"
# The instant responder (PERFORMANCE.md "The ceiling"); built in a copy so shared/ stays clean.
LIMIT_SRC = REPO.parent / "shared" / "tools" / "limit"
LIMIT_BUILD = Path(tempfile.gettempdir()) / "pgmemo-bench-limit"


def log(msg):
    print(f"[bench {datetime.datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def bench_tool(name, no_build):
    """The release binary of the measuring crate bench/NAME (built with cargo unless
    no_build; then it must exist)."""
    folder = REPO / "bench" / name
    exe = folder / "target" / "release" / name
    if not no_build:
        r = subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=folder,
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"bench/{name} did not build: " + r.stderr.strip()[-2000:])
    if not exe.exists():
        raise RuntimeError(f"{exe} is missing (build it: cargo build --release in {folder})")
    return exe


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


def find_exe(explicit, name):
    """An executable from a flag, PATH or /usr/sbin (where Debian puts the poolers)."""
    if explicit:
        return explicit if Path(explicit).exists() else None
    return shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists()
                                  else None)


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

    def spawn(self, name, argv, stop, stdout=None):
        """Start a service in its own session (the terminal's Ctrl-C is ours to handle)."""
        logf = open(self.tmp / f"{name}.log", "wb")
        proc = subprocess.Popen([str(a) for a in argv], stdout=stdout or logf,
                                stderr=logf if stdout else subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        logf.close()
        self.procs.append((name, proc, lambda: stop(proc)))
        return proc

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
        proc = self.spawn("postgres", self.pg_cmd(*argv), lambda p: self._stop_postgres(p, data))
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

    def upstream_host(self):
        """Every proxy reaches PostgreSQL the same way: loopback TCP, or (--upstream-via unix)
        the server's Unix socket, as when a proxy runs on the database host."""
        return str(self.tmp) if self.args.upstream_via == "unix" else "127.0.0.1"

    # --- PgBouncer --------------------------------------------------------------------------
    def start_pgbouncer(self):
        exe = find_exe(None, "pgbouncer")
        if not exe:
            self.skipped["pgbouncer"] = ("pgbouncer not found (install the Debian package "
                                         "`pgbouncer`)")
            return
        port = free_port()
        ini = (f"[databases]\npostgres = host={self.upstream_host()} port={self.ports['direct']} "
               "dbname=postgres\n\n[pgbouncer]\nlisten_addr = 127.0.0.1\n"
               f"listen_port = {port}\nunix_socket_dir =\n"
               f"auth_type = trust\nauth_file = {self.tmp / 'userlist.txt'}\n"
               "pool_mode = session\nmax_client_conn = 200\ndefault_pool_size = 64\n"
               "server_tls_sslmode = disable\nignore_startup_parameters = extra_float_digits\n")
        (self.tmp / "userlist.txt").write_text('"postgres" ""\n')
        (self.tmp / "pgbouncer.ini").write_text(ini)
        version = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
        argv = [exe] + (["-u", "postgres"] if self.as_root else []) + [str(self.tmp / "pgbouncer.ini")]
        proc = self.spawn("pgbouncer", argv, lambda p: self._stop_simple(p, signal.SIGTERM))
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

    # --- pgpool-II --------------------------------------------------------------------------
    def start_pgpool(self, max_clients):
        """pgpool-II 4.x in raw mode with its shared-memory query cache, as the cache to beat.

        Runs as the current user (pgpool does not refuse root) in the foreground (`-n`), with
        every path it writes (sockets, pid file, status file, oid dir) inside our temp dir."""
        exe = find_exe(self.args.pgpool_bin, "pgpool")
        if not exe:
            self.skipped["pgpool"] = ("pgpool-II not found: install the Debian package `pgpool2` "
                                      "(apt-get install -y pgpool2) or pass --pgpool-bin PATH")
            return
        d = self.tmp / "pgpool"
        d.mkdir()
        (d / "oiddir").mkdir()
        port, pcp_port = free_port(), free_port()
        # pgpool preforks one process per client: a client beyond num_init_children is not
        # refused but waits in the listen queue, so keep room for pgbench plus our psql probes.
        children = max_clients + 4
        conf = {
            "backend_clustering_mode": f"'{self.args.pgpool_mode}'",
            "listen_addresses": "'127.0.0.1'", "port": port,
            "unix_socket_directories": f"'{d}'",
            "pcp_listen_addresses": "''", "pcp_port": pcp_port, "pcp_socket_dir": f"'{d}'",
            "wd_ipc_socket_dir": f"'{d}'", "pid_file_name": f"'{d / 'pgpool.pid'}'",
            "logdir": f"'{d}'",  # where pgpool_status goes
            "backend_hostname0": f"'{self.upstream_host()}'",
            "backend_port0": self.ports["direct"], "backend_weight0": 1,
            "backend_flag0": "'DISALLOW_TO_FAILOVER'",
            "enable_pool_hba": "off", "pool_passwd": "''", "ssl": "off",
            "num_init_children": children, "max_pool": 1, "connection_cache": "on",
            "child_life_time": 0,  # do not recycle idle children in the middle of a cell
            "load_balance_mode": "off", "health_check_period": 0, "sr_check_period": 0,
            # In streaming_replication mode pgpool asks each backend pg_is_in_recovery() at
            # start to find the primary, as this user (the default 'nobody' does not exist).
            "sr_check_user": "'postgres'", "sr_check_password": "''",
            "failover_on_backend_error": "off", "use_watchdog": "off",
            "memory_cache_enabled": "on", "memqcache_method": "'shmem'",
            "memqcache_total_size": "256MB", "memqcache_max_num_cache": 1000000,
            "memqcache_expire": 60, "memqcache_auto_cache_invalidation": "on",
            "memqcache_maxcache": "400kB", "memqcache_cache_block_size": "1MB",
            "memqcache_oiddir": f"'{d / 'oiddir'}'",
            "log_destination": "'stderr'", "log_min_messages": "warning",
        }
        text = "".join(f"{k} = {v}\n" for k, v in conf.items())
        (d / "pgpool.conf").write_text(text)
        (d / "pcp.conf").write_text("")
        (d / "pool_hba.conf").write_text("local all all trust\nhost all all 127.0.0.1/32 trust\n")
        version = subprocess.run([exe, "--version"], capture_output=True, text=True)
        argv = [exe, "-n", "-f", d / "pgpool.conf", "-F", d / "pcp.conf", "-a", d / "pool_hba.conf"]
        started = time.time()
        proc = self.spawn("pgpool", argv, lambda p: self._stop_pgpool(p, started))
        try:
            self.wait_sql("pgpool", port, proc, 30)
            self.psql(port, "SELECT count(*) FROM pgbench_branches")
            if self.pgpool_counters(port) is None:
                raise RuntimeError("SHOW pool_cache does not answer: query cache not enabled")
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            self.skipped["pgpool"] = f"pgpool-II does not serve: {e}; log tail: " + self.tail(
                "pgpool.log", 5)
            return
        self.ports["pgpool"] = port
        self.configs["pgpool"] = {
            "version": (version.stdout or version.stderr).strip() or "?",
            "command": " ".join(str(a) for a in argv), "conf": text}
        log(f"pgpool-II on 127.0.0.1:{port} ({children} children, query cache on)")

    def _stop_pgpool(self, proc, started):
        # SIGINT is pgpool's fast shutdown. SIGTERM (smart) once left the main process stuck
        # in semtimedop with its children already exited; if anything hangs, kill the whole
        # process group and drop the SysV shared memory it created (the 256 MB query cache),
        # which only a clean shutdown removes.
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(15)
                return
            except subprocess.TimeoutExpired:
                pass
            log("pgpool-II ignored SIGINT for 15 s; SIGKILL and removing its shared memory")
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
            proc.wait(10)
            remove_sysv_ipc(proc.pid, started)

    def pgpool_counters(self, port=None):
        """(hits, misses) since pgpool started, from `SHOW pool_cache`, or None."""
        try:
            row = self.psql(port or self.ports["pgpool"],
                            "SHOW pool_cache", timeout=20).split("|")
            return float(row[0]), float(row[1])  # num_cache_hits, num_selects (= misses)
        except (RuntimeError, subprocess.TimeoutExpired, ValueError, IndexError, KeyError):
            return None

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

    def start_pgmemo(self, name="pgmemo", exe=None, config=None):
        """pgmemo as target `name`: this tree's release binary, or `exe` (another build to
        compare against, e.g. the binary before a refactoring), with the TOML file `config`
        if given (e.g. the same binary with and without a feature switched on)."""
        try:
            exe = Path(exe) if exe else self.pgmemo_binary()
            if not exe.exists():
                raise RuntimeError(f"{exe} does not exist")
        except RuntimeError as e:
            self.skipped[name] = str(e)
            return
        if self.args.upstream_via == "unix":
            enc = str(self.tmp).replace("/", "%2F")
            upstream = f"postgres://postgres@{enc}:{self.ports['direct']}/postgres"
        else:
            upstream = f"postgres://postgres@127.0.0.1:{self.ports['direct']}/postgres"
        argv = [str(exe), "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
                "--upstream", upstream]
        if config:
            argv += ["--config", str(config)]
        proc = self.spawn(name, argv, lambda p: self._stop_simple(p, signal.SIGTERM),
                          stdout=subprocess.PIPE)
        lines = queue.Queue()

        def drain():  # keep reading stdout for the whole run so the pipe never fills
            with open(self.tmp / f"{name}.stdout", "wb") as f:
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
            self.skipped[name] = (f"{name} did not start within 20 s ({status}); log tail: "
                                      + self.tail(f"{name}.log", 5))
            return
        try:
            self.wait_sql(name, port, proc, 20)
            self.psql(port, "SELECT count(*) FROM pgbench_branches")
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            self.skipped[name] = f"{name} started but does not serve queries: {e}"
            return
        self.ports[name] = port
        env = {k: v for k, v in os.environ.items() if k.startswith(("PGMEMO_", "RUST_LOG"))}
        self.configs[name] = {"command": " ".join(argv), "admin": admin, "env": env,
                                  "binary_mtime": datetime.datetime.fromtimestamp(
                                      exe.stat().st_mtime).isoformat(timespec="seconds")}
        log(f"{name} ({exe}) on 127.0.0.1:{port} (admin {admin})")

    def pgmemo_counters(self, name="pgmemo"):
        """(hits, misses) from pgmemo's admin /metrics, or None when it has no such metrics."""
        try:
            with urllib.request.urlopen(f"http://{self.configs[name]['admin']}/metrics",
                                        timeout=5) as r:
                text = r.read().decode("utf-8", "replace")
        except (OSError, KeyError, ValueError):
            return None
        sums = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            name = line.split("{", 1)[0].split(" ", 1)[0]
            try:
                sums[name] = sums.get(name, 0.0) + float(line.rsplit(" ", 1)[-1])
            except ValueError:
                continue
        if PGMEMO_HITS_METRIC not in sums or PGMEMO_MISSES_METRIC not in sums:
            return None
        return sums[PGMEMO_HITS_METRIC], sums[PGMEMO_MISSES_METRIC]

    def cache_counters(self, target):
        """Cumulative (hits, misses) of a caching target, or None where it exposes none."""
        if target == "pgpool":
            return self.pgpool_counters()
        if target in ("pgmemo", "pgmemo-base"):
            return self.pgmemo_counters(target)
        return None

    # --- the instant responder (ceiling) ----------------------------------------------------
    def limit_binary(self):
        """shared/tools/limit built in a copy under /tmp (never writing into shared/)."""
        if self.args.limit_bin:
            return Path(self.args.limit_bin)
        exe = LIMIT_BUILD / "target" / "release" / "limit"
        src = Path(self.args.limit_src) if self.args.limit_src else LIMIT_SRC
        files = [src / "Cargo.toml"] + sorted((src / "src").rglob("*.rs"))
        if not files[0].exists():
            if exe.exists():
                return exe
            raise RuntimeError(f"no responder sources in {src}")
        stale = [f for f in files if not (LIMIT_BUILD / f.relative_to(src)).exists()
                 or (LIMIT_BUILD / f.relative_to(src)).read_bytes() != f.read_bytes()]
        if exe.exists() and not stale:
            return exe
        if self.args.no_build:
            raise RuntimeError(f"{exe} missing or out of date and --no-build given")
        for f in stale:
            (LIMIT_BUILD / f.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, LIMIT_BUILD / f.relative_to(src))
        log(f"building the responder: cargo build --release in {LIMIT_BUILD}")
        blog = self.out / "logs" / "limit-build.log"
        with open(blog, "wb") as f:
            r = subprocess.run(["cargo", "build", "--release", "--offline"], cwd=LIMIT_BUILD,
                               stdout=f, stderr=subprocess.STDOUT)
            if r.returncode != 0:  # dependencies not in the local registry yet: fetch them
                r = subprocess.run(["cargo", "build", "--release"], cwd=LIMIT_BUILD,
                                   stdout=f, stderr=subprocess.STDOUT)
        if r.returncode != 0:
            raise RuntimeError(f"cargo build of the responder failed (exit {r.returncode}); "
                               f"see {blog}")
        return exe

    def start_limit(self):
        try:
            exe = self.limit_binary()
        except RuntimeError as e:
            self.skipped["limit"] = str(e)
            return
        port = free_port()
        argv = [exe, f"127.0.0.1:{port}"]
        proc = self.spawn("limit", argv, lambda p: self._stop_simple(p, signal.SIGTERM))
        try:
            self.wait_sql("limit", port, proc, 10)
        except RuntimeError as e:
            self.skipped["limit"] = f"the responder does not answer: {e}"
            return
        self.ports["limit"] = port
        self.configs["limit"] = {"command": " ".join(str(a) for a in argv)}
        log(f"instant responder on 127.0.0.1:{port}")

    # --- bookkeeping ------------------------------------------------------------------------
    def postgres_pid(self):
        """The pid of the PostgreSQL service process (runuser; the postmaster and its
        backends descend from it)."""
        for n, proc, _ in self.procs:
            if n == "postgres":
                return proc.pid
        return None

    def service_pid(self, target):
        """The pid of a non-direct target's (foreground) main process."""
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
        for name in ("postgres.log", "pgbouncer.log", "pgpool.log", "pgmemo.log",
                     "pgmemo.stdout", "pgmemo-base.log", "pgmemo-base.stdout", "limit.log"):
            src = self.tmp / name
            if src.exists():  # keep the last MiB of each log for post-mortems
                data = src.read_bytes()[-(1 << 20):]
                (logs / name).write_bytes(data)
        shutil.rmtree(self.tmp, ignore_errors=True)


def remove_sysv_ipc(main_pid, started):
    """Drop the SysV segments a SIGKILLed pgpool left: shared memory it created (by creator
    pid), and private semaphore sets of ours created while it started (sets have no creator
    pid; PostgreSQL 15 on Linux uses none)."""
    uid = os.geteuid()
    try:
        for line in Path("/proc/sysvipc/shm").read_text().splitlines()[1:]:
            f = line.split()
            if len(f) > 9 and int(f[4]) == main_pid and int(f[9]) == uid:
                subprocess.run(["ipcrm", "-m", f[1]], capture_output=True)
        for line in Path("/proc/sysvipc/sem").read_text().splitlines()[1:]:
            f = line.split()
            if (len(f) > 9 and int(f[0]) == 0 and int(f[6]) == uid
                    and started - 1 <= int(f[9]) <= started + 30):
                subprocess.run(["ipcrm", "-s", f[1]], capture_output=True)
    except (OSError, ValueError):
        pass
