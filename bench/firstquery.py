#!/usr/bin/env python3
"""First-query benchmark (issue 16): what a new connection pays before its first answer,
directly against PostgreSQL and through pgmemo.

Starts a throwaway PostgreSQL (wal_level = logical, pgbench scale 1) and pgmemo with its
default configuration in front of it (cache on, CDC auto), then opens --connections new
connections per target and protocol, one after another (or --concurrency at a time), the
targets interleaved connection by connection so machine noise hits both alike. Each
connection, on a raw socket (the protocol spoken by hand: no driver in the measurement):

  connect   TCP connect + StartupMessage .. ReadyForQuery (trust authentication)
  first     the first query: its first byte sent .. ReadyForQuery
  second    the same query again on that connection (the steady state, for comparison)

then Terminate. The query is a point read, `SELECT aid, abalance FROM pgbench_accounts WHERE
aid = K` with K cycling through --keys values: the simple protocol sends it as one Query,
the extended one as an unnamed Parse/Bind/Describe/Execute/Sync with K as a text parameter.
Every answer is checked (one row, the right aid). Reports p50/p95/p99 per target and the
p50 differences, writes bench/out/firstquery-<time>.json. Acceptance (issue 16): first
query through pgmemo p50 <= 1 ms above direct.
Standard library only.
"""

import argparse
import datetime
import json
import signal
import socket
import statistics
import struct
import sys
import threading
import time
from pathlib import Path

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
import stack as stackmod  # noqa: E402
from stack import REPO, Stack, find_pg_bin, log  # noqa: E402

QUERY = "SELECT aid, abalance FROM pgbench_accounts WHERE aid = "
QUERY_PARAM = "SELECT aid, abalance FROM pgbench_accounts WHERE aid = $1::int"
TARGETS = ("direct", "pgmemo")
ACCEPT_MS = 1.0


class ProtocolError(Exception):
    pass


def msg(kind, payload):
    return kind + struct.pack("!i", len(payload) + 4) + payload


def cstr(s):
    return s.encode() + b"\0"


class Conn:
    """Just enough of the v3 protocol for trust login and one-row reads."""

    def __init__(self, port, timeout):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def recv_msg(self):
        while len(self.buf) < 5:
            self._fill()
        kind = self.buf[:1]
        (length,) = struct.unpack("!i", self.buf[1:5])
        while len(self.buf) < 1 + length:
            self._fill()
        body = self.buf[5 : 1 + length]
        self.buf = self.buf[1 + length :]
        return kind, body

    def _fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise ProtocolError("connection closed by the server")
        self.buf += data

    def until_ready(self):
        """Messages up to ReadyForQuery; returns the DataRows' first columns."""
        rows = []
        while True:
            kind, body = self.recv_msg()
            if kind == b"Z":
                return rows
            if kind == b"E":
                fields = dict((f[:1], f[1:]) for f in body.split(b"\0") if f)
                raise ProtocolError(
                    f"{fields.get(b'C', b'').decode()}: {fields.get(b'M', b'').decode()}"
                )
            if kind == b"D":
                (ncols,) = struct.unpack("!h", body[:2])
                (flen,) = struct.unpack("!i", body[2:6])
                rows.append(body[6 : 6 + flen].decode() if ncols and flen >= 0 else None)
            if kind == b"R":
                (code,) = struct.unpack("!i", body[:4])
                if code != 0:
                    raise ProtocolError(f"authentication {code} requested; the bench uses trust")

    def startup(self, user, database):
        payload = struct.pack("!i", 196608) + cstr("user") + cstr(user)
        payload += cstr("database") + cstr(database) + cstr("application_name")
        payload += cstr("firstquery") + b"\0"
        self.sock.sendall(struct.pack("!i", len(payload) + 4) + payload)
        self.until_ready()

    def query(self, protocol, key):
        if protocol == "simple":
            self.sock.sendall(msg(b"Q", cstr(QUERY + str(key))))
        else:
            k = str(key).encode()
            self.sock.sendall(
                msg(b"P", cstr("") + cstr(QUERY_PARAM) + struct.pack("!h", 0))
                + msg(b"B", cstr("") + cstr("") + struct.pack("!hhi", 0, 1, len(k)) + k
                      + struct.pack("!h", 0))
                + msg(b"D", b"P" + cstr(""))
                + msg(b"E", cstr("") + struct.pack("!i", 0))
                + msg(b"S", b"")
            )
        rows = self.until_ready()
        if rows != [str(key)]:
            raise ProtocolError(f"wrong answer for aid {key}: {rows}")

    def close(self):
        try:
            self.sock.sendall(msg(b"X", b""))
        except OSError:
            pass
        self.sock.close()


def one_connection(port, protocol, key, timeout):
    t0 = time.perf_counter()
    c = Conn(port, timeout)
    try:
        c.startup("postgres", "postgres")
        t1 = time.perf_counter()
        c.query(protocol, key)
        t2 = time.perf_counter()
        c.query(protocol, key)
        t3 = time.perf_counter()
    finally:
        c.close()
    return (t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3


def pct(values, p):
    s = sorted(values)
    if not s:
        return float("nan")
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def run_protocol(ports, protocol, args):
    """--connections per target, interleaved; returns {target: {measure: [ms]}}."""
    res = {t: {"connect": [], "first": [], "second": []} for t in ports}
    errors = {t: [] for t in ports}
    lock = threading.Lock()
    counter = iter(range(args.connections))

    def worker():
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            order = list(ports) if i % 2 == 0 else list(reversed(list(ports)))
            for target in order:
                try:
                    m = one_connection(ports[target], protocol, 1 + i % args.keys, args.timeout)
                except (OSError, ProtocolError) as e:
                    with lock:
                        errors[target].append(f"{type(e).__name__}: {e}")
                    continue
                with lock:
                    for name, v in zip(("connect", "first", "second"), m):
                        res[target][name].append(v)

    threads = [threading.Thread(target=worker) for _ in range(args.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return res, errors


def summarize(res):
    out = {}
    for target, measures in res.items():
        out[target] = {
            name: {
                "n": len(v),
                "p50": pct(v, 50),
                "p95": pct(v, 95),
                "p99": pct(v, 99),
                "mean": statistics.fmean(v) if v else float("nan"),
                "max": max(v) if v else float("nan"),
            }
            for name, v in measures.items()
        }
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=1000,
                    help="new connections per target and protocol (default 1000)")
    ap.add_argument("--concurrency", type=int, default=1,
                    help="connections opened at a time (default 1: one after another)")
    ap.add_argument("--protocols", default="simple,extended")
    ap.add_argument("--keys", type=int, default=100,
                    help="distinct aid values the first queries cycle through (default 100)")
    ap.add_argument("--warmup", type=int, default=20,
                    help="untimed connections per target and protocol first (default 20)")
    ap.add_argument("--timeout", type=float, default=10.0, help="socket timeout, seconds")
    ap.add_argument("--pg-bin")
    ap.add_argument("--pgmemo-bin", help="default: target/release/pgmemo, built when stale")
    ap.add_argument("--no-build", action="store_true", help="never run cargo build")
    ap.add_argument("--out", default=str(REPO / "bench" / "out"))
    args = ap.parse_args()
    protocols = [p for p in args.protocols.split(",") if p]
    for p in protocols:
        if p not in ("simple", "extended"):
            ap.error(f"unknown protocol {p}")
    out = Path(args.out)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    # Killed (a test's timeout, kill): unwind, so Stack.close() stops PostgreSQL and pgmemo.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    stackmod.SCALE = 1
    # The setting: default pgmemo configuration, PostgreSQL with wal_level = logical
    # (so invalidation.cdc = "auto" streams).
    stackmod.PG_SETTINGS.update({"wal_level": "logical", "max_wal_senders": "10",
                                 "max_replication_slots": "10"})
    st = Stack(argparse.Namespace(upstream_via="tcp", pgmemo_bin=args.pgmemo_bin,
                                  no_build=args.no_build), find_pg_bin(args.pg_bin), out)
    result = {"started": datetime.datetime.now().isoformat(timespec="seconds"),
              "args": vars(args), "protocols": {}}
    failed = False
    try:
        st.start_postgres()
        result["postgres"] = st.configs["postgres"]
        st.start_pgmemo()
        if "pgmemo" in st.skipped:
            raise RuntimeError(f"pgmemo did not start: {st.skipped['pgmemo']}")
        result["pgmemo"] = st.configs.get("pgmemo")
        ports = {"direct": st.ports["direct"], "pgmemo": st.ports["pgmemo"]}
        for protocol in protocols:
            if args.warmup:
                warm = argparse.Namespace(**{**vars(args), "connections": args.warmup})
                run_protocol(ports, protocol, warm)
            log(f"{protocol}: {args.connections} connections per target, "
                f"concurrency {args.concurrency}")
            t0 = time.monotonic()
            res, errors = run_protocol(ports, protocol, args)
            s = summarize(res)
            s["seconds"] = time.monotonic() - t0
            s["errors"] = errors
            result["protocols"][protocol] = s
            for target, errs in errors.items():
                if errs:
                    failed = True
                    log(f"{protocol} {target}: {len(errs)} failed connections, e.g. {errs[0]}")
            for target in TARGETS:
                if s[target]["first"]["n"] == 0:
                    failed = True
    finally:
        st.close()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = out / f"firstquery-{stamp}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"First query of a new connection, {args.connections} connections per target and "
          f"protocol, concurrency {args.concurrency}, interleaved; ms (p50 / p95 / p99)\n")
    print("| protocol | measure | direct | pgmemo | p50 difference |")
    print("|---|---|---|---|---|")
    verdicts = []
    for protocol, s in result["protocols"].items():
        for name in ("connect", "first", "second"):
            d, m = s["direct"][name], s["pgmemo"][name]
            print(f"| {protocol} | {name} | {d['p50']:.3f} / {d['p95']:.3f} / {d['p99']:.3f} | "
                  f"{m['p50']:.3f} / {m['p95']:.3f} / {m['p99']:.3f} | "
                  f"{m['p50'] - d['p50']:+.3f} |")
        diff = s["pgmemo"]["first"]["p50"] - s["direct"]["first"]["p50"]
        verdicts.append(f"{protocol}: first query p50 {diff:+.3f} ms vs direct (need <= "
                        f"{ACCEPT_MS:.0f} ms): {'pass' if diff <= ACCEPT_MS else 'FAIL'}")
    print()
    for v in verdicts:
        print(f"- {v}")
    print(f"\nraw: {path}")
    # Exit 1 only when the benchmark could not measure (errors, wrong answers); the
    # acceptance verdict is reported, not an exit status.
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
