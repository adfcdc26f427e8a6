\set aid random(1, 200)
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
