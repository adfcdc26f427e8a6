//! The checker's schema, created directly on Postgres (never through the proxy): monotone
//! counters with a view, groups for aggregates and an audit table written by a trigger; a
//! parent/child pair joined by a composite FK with ON UPDATE CASCADE; a range-partitioned
//! table. Also the clean-up of prepared transactions and the final consistency check.

use tokio_postgres::Client;

use super::CheckerError;
use super::state::Families;

/// Global transaction ids of the checker's two-phase commits start with this.
pub const GID_PREFIX: &str = "pgmemo-staleness-";
/// Upper bound on every key space (keys are sent as int4, and the schema stays small).
const MAX_KEYS: usize = 100_000;

/// Sizes of the schema.
#[derive(Debug, Clone)]
pub struct Shape {
    /// Rows of `counters` (and `counters_audit`).
    pub counters: usize,
    /// `counters.grp = id % groups`: the aggregates' groups.
    pub groups: usize,
    pub parents: usize,
    /// Children per parent.
    pub children: usize,
    /// Rows of `events`.
    pub events: usize,
    /// Range partitions of `events`.
    pub partitions: usize,
}

impl Shape {
    /// Few keys: reads concentrate between writes (many are cache hits), and a broken read
    /// path shows within seconds.
    pub fn small() -> Shape {
        Shape {
            counters: 6,
            groups: 2,
            parents: 3,
            children: 2,
            events: 4,
            partitions: 2,
        }
    }
}

impl Default for Shape {
    fn default() -> Shape {
        Shape {
            counters: 64,
            groups: 8,
            parents: 16,
            children: 3,
            events: 32,
            partitions: 4,
        }
    }
}

impl Shape {
    pub(crate) fn validate(&self) -> Result<(), String> {
        let sizes = [self.counters, self.parents, self.children, self.events];
        if sizes.iter().any(|n| *n == 0 || *n > MAX_KEYS) {
            return Err(format!("every table needs 1..={MAX_KEYS} rows: {self:?}"));
        }
        if self.groups == 0 || self.groups > self.counters {
            return Err(format!("groups must be in 1..=counters: {self:?}"));
        }
        if self.partitions == 0 || self.partitions > self.events {
            return Err(format!("partitions must be in 1..=events: {self:?}"));
        }
        if self.slots() < 3 {
            return Err(format!("need at least 3 keys over all tables: {self:?}"));
        }
        Ok(())
    }

    /// Keys over all families (counters, then parents, then events).
    pub(crate) fn slots(&self) -> usize {
        self.counters + self.parents + self.events
    }

    /// Counter keys in group `g`.
    pub(crate) fn group_keys(&self, g: usize) -> Vec<usize> {
        (g..self.counters).step_by(self.groups.max(1)).collect()
    }

    /// First key of partition `p`: ceil(p * events / partitions), so that
    /// `partition_of(k) = k * partitions / events`.
    fn partition_start(&self, p: usize) -> usize {
        (p * self.events).div_ceil(self.partitions)
    }

    pub(crate) fn partition_of(&self, key: usize) -> usize {
        key * self.partitions / self.events
    }

    pub(crate) fn partition_name(&self, key: usize) -> String {
        format!("events_p{}", self.partition_of(key))
    }

    fn ddl(&self) -> String {
        let mut sql = format!(
            "DROP VIEW IF EXISTS counters_view;
             DROP TABLE IF EXISTS counters_audit, counters, child, parent, events CASCADE;
             DROP FUNCTION IF EXISTS counters_audit_fn() CASCADE;
             CREATE TABLE counters (id int PRIMARY KEY, grp int NOT NULL, v bigint NOT NULL);
             CREATE TABLE counters_audit (id int PRIMARY KEY, v bigint NOT NULL);
             CREATE FUNCTION counters_audit_fn() RETURNS trigger LANGUAGE plpgsql AS $f$
             BEGIN
                 INSERT INTO counters_audit (id, v) VALUES (NEW.id, NEW.v)
                     ON CONFLICT (id) DO UPDATE SET v = EXCLUDED.v;
                 RETURN NULL;
             END $f$;
             CREATE TRIGGER counters_audit_trg AFTER UPDATE ON counters
                 FOR EACH ROW EXECUTE FUNCTION counters_audit_fn();
             CREATE VIEW counters_view AS SELECT id, grp, v FROM counters WHERE v >= 0;
             INSERT INTO counters SELECT g, g % {groups}, 0 FROM generate_series(0, {c}) g;
             INSERT INTO counters_audit SELECT id, v FROM counters;
             CREATE TABLE parent (id int PRIMARY KEY, v bigint NOT NULL, UNIQUE (id, v));
             CREATE TABLE child (id int PRIMARY KEY, parent_id int NOT NULL,
                 parent_v bigint NOT NULL,
                 FOREIGN KEY (parent_id, parent_v) REFERENCES parent (id, v)
                     ON UPDATE CASCADE ON DELETE CASCADE);
             CREATE INDEX child_parent ON child (parent_id);
             INSERT INTO parent SELECT g, 0 FROM generate_series(0, {p}) g;
             INSERT INTO child SELECT p * {children} + c, p, 0
                 FROM generate_series(0, {p}) p, generate_series(0, {children} - 1) c;
             CREATE TABLE events (key int NOT NULL, v bigint NOT NULL, PRIMARY KEY (key))
                 PARTITION BY RANGE (key);\n",
            groups = self.groups,
            c = self.counters - 1,
            p = self.parents - 1,
            children = self.children,
        );
        for part in 0..self.partitions {
            sql.push_str(&format!(
                "CREATE TABLE events_p{part} PARTITION OF events FOR VALUES FROM ({}) TO ({});\n",
                self.partition_start(part),
                self.partition_start(part + 1)
            ));
        }
        sql.push_str(&format!(
            "INSERT INTO events SELECT g, 0 FROM generate_series(0, {}) g;\n",
            self.events - 1
        ));
        sql.push_str(super::switch::DDL);
        sql.push_str("ANALYZE;\n");
        sql
    }
}

/// Drops and recreates the schema. Leftover prepared transactions of an earlier run would
/// hold locks the DROP waits for, so they go first.
pub(crate) async fn setup(direct: &Client, shape: &Shape) -> Result<(), CheckerError> {
    rollback_leftover_prepared(direct).await?;
    direct
        .batch_execute(&shape.ddl())
        .await
        .map_err(|e| CheckerError::db("creating the checker schema", &e))
}

/// `max_prepared_transactions` of the server (0 = two-phase commit unavailable).
pub(crate) async fn max_prepared_transactions(direct: &Client) -> Result<i64, CheckerError> {
    let row = direct
        .query_one(
            "SELECT current_setting('max_prepared_transactions')::bigint",
            &[],
        )
        .await
        .map_err(|e| CheckerError::db("reading max_prepared_transactions", &e))?;
    row.try_get(0)
        .map_err(|e| CheckerError::db("reading max_prepared_transactions", &e))
}

/// Rolls back every prepared transaction of the checker in this database (one left by a
/// failed or killed run would keep its row locks forever).
pub(crate) async fn rollback_leftover_prepared(direct: &Client) -> Result<(), CheckerError> {
    let pattern = format!("{GID_PREFIX}%");
    let rows = direct
        .query(
            "SELECT gid FROM pg_prepared_xacts \
             WHERE database = current_database() AND gid LIKE $1",
            &[&pattern],
        )
        .await
        .map_err(|e| CheckerError::db("listing prepared transactions", &e))?;
    for row in rows {
        let gid: String = row
            .try_get(0)
            .map_err(|e| CheckerError::db("reading a gid", &e))?;
        // The gid is ours (the prefix) and quoted like a literal.
        let sql = format!("ROLLBACK PREPARED '{}'", gid.replace('\'', "''"));
        match direct.batch_execute(&sql).await {
            Ok(()) => {}
            // Finished meanwhile by its own client: fine.
            Err(e) if e.code().map(|c| c.code()) == Some("42704") => {}
            Err(e) => return Err(CheckerError::db(sql, &e)),
        }
    }
    Ok(())
}

/// After a run without errors every counted increment committed exactly once: each value
/// equals its ceiling, the audit copy and the cascaded children equal their source.
pub(crate) async fn final_mismatches(
    direct: &Client,
    shape: &Shape,
    fams: &Families,
) -> Result<Vec<String>, CheckerError> {
    let mut out = Vec::new();
    let counters = rows(
        direct,
        "SELECT c.id::bigint, c.v, a.v FROM counters c JOIN counters_audit a USING (id) \
         ORDER BY c.id",
    )
    .await?;
    compare(&mut out, "counters", &counters, shape.counters, |k| {
        fams.counters.ceiling(k)
    });
    let parents = rows(
        direct,
        "SELECT p.id::bigint, p.v, min(c.parent_v), max(c.parent_v) \
         FROM parent p JOIN child c ON c.parent_id = p.id GROUP BY p.id, p.v ORDER BY p.id",
    )
    .await?;
    compare(&mut out, "parent", &parents, shape.parents, |k| {
        fams.parents.ceiling(k)
    });
    let events = rows(direct, "SELECT key::bigint, v FROM events ORDER BY key").await?;
    compare(&mut out, "events", &events, shape.events, |k| {
        fams.events.ceiling(k)
    });
    Ok(out)
}

async fn rows(direct: &Client, sql: &str) -> Result<Vec<Vec<i64>>, CheckerError> {
    let rows = direct
        .query(sql, &[])
        .await
        .map_err(|e| CheckerError::db(sql, &e))?;
    super::targets::extended_rows(&rows)
}

/// Each row is `[key, value, copies...]`: the value must equal the ceiling and every copy
/// (audit row, cascaded children) the value.
fn compare(
    out: &mut Vec<String>,
    table: &str,
    rows: &[Vec<i64>],
    expected_rows: usize,
    ceiling: impl Fn(usize) -> i64,
) {
    if rows.len() != expected_rows {
        out.push(format!(
            "{table}: {} rows, expected {expected_rows}",
            rows.len()
        ));
    }
    for (k, row) in rows.iter().enumerate() {
        let want = ceiling(k);
        match row.as_slice() {
            [key, value, copies @ ..] if *key == k as i64 => {
                if *value != want || copies.iter().any(|c| c != value) {
                    out.push(format!(
                        "{table} key {k}: {row:?}, expected value {want} everywhere"
                    ));
                }
            }
            _ => out.push(format!("{table} row {k}: {row:?}")),
        }
    }
}
