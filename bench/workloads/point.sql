\set aid random(1, 10000)
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
