//! The session-switching reader (issue 15): a client changes its `search_path` and its tenant
//! (`checker.tenant`) through SQL `EXECUTE` of prepared `set_config` calls — settings changes
//! pgmemo cannot see in SQL — sent as a simple Query, through the extended protocol, inside a
//! multi-statement Query, or in a block that commits or rolls back. Each read after a switch
//! must answer for the state switched to: a table that exists under one name in two schemas,
//! and a view filtered by the tenant. Another session's answer is a **leak**. The view calls
//! the STABLE `current_setting`: pgmemo caches it only under a rule with
//! `allow_stable_functions = true` for `public.iso_tenant_view` (without one its reads are
//! still judged, never served from the cache).

use tokio_postgres::SimpleQueryMessage;

use super::CheckerError;
use super::state::Pick;
use super::worker::{Conn, Worker, client_addr};

/// The objects of this reader, created with the rest of the schema (directly).
pub(crate) const DDL: &str = "
DROP SCHEMA IF EXISTS iso_s1, iso_s2 CASCADE;
DROP VIEW IF EXISTS iso_tenant_view;
DROP TABLE IF EXISTS iso_tenant;
CREATE SCHEMA iso_s1;
CREATE SCHEMA iso_s2;
CREATE TABLE iso_s1.iso_marker (v text NOT NULL);
CREATE TABLE iso_s2.iso_marker (v text NOT NULL);
INSERT INTO iso_s1.iso_marker VALUES ('iso_s1');
INSERT INTO iso_s2.iso_marker VALUES ('iso_s2');
CREATE TABLE iso_tenant (tenant text NOT NULL, v text NOT NULL);
INSERT INTO iso_tenant VALUES ('t1', 'of-t1'), ('t2', 'of-t2'), ('t2', 'of-t2-b');
CREATE VIEW iso_tenant_view AS
    SELECT v FROM public.iso_tenant WHERE tenant = current_setting('checker.tenant', true);
";

const PREPARE: &str = "PREPARE chk_path(text) AS SELECT set_config('search_path', $1, false); \
     PREPARE chk_tenant(text) AS SELECT set_config('checker.tenant', $1, false)";
const MARKER: &str = "SELECT v FROM iso_marker";
const TENANT: &str = "SELECT v FROM iso_tenant_view ORDER BY v";

/// What the reads must answer for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Target {
    schema: &'static str,
    tenant: &'static str,
}

impl Target {
    /// Where a connection starts once the statements are prepared.
    const START: Target = Target {
        schema: "iso_s1",
        tenant: "t1",
    };

    fn tenant_rows(self) -> Vec<String> {
        match self.tenant {
            "t1" => vec!["of-t1".into()],
            _ => vec!["of-t2".into(), "of-t2-b".into()],
        }
    }
}

/// How the switch is sent.
#[derive(Clone, Copy, Debug)]
enum Form {
    Simple,
    Extended,
    InBatch,
    BlockCommitted,
    BlockRolledBack,
}

impl Worker {
    /// Switches schema and tenant with one form, then reads both targets.
    pub async fn read_switched(&mut self) -> Result<(), CheckerError> {
        let conn = match self.switcher.take() {
            Some(conn) => conn,
            None => Conn::open(&self.sh.cfg, client_addr(&self.sh, self.id)).await?,
        };
        let conn = self.switcher.insert(conn);
        let current = match conn.switched {
            Some(current) => current,
            None => {
                conn.simple(PREPARE).await?;
                switch(conn, Form::Simple, Target::START).await?;
                conn.switched = Some(Target::START);
                Target::START
            }
        };
        let next = Target {
            schema: self.rng.pick(&["iso_s1", "iso_s2"]),
            tenant: self.rng.pick(&["t1", "t2"]),
        };
        let form = self.rng.pick(&[
            Form::Simple,
            Form::Extended,
            Form::InBatch,
            Form::BlockCommitted,
            Form::BlockRolledBack,
        ]);
        switch(conn, form, next).await?;
        let want = match form {
            Form::BlockRolledBack => current,
            _ => next,
        };
        conn.switched = Some(want);
        for _ in 0..2 {
            let extended = self.rng.chance(50);
            let conn = self
                .switcher
                .as_ref()
                .ok_or_else(|| CheckerError::Shape("the switching connection went away".into()))?;
            let schema = read_strings(conn, MARKER, extended).await?;
            if schema != [want.schema] {
                self.sh.rec.leaked(format!(
                    "client {} after {form:?} to {next:?} (now {want:?}): {MARKER} gave {schema:?}",
                    self.id
                ));
            }
            let rows = read_strings(conn, TENANT, extended).await?;
            if rows != want.tenant_rows() {
                self.sh.rec.leaked(format!(
                    "client {} after {form:?} to {next:?} (now {want:?}): {TENANT} gave {rows:?}",
                    self.id
                ));
            }
        }
        Ok(())
    }
}

/// Switches `conn` to `to`, sending the EXECUTEs in `form`.
async fn switch(conn: &Conn, form: Form, to: Target) -> Result<(), CheckerError> {
    let path = format!("EXECUTE chk_path('{}, public')", to.schema);
    let tenant = format!("EXECUTE chk_tenant('{}')", to.tenant);
    match form {
        Form::Simple => {
            conn.simple(&path).await?;
            conn.simple(&tenant).await?;
        }
        Form::Extended => {
            for sql in [&path, &tenant] {
                conn.client
                    .query(sql.as_str(), &[])
                    .await
                    .map_err(|e| CheckerError::db(sql.as_str(), &e))?;
            }
        }
        Form::InBatch => {
            conn.simple(&format!("SELECT 1; {path}; {tenant}")).await?;
        }
        Form::BlockCommitted | Form::BlockRolledBack => {
            conn.simple("BEGIN").await?;
            conn.simple(&path).await?;
            conn.simple(&tenant).await?;
            let end = match form {
                Form::BlockCommitted => "COMMIT",
                _ => "ROLLBACK",
            };
            conn.simple(end).await?;
        }
    }
    Ok(())
}

/// The first column of every row of `sql` on `conn`, sent as a simple Query or (`extended`)
/// with the extended protocol.
async fn read_strings(conn: &Conn, sql: &str, extended: bool) -> Result<Vec<String>, CheckerError> {
    if extended {
        let rows = conn
            .client
            .query(sql, &[])
            .await
            .map_err(|e| CheckerError::db(sql, &e))?;
        return rows
            .iter()
            .map(|r| r.try_get::<_, String>(0))
            .collect::<Result<_, _>>()
            .map_err(|e| CheckerError::db(sql, &e));
    }
    Ok(conn
        .simple(sql)
        .await?
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .collect())
}
