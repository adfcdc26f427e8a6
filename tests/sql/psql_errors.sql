-- Run by tests/clients_psql.rs with ON_ERROR_STOP=0 through pgmemo and directly; stdout and
-- stderr (after normalising host and port) must be identical. Every error must leave the
-- session usable.
\set VERBOSITY verbose
SET timezone = 'UTC';
CREATE TABLE t (id int PRIMARY KEY, v text NOT NULL CHECK (v <> 'bad'));
INSERT INTO t VALUES (1, 'one');
SELECT * FROM no_such_table;
SELEC 1;
INSERT INTO t VALUES (1, 'duplicate');
INSERT INTO t VALUES (2, NULL);
INSERT INTO t VALUES (3, 'bad');
SELECT 1 / 0;
SELECT 'abc'::int;
SELECT 'still alive';

-- an error inside a transaction block aborts it until ROLLBACK
BEGIN;
INSERT INTO t VALUES (10, 'ten');
SELECT 1 / 0;
SELECT 'ignored';
ROLLBACK;
SELECT count(*) FROM t;

-- savepoints
BEGIN;
INSERT INTO t VALUES (20, 'twenty');
SAVEPOINT sp;
INSERT INTO t VALUES (20, 'again');
ROLLBACK TO SAVEPOINT sp;
INSERT INTO t VALUES (21, 'twenty-one');
COMMIT;
SELECT id, v FROM t ORDER BY id;

-- psql's ON_ERROR_ROLLBACK wraps every statement in its own savepoint
\set ON_ERROR_ROLLBACK on
BEGIN;
INSERT INTO t VALUES (30, 'thirty');
INSERT INTO t VALUES (30, 'dup');
INSERT INTO t VALUES (31, 'thirty-one');
COMMIT;
\set ON_ERROR_ROLLBACK off
SELECT id FROM t WHERE id >= 30 ORDER BY id;

-- a failing statement in the middle of a multi-statement string
SELECT 'first'\; SELECT 1 / 0\; SELECT 'never';
SELECT count(*) FROM t;

-- errors with detail, hint, context and a custom SQLSTATE
DO $$ BEGIN RAISE EXCEPTION 'custom %', 42 USING DETAIL = 'the detail', HINT = 'the hint', ERRCODE = 'PM001'; END $$;
DO $$ BEGIN RAISE NOTICE 'a notice with %', 'args'; RAISE WARNING 'a warning'; END $$;
CREATE FUNCTION boom() RETURNS int LANGUAGE plpgsql AS $$ BEGIN RETURN 1 / 0; END $$;
SELECT boom();
\echo :LAST_ERROR_SQLSTATE :LAST_ERROR_MESSAGE

-- COPY errors: bad data and a missing file
\copy t from 'bad.csv' with (format csv)
\copy t from 'missing.csv' with (format csv)
SELECT count(*) FROM t;

-- an error in \gexec output and a failed \gset
SELECT 'SELECT 1 / 0' \gexec
SELECT 1 AS a, 2 AS b FROM generate_series(1, 2) \gset
\echo :ERROR

-- a statement the server cancels
SET statement_timeout = '50ms';
SELECT pg_sleep(5);
RESET statement_timeout;
SELECT 'end';
