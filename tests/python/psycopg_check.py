#!/usr/bin/env python3
"""Non-Rust drivers through pgmemo: psycopg 3 (libpq) and asyncpg (its own protocol code).

Each scenario runs once against PostgreSQL directly and once through pgmemo; the outcomes
(rows as Python values, errors as class + SQLSTATE + message) must be equal, and each
scenario also checks that it really exercised what it claims (server-side prepared
statements, binary formats, a failing pipeline, COPY row counts), so equal-but-empty
outcomes cannot pass. Run by tests/clients_python.rs:

    python3 tests/python/psycopg_check.py --proxy HOST:PORT --direct HOST:PORT

With `--direct-tls HOST:PORT --ca FILE` it instead checks PostgreSQL 17 direct TLS
(`sslnegotiation=direct`, ALPN "postgresql") against a pgmemo with TLS configured, using
the libpq bundled with psycopg[binary] (libpq 15 on the test machine cannot do it).

Exit status: 0 all equal, 1 a mismatch or failed check, 3 a driver is missing.
"""

import argparse
import asyncio
import datetime
import io
import sys
import traceback
import uuid
from decimal import Decimal

INSTALL_HINT = 'pip install "psycopg[binary]" asyncpg'

try:
    import psycopg
    from psycopg.types.json import Jsonb
except ImportError as exc:  # pragma: no cover - environment problem, reported loudly
    print(f"psycopg 3 is not importable ({exc}); install it with: {INSTALL_HINT}", file=sys.stderr)
    sys.exit(3)
try:
    import asyncpg
except ImportError as exc:  # pragma: no cover
    print(f"asyncpg is not importable ({exc}); install it with: {INSTALL_HINT}", file=sys.stderr)
    sys.exit(3)

DB = "app"
USER = "postgres"
# How many times the prepared statement runs; also the plan count pg_prepared_statements
# must report, proving every execution reused the one server-side statement.
PREPARED_RUNS = 300


class CheckFailed(Exception):
    """A scenario did not exercise what it claims (independent of the comparison)."""


def check(condition, what):
    if not condition:
        raise CheckFailed(what)


def split_addr(addr):
    host, port = addr.rsplit(":", 1)
    return host, int(port)


def conninfo(addr):
    host, port = split_addr(addr)
    return (
        f"host={host} port={port} user={USER} dbname={DB} sslmode=disable "
        "connect_timeout=10 options='-c statement_timeout=60000'"
    )


def error_outcome(exc):
    diag = getattr(exc, "diag", None)
    return (
        "error",
        type(exc).__name__,
        getattr(exc, "sqlstate", None),
        diag.message_primary if diag else str(exc),
        diag.constraint_name if diag else None,
    )


# ---------------------------------------------------------------- psycopg scenarios


def prepared(addr):
    """prepare_threshold=0: a named server-side statement from the first execution."""
    out = []
    sql = (
        "SELECT %s::int + g AS n, md5(%s || g::text) AS h, %s::numeric * g AS x "
        "FROM generate_series(1, %s) g"
    )
    with psycopg.connect(conninfo(addr), prepare_threshold=0, autocommit=True) as conn:
        for i in range(PREPARED_RUNS):
            rows = conn.execute(sql, (i, f"k{i}", Decimal("1.5"), i % 7 + 1)).fetchall()
            out.append(rows)
        stmts = conn.execute(
            "SELECT name, statement, parameter_types::text[], generic_plans + custom_plans "
            "FROM pg_prepared_statements WHERE statement LIKE %s ORDER BY name",
            ("%md5(%",),
        ).fetchall()
        check(len(stmts) == 1, f"expected one prepared statement for the query, got {stmts}")
        name, text, types, plans = stmts[0]
        check(name.startswith("_pg3_"), f"statement {name!r} is not psycopg's")
        check(plans == PREPARED_RUNS, f"statement executed {plans} times, not {PREPARED_RUNS}")
        out.append(stmts)
        # A transaction around prepared executions, committed, then one rolled back.
        conn.execute("CREATE TEMP TABLE pp (id int PRIMARY KEY, v text)")
        with conn.transaction():
            for i in range(20):
                conn.execute("INSERT INTO pp VALUES (%s, %s)", (i, f"v{i}"))
        try:
            with conn.transaction():
                conn.execute("INSERT INTO pp VALUES (%s, %s)", (100, "x"))
                conn.execute("INSERT INTO pp VALUES (%s, %s)", (1, "duplicate"))
        except psycopg.Error as exc:
            out.append(error_outcome(exc))
        out.append(conn.execute("SELECT count(*), max(id) FROM pp").fetchall())
    return out


def pipeline(addr):
    """Pipeline mode: several statements per round trip, RETURNING, and a failing one."""
    out = []
    with psycopg.connect(conninfo(addr), autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE pt (id serial PRIMARY KEY, v text UNIQUE)")
        with conn.pipeline() as p:
            ins = conn.execute("INSERT INTO pt (v) VALUES (%s), (%s) RETURNING id, v", ("a", "b"))
            cnt = conn.execute("SELECT count(*) FROM pt")
            conn.cursor().executemany(
                "INSERT INTO pt (v) VALUES (%s)", [(f"m{i}",) for i in range(50)]
            )
            sel = conn.execute("SELECT v FROM pt WHERE v LIKE %s ORDER BY id", ("m4%",))
            p.sync()
            out.append(("insert returning", ins.fetchall()))
            out.append(("count", cnt.fetchall()))
            out.append(("select", sel.fetchall()))
        raised = None
        try:
            with conn.pipeline() as p:
                conn.execute("INSERT INTO pt (v) VALUES ('rolled back') RETURNING id")
                conn.execute("INSERT INTO pt (v) VALUES ('a')")  # unique violation
                conn.execute("SELECT 'never runs'")
                p.sync()
        except psycopg.Error as exc:
            raised = error_outcome(exc)
        check(raised is not None, "the failing pipeline raised no error")
        out.append(raised)
        # The implicit transaction of the failed segment rolled back as a whole.
        out.append(("after failure", conn.execute("SELECT count(*) FROM pt").fetchall()))
        check(out[-1][1] == [(52,)], f"expected 52 rows after the failed pipeline, got {out[-1]}")

        # Pipeline inside an explicit transaction: the error aborts it; rollback recovers.
        conn.autocommit = False
        try:
            with conn.pipeline():
                conn.execute("UPDATE pt SET v = v || '!' WHERE id <= 2")
                conn.execute("SELECT 1 / %s", (0,))
                conn.execute("SELECT 'skipped'")
        except psycopg.Error as exc:
            out.append(error_outcome(exc))
        conn.rollback()
        out.append(conn.execute("SELECT v FROM pt WHERE id <= 2 ORDER BY id").fetchall())
        conn.commit()
    return out


BINARY_SQL = (
    "SELECT %b::int2, %b::int4, %b::int8, %b::text, %b::numeric, %b::float8, %b::bool, "
    "%b::bytea, %b::date, %b::timestamptz, %b::interval, %b::uuid, %b::jsonb, %b::int4[], "
    "%b::text[]"
)
BINARY_PARAMS = (
    -7,
    2_000_000_000,
    -(2**62),
    "ünï 😀",
    Decimal("-12345.678900"),
    1.25e-300,
    True,
    bytes(range(256)),
    datetime.date(2024, 2, 29),
    datetime.datetime(2024, 2, 29, 12, 34, 56, 789000, tzinfo=datetime.timezone.utc),
    datetime.timedelta(days=3, seconds=7, microseconds=5),
    uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
    Jsonb({"a": [1, 2, None], "b": "x"}),
    [1, None, 3],
    ["x", "y z", None],
)


def binary(addr):
    """Binary parameters and binary results (cursor(binary=True))."""
    out = []
    with psycopg.connect(conninfo(addr), autocommit=True) as conn:
        cur = conn.cursor(binary=True)
        cur.execute(BINARY_SQL, BINARY_PARAMS)
        check(cur.pgresult.fformat(0) == 1, "results were not in binary format")
        out.append(cur.fetchall())
        cur.execute(
            "SELECT g, g::text, g * 1.5::numeric, now() - now(), (g % 2 = 0), "
            "decode(md5(g::text), 'hex') FROM generate_series(1, 2000) g"
        )
        check(cur.pgresult.fformat(5) == 1, "bytea column was not in binary format")
        out.append(cur.fetchall())
        try:
            cur.execute("SELECT %b::int / %b::int", (1, 0))
        except psycopg.Error as exc:
            out.append(error_outcome(exc))
    return out


def copy(addr):
    """COPY FROM STDIN and TO STDOUT, text and binary, and a COPY that fails."""
    out = []
    rows = [
        (i, None if i % 97 == 0 else f"name {i}\t\\ ü", bytes([i % 256]) * (i % 40))
        for i in range(5000)
    ]
    with psycopg.connect(conninfo(addr), autocommit=True) as conn:
        cur = conn.cursor()
        cur.execute("CREATE TEMP TABLE ct (id int PRIMARY KEY, name text, data bytea)")
        with cur.copy("COPY ct (id, name, data) FROM STDIN") as cp:
            for row in rows:
                cp.write_row(row)
        out.append(("copied in", cur.rowcount))
        check(cur.rowcount == len(rows), f"COPY FROM reported {cur.rowcount} rows")
        with cur.copy("COPY (SELECT * FROM ct ORDER BY id) TO STDOUT") as cp:
            text = b"".join(bytes(chunk) for chunk in cp)
        check(text.count(b"\n") == len(rows), "COPY TO text lost rows")
        out.append(("text out", text))
        cur.execute("CREATE TEMP TABLE ct2 (LIKE ct)")
        with cur.copy("COPY ct2 FROM STDIN (FORMAT BINARY)") as cp:
            cp.set_types(["int4", "text", "bytea"])
            for row in rows:
                cp.write_row(row)
        with cur.copy("COPY (SELECT * FROM ct2 ORDER BY id) TO STDOUT (FORMAT BINARY)") as cp:
            cp.set_types(["int4", "text", "bytea"])
            back = list(cp.rows())
        check(back == rows, "binary COPY round trip changed the rows")
        out.append(("binary out", back))
        try:
            with cur.copy("COPY ct (id, name) FROM STDIN") as cp:
                cp.write(b"1\tduplicate key\n")
        except psycopg.Error as exc:
            out.append(error_outcome(exc))
        out.append(conn.execute("SELECT count(*) FROM ct").fetchall())
    return out


# ---------------------------------------------------------------- asyncpg scenario


async def asyncpg_scenario(addr):
    """asyncpg: named prepared statements, binary formats throughout, executemany,
    binary COPY, a cursor fetching a portal in chunks, and a failed transaction."""
    host, port = split_addr(addr)
    out = []
    conn = await asyncpg.connect(
        host=host, port=port, user=USER, database=DB, ssl=False, timeout=10
    )
    try:
        stmt = await conn.prepare(
            "SELECT $1::int * 2 AS doubled, $2::text || '!' AS shout, $3::numeric AS n, "
            "$4::timestamptz AS at, $5::bytea AS b, $6::int[] AS arr, $7::jsonb AS j"
        )
        base = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
        for i in range(200):
            rec = await stmt.fetchrow(
                i,
                f"s{i}",
                Decimal(i) / 7,
                base + datetime.timedelta(minutes=i),
                bytes([i % 256]) * (i % 9),
                list(range(i % 5)),
                f'{{"i": {i}}}',
            )
            out.append(tuple(rec))
        # The pattern is a parameter so this query's own text does not match it.
        names = await conn.fetch(
            "SELECT name, generic_plans + custom_plans AS plans FROM pg_prepared_statements "
            "WHERE statement LIKE $1",
            "%AS doubled%",
        )
        check(
            len(names) == 1
            and names[0]["name"].startswith("__asyncpg_stmt_")
            and names[0]["plans"] == 200,
            f"asyncpg's named statement was not prepared once and run 200 times: {names}",
        )
        await conn.execute("CREATE TEMP TABLE ap (id int PRIMARY KEY, v text, at timestamptz)")
        await conn.executemany(
            "INSERT INTO ap VALUES ($1, $2, $3)",
            [(i, f"v{i}", base + datetime.timedelta(hours=i)) for i in range(100)],
        )
        copied = await conn.copy_records_to_table(
            "ap", records=[(i, None, None) for i in range(100, 1100)]
        )
        out.append(copied)
        sink = io.BytesIO()
        await conn.copy_from_query("SELECT * FROM ap ORDER BY id", output=sink, format="csv")
        out.append(sink.getvalue())
        async with conn.transaction():
            chunks = [r["id"] async for r in conn.cursor("SELECT id FROM ap ORDER BY id", prefetch=64)]
        check(len(chunks) == 1100, f"cursor returned {len(chunks)} rows")
        out.append(chunks)
        try:
            async with conn.transaction():
                await conn.execute("DELETE FROM ap")
                await conn.execute("INSERT INTO ap VALUES (1, 'x', NULL), (1, 'dup', NULL)")
        except asyncpg.PostgresError as exc:
            out.append(("error", type(exc).__name__, exc.sqlstate, exc.message))
        out.append(tuple(await conn.fetchrow("SELECT count(*), sum(id) FROM ap")))
    finally:
        await conn.close()
    return out


def asyncpg_sync(addr):
    return asyncio.run(asyncpg_scenario(addr))


def direct_tls(addr, ca):
    """libpq >= 17 with sslnegotiation=direct: TLS from the first byte, no SSLRequest."""
    check(
        psycopg.pq.version() >= 170000,
        f"libpq {psycopg.pq.version()} cannot do direct TLS; {INSTALL_HINT} bundles a newer one",
    )
    host, port = split_addr(addr)
    logins = [("postgres", None), ("scram_user", "scram_pass"), ("md5_user", "md5_pass")]
    for user, password in logins:
        with psycopg.connect(
            host="localhost",
            hostaddr=host,
            port=port,
            user=user,
            password=password,
            dbname=DB,
            sslmode="verify-full",
            sslrootcert=ca,
            sslnegotiation="direct",
            connect_timeout=10,
        ) as conn:
            check(conn.pgconn.ssl_in_use, f"{user}: the connection is not encrypted")
            row = conn.execute("SELECT current_user, 40 + 2").fetchone()
            check(row == (user, 42), f"{user}: unexpected answer {row}")
            print(f"ok   direct TLS as {user}")
    return 0


# Set by main(): where pg_stat_statements is read (always PostgreSQL itself).
DIRECT = None
# Repetitions of each cached read in the cache scenario.
CACHE_RUNS = 40


def upstream_calls(fragment):
    """Executions PostgreSQL recorded for SELECTs whose text holds `fragment`."""
    with psycopg.connect(conninfo(DIRECT), autocommit=True) as conn:
        return conn.execute(
            "SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements "
            "WHERE query ILIKE 'select%%' AND strpos(query, %s) > 0",
            (fragment,),
        ).fetchone()[0]


def expect_calls(addr, fragment, before, runs, keys, pipelined=0):
    """Directly, every run reaches PostgreSQL; through pgmemo only the first of each key,
    plus `pipelined` executions sent behind their statement's preparation without waiting
    (relayed in order, not answered from the cache)."""
    got = upstream_calls(fragment) - before
    want = runs if addr == DIRECT else keys + pipelined
    check(got == want, f"{fragment}: {got} executions reached PostgreSQL, expected {want}")


def cache_reads(addr):
    """Repeated reads through every extended-protocol style hit the cache (counted in
    pg_stat_statements), with results identical to PostgreSQL's: psycopg with
    prepare_threshold None (Parse of the unnamed statement every time) and 0 (a named
    statement), psycopg pipeline mode, and asyncpg (named statement, binary formats)."""
    out = []
    with psycopg.connect(conninfo(addr), autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS cache_kv")
        conn.execute("CREATE TABLE cache_kv (id int PRIMARY KEY, v text, n numeric, at timestamptz)")
        conn.execute(
            "INSERT INTO cache_kv SELECT g, 'v' || g, g / 3.0, "
            "'2024-01-01'::timestamptz + g * interval '1 hour' FROM generate_series(1, 50) g"
        )
    for threshold, tag in ((None, "unnamed_ck"), (0, "named_ck")):
        sql = f"SELECT id, v, n, at AS {tag} FROM cache_kv WHERE id = %s OR id = %s ORDER BY id"
        before = upstream_calls(tag)
        with psycopg.connect(conninfo(addr), prepare_threshold=threshold, autocommit=True) as conn:
            for i in range(CACHE_RUNS):
                out.append(conn.execute(sql, (i % 4, 7)).fetchall())
            for i in range(CACHE_RUNS):
                cur = conn.cursor(binary=True)
                out.append(cur.execute(sql, (i % 2, 9)).fetchall())
        expect_calls(addr, tag, before, 2 * CACHE_RUNS, 4 + 2)
    tag = "pipe_ck"
    sql = f"SELECT v AS {tag} FROM cache_kv WHERE id = %s"
    with psycopg.connect(conninfo(addr), autocommit=True) as conn:
        conn.execute(sql, (3,)).fetchall()  # warm: one key cached
        before = upstream_calls(tag)
        with conn.pipeline():
            curs = [conn.execute(sql, (3,)) for _ in range(10)]
            upd = conn.execute("UPDATE cache_kv SET v = 'changed' WHERE id = 3")
            after = conn.execute(sql, (3,))
        out.append([c.fetchall() for c in curs])
        out.append(upd.rowcount)
        out.append(after.fetchall())
        check(out[-1][0][0] == "changed", f"the read behind the UPDATE saw {out[-1]}")
        # Pipelined reads are relayed (replies in order), not answered from the cache.
        got = upstream_calls(tag) - before
        check(got == 11, f"pipelined reads: {got} executions, expected 11")
        out.append(conn.execute(sql, (3,)).fetchall())
    return out


async def asyncpg_cache(addr):
    host, port = split_addr(addr)
    tag = "apg_ck"
    conn = await asyncpg.connect(host=host, port=port, user=USER, database=DB, ssl=False, timeout=10)
    out = []
    try:
        # Let pgmemo read the new session's settings before counting.
        for _ in range(3):
            await conn.fetch("SELECT 1")
        before = upstream_calls(tag)
        sql = f"SELECT id, n, at AS {tag} FROM cache_kv WHERE id = $1"
        # conn.fetch: the connection's statement cache, Execute without a row limit.
        for i in range(CACHE_RUNS):
            out.append([tuple(r) for r in await conn.fetch(sql, i % 5 + 1)])
        # A prepared statement's fetchrow (Execute limited to one row) is answered from the
        # same entries, cut to one row as PostgreSQL would.
        stmt = await conn.prepare(sql)
        for i in range(CACHE_RUNS):
            out.append(tuple(await stmt.fetchrow(i % 5 + 1)))
        # asyncpg sends a statement's first Bind/Execute right behind its Parse/Describe
        # (twice: conn.fetch's cached statement, then conn.prepare's).
        expect_calls(addr, tag, before, 2 * CACHE_RUNS, 5, pipelined=2)
    finally:
        await conn.close()
    return out


def asyncpg_cache_sync(addr):
    return asyncio.run(asyncpg_cache(addr))


SCENARIOS = [
    ("psycopg prepared statements", prepared),
    ("psycopg pipeline", pipeline),
    ("psycopg binary", binary),
    ("psycopg copy", copy),
    ("asyncpg", asyncpg_sync),
    ("cached reads (psycopg unnamed, named, binary, pipeline)", cache_reads),
    ("cached reads (asyncpg)", asyncpg_cache_sync),
]


def first_difference(direct, proxied):
    if isinstance(direct, list) and isinstance(proxied, list):
        for i, (d, p) in enumerate(zip(direct, proxied)):
            if d != p:
                return f"item {i}:\n  direct:  {d!r:.2000}\n  proxied: {p!r:.2000}"
        return f"lengths differ: direct {len(direct)}, proxied {len(proxied)}"
    return f"direct:  {direct!r:.2000}\nproxied: {proxied!r:.2000}"


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--proxy", help="pgmemo HOST:PORT")
    parser.add_argument("--direct", help="PostgreSQL HOST:PORT")
    parser.add_argument("--direct-tls", help="pgmemo HOST:PORT with TLS configured")
    parser.add_argument("--ca", help="CA certificate that signed pgmemo's certificate")
    args = parser.parse_args()
    print(f"psycopg {psycopg.__version__} (libpq {psycopg.pq.version()}), asyncpg {asyncpg.__version__}")
    if args.direct_tls:
        if not args.ca:
            parser.error("--direct-tls needs --ca")
        try:
            return direct_tls(args.direct_tls, args.ca)
        except Exception:  # noqa: BLE001
            print(f"FAIL direct TLS\n{traceback.format_exc()}")
            return 1
    if not (args.proxy and args.direct):
        parser.error("give --proxy and --direct, or --direct-tls and --ca")
    global DIRECT
    DIRECT = args.direct
    failures = 0
    for name, scenario in SCENARIOS:
        try:
            direct = scenario(args.direct)
        except Exception:  # noqa: BLE001 - report and count every kind of failure
            failures += 1
            print(f"FAIL {name}: failed on the DIRECT connection (test bug)\n{traceback.format_exc()}")
            continue
        try:
            proxied = scenario(args.proxy)
        except Exception:  # noqa: BLE001
            failures += 1
            print(f"FAIL {name}: failed through pgmemo\n{traceback.format_exc()}")
            continue
        if direct != proxied:
            failures += 1
            print(f"FAIL {name}: outcome differs through pgmemo\n{first_difference(direct, proxied)}")
        else:
            print(f"ok   {name}")
    sys.stdout.flush()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
