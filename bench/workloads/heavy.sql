\set a random(1, 50)
SELECT bid, count(*), avg(abalance) FROM pgbench_accounts WHERE aid BETWEEN :a * 1000 AND :a * 1000 + 100000 GROUP BY bid;
