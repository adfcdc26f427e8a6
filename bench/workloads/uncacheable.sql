\set aid random(1, 1000000)
SELECT abalance, now() FROM pgbench_accounts WHERE aid = :aid;
