-- Run by tests/clients_psql.rs through pgmemo and directly; stdout must be identical.
-- psql runs with -X -At -v ON_ERROR_STOP=1 in a directory holding `rows.csv` and `blob.bin`.
SET timezone = 'UTC';
SET datestyle = 'ISO, YMD';
SET intervalstyle = 'postgres';
SET extra_float_digits = 1;

-- DDL
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TYPE pair AS (a int, b text);
CREATE TABLE kinds (
    id        serial PRIMARY KEY,
    i2        smallint,
    i4        integer NOT NULL,
    i8        bigint,
    num       numeric(20, 6),
    f4        real,
    f8        double precision,
    b         boolean,
    t         text,
    vc        varchar(40),
    ch        char(5),
    by        bytea,
    d         date,
    ts        timestamp,
    tstz      timestamptz,
    iv        interval,
    u         uuid,
    j         json,
    jb        jsonb,
    arr       int[],
    tarr      text[],
    ip        inet,
    cidr_col  cidr,
    mac       macaddr,
    pt        point,
    rng       int4range,
    m         mood,
    p         pair,
    bits      bit varying(16),
    tm        time,
    x         xml
);
CREATE INDEX kinds_i4 ON kinds (i4);
CREATE UNIQUE INDEX kinds_u ON kinds (u);
CREATE VIEW kinds_view AS SELECT id, i4, t FROM kinds WHERE b;
CREATE FUNCTION add_one(x int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT x + 1';
COMMENT ON TABLE kinds IS 'every type psql prints';

-- inserts, with every type
INSERT INTO kinds (i2, i4, i8, num, f4, f8, b, t, vc, ch, by, d, ts, tstz, iv, u, j, jb, arr,
                   tarr, ip, cidr_col, mac, pt, rng, m, p, bits, tm, x)
VALUES
  (1, 10, 10000000000, 12345.678901, 1.5, 3.141592653589793, true, 'hello', 'varchar',
   'ab', '\xdeadbeef', '2024-02-29', '2024-02-29 12:34:56.789', '2024-02-29 12:34:56+02',
   '1 year 2 mons 3 days 04:05:06', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
   '{"a": [1, 2, {"b": null}]}', '{"z": 1, "a": [true, false]}', '{1,2,3}',
   '{"x y", NULL, "q\"uote"}', '192.168.0.1/24', '10.0.0.0/8', '08:00:2b:01:02:03',
   '(1.5,-2)', '[1,10)', 'happy', ROW(7, 'seven'), B'1011', '23:59:59.5', '<a>b</a>'),
  (-32768, -2147483648, -9223372036854775808, -0.000001, 'NaN', '-Infinity', false,
   E'tab\there\nnewline and ünïcödé 😀', '', 'abcde', '\x', '0001-01-01', 'infinity',
   '-infinity', '-1 days -00:00:01', '00000000-0000-0000-0000-000000000000', '[]', '{}',
   '{}', '{}', '::1', '::/0', 'ff:ff:ff:ff:ff:ff', '(0,0)', 'empty', 'sad', ROW(NULL, NULL),
   B'', '00:00', '<empty/>'),
  (NULL, 0, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
   NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
INSERT INTO kinds (i4, t, b) SELECT g, 'row ' || g, g % 2 = 0 FROM generate_series(1, 500) g;
UPDATE kinds SET num = i4 * 1.25 WHERE t LIKE 'row %';
DELETE FROM kinds WHERE i4 > 490;

-- SELECTs
SELECT * FROM kinds WHERE id <= 3 ORDER BY id;
SELECT count(*), sum(i4), avg(num)::numeric(20, 4), min(t), max(t) FROM kinds;
SELECT i4, add_one(i4), t FROM kinds_view ORDER BY i4 LIMIT 5;
SELECT (p).a, (p).b, m::text, upper(rng), arr[2], jb -> 'a', j ->> 'a' FROM kinds
  WHERE id <= 2 ORDER BY id;
SELECT g, md5(g::text), repeat('x', g % 50) FROM generate_series(1, 3000) g;
SELECT 1.0::float8 / 3, 2::numeric / 3, 'NaN'::numeric, 1e300::float8 * 10, -0.0::float8;
SELECT NULL AS nothing, '' AS empty, ' ' AS space, E'a|b' AS pipe;
SELECT '2024-01-01'::date + g AS day FROM generate_series(0, 2) g;
VALUES (1, 'one'), (2, 'two');
TABLE kinds_view LIMIT 2;
SELECT 'é€😀' AS utf8, octet_length('é€😀');

-- \copy in and out
CREATE TABLE copied (id int PRIMARY KEY, name text, score numeric, at timestamptz);
\copy copied from 'rows.csv' with (format csv, header true)
SELECT count(*), sum(score), min(at), max(name) FROM copied;
\copy (SELECT id, name, score, at FROM copied ORDER BY id) to 'out.csv' with (format csv, header true)
\copy (SELECT * FROM kinds ORDER BY id) to 'kinds.txt'
\copy copied to 'copied.bin' with (format binary)
CREATE TABLE copied_back (LIKE copied);
\copy copied_back from 'copied.bin' with (format binary)
SELECT count(*) FROM (SELECT * FROM copied EXCEPT SELECT * FROM copied_back) diff;

-- transactions
BEGIN;
INSERT INTO copied VALUES (100001, 'in tx', 1, now());
SAVEPOINT s1;
DELETE FROM copied;
ROLLBACK TO SAVEPOINT s1;
RELEASE SAVEPOINT s1;
COMMIT;
SELECT count(*) FROM copied;
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT count(*) FROM copied WHERE id > 100000;
ROLLBACK;
START TRANSACTION;
UPDATE copied SET score = 0 WHERE id = 100001;
END;
SELECT score FROM copied WHERE id = 100001;

-- multi-statement query strings (one Query message)
SELECT 1 AS a\; SELECT 2 AS b\; SELECT 'three' AS c;
INSERT INTO copied VALUES (100002, 'multi', 2, now())\; UPDATE copied SET name = 'multi!' WHERE id = 100002\; SELECT name FROM copied WHERE id = 100002;

-- \gset, \gdesc (extended protocol: Parse + Describe), \gexec
SELECT 42 AS answer, 'forty two' AS words \gset
\echo :answer :words
SELECT :answer + 1 AS next, :'words' AS quoted;
SELECT id, name, score FROM copied \gdesc
SELECT format('SELECT %s * 2 AS doubled', g) FROM generate_series(1, 3) g \gexec
\set ON_ERROR_ROLLBACK on
\echo :ON_ERROR_ROLLBACK

-- large objects (libpq fast-path FunctionCall messages)
\lo_import 'blob.bin'
SELECT octet_length(lo_get(:LASTOID)), md5(lo_get(:LASTOID));
\lo_export :LASTOID 'blob.out'
\lo_unlink :LASTOID

-- LISTEN/NOTIFY: psql prints the notification after the command that received it
LISTEN chan;
NOTIFY chan, 'hello from psql';
SELECT pg_notify('chan', 'second');
UNLISTEN chan;
NOTIFY chan, 'not heard';
SELECT 'after unlisten';

-- meta-commands querying the catalogs
\d kinds
\d kinds_view
\d+ copied
\dt
\dv
\di
\ds
\df add_one
\dT
\dn
\dx
\du trust_user
\dp kinds
\dd kinds
\sf add_one
\echo done
