//! Shared by the `cache_*` integration tests: a throwaway Postgres whose schema is built
//! before pgmemo starts (so set-up DDL and role changes never race the catalog poller into
//! epoch bumps), pgmemo with fast cache settings in front of it, and the evidence of a hit.
//!
//! The primary evidence is `pg_stat_statements` on the throwaway server: a hit never reaches
//! Postgres, so the `calls` of the statement's query id do not move. Query ids are read with
//! `EXPLAIN (VERBOSE)` on a direct connection under the same search_path, so statements that
//! only differ in constants, comments or whitespace are told apart by *deltas* around one run,
//! never by text matching. pgmemo's own hit/miss counters (`/metrics`) are secondary evidence.
//! Included by path next to `mod common;` in each test root.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

use crate::common::compare::{SimpleMsg, simple_msgs};
use crate::common::{PgOptions, PgServer, Proxy, ProxyArgs, SUPERUSER};

/// The database every cache test uses (created by `PgServer` with `pg_stat_statements`).
pub const DB: &str = crate::common::stack::APP_DB;
/// `catalog.poll_interval` of every cache test.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// How long a change made directly on Postgres may take to reach pgmemo through the poller:
/// ten poll intervals, because the machine's two cores are shared with other builds and the
/// poller's side-connection queries queue behind them. The measured latency is printed.
pub const POLL_BOUND: Duration = Duration::from_secs(2);
/// How long a session may take to use the cache again after something pgmemo could not model
/// (a non-immutable function call, CREATE TEMP): it re-establishes the session's settings.
pub const REESTABLISH_BOUND: Duration = Duration::from_secs(5);

/// Row-level security on `current_user`: table `notes` with one row each for the login
/// roles alice (10), bob (20) and carol (30), who may read it.
pub const RLS_NOTES: &str = "
CREATE TABLE notes(id int PRIMARY KEY, owner text NOT NULL, v int NOT NULL);
INSERT INTO notes VALUES (1, 'alice', 10), (2, 'bob', 20), (3, 'carol', 30);
ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
CREATE POLICY mine ON notes USING (owner = current_user);
CREATE ROLE alice LOGIN; CREATE ROLE bob LOGIN; CREATE ROLE carol LOGIN;
GRANT SELECT ON notes TO alice, bob, carol;
";

/// The config every cache test starts from; `cache_extra` goes into `[cache]` (e.g.
/// `max_entry_size = "4KiB"`), `rest` after the last section (e.g. `[[rules]]` tables).
pub fn config(cache_extra: &str, rest: &str) -> String {
    format!(
        "[cache]\nttl = \"60s\"\n{cache_extra}\n\n[catalog]\npoll_interval = \"200ms\"\n\n{rest}\n"
    )
}

/// Postgres prepared with `setup`, then pgmemo, plus a direct superuser probe connection.
pub struct CacheStack {
    // Dropped in this order: the proxy (killed) before its upstream.
    pub proxy: Proxy,
    pub probe: Probe,
    pub pg: PgServer,
}

impl CacheStack {
    /// Starts Postgres (every role may log in over TCP without a password, so tests can
    /// connect as the roles they create), runs `setup` as the superuser in [`DB`], then starts
    /// pgmemo with `config_toml`.
    pub async fn start(setup: &str, config_toml: &str) -> CacheStack {
        let pg = PgServer::start(PgOptions::default().hba_line("host all all 127.0.0.1/32 trust"));
        if !setup.trim().is_empty() {
            pg.psql(DB, setup);
        }
        CacheStack::start_on(pg, config_toml).await
    }

    /// pgmemo with `config_toml` in front of `pg`, already prepared by the caller.
    pub async fn start_on(pg: PgServer, config_toml: &str) -> CacheStack {
        let proxy = Proxy::start(
            ProxyArgs::new(pg.url(SUPERUSER, "postgres")).config(config_toml.to_string()),
        );
        let probe = Probe {
            client: pg.connect(SUPERUSER, "", DB).await,
        };
        settle_streams(&proxy).await;
        CacheStack { proxy, probe, pg }
    }

    /// A session through pgmemo as `user` (trust) in [`DB`].
    pub async fn session(&self, user: &str) -> Client {
        self.proxy.connect(user, "", DB).await
    }

    /// A session through pgmemo as `user` with startup `options` (e.g. `-c search_path=b`).
    pub async fn session_with_options(&self, user: &str, options: &str) -> Client {
        let mut config = crate::common::pg_config(self.proxy.addr(), user, "", DB);
        config.options(options);
        let (client, connection) = config
            .connect(NoTls)
            .await
            .unwrap_or_else(|e| panic!("connect {user} with options {options:?}: {e} ({e:?})"));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                eprintln!("test connection ended with error: {e}");
            }
        });
        client
    }

    /// Runs SQL directly on Postgres (bypassing pgmemo) as the superuser in [`DB`].
    pub fn direct_sql(&self, sql: &str) {
        self.pg.psql(DB, sql);
    }

    /// Sum of a pgmemo counter over all its label sets (0 when not yet exported).
    pub fn metric(&self, name: &str) -> f64 {
        metric_sum(&self.proxy.admin_get("/metrics"), name)
    }
}

/// Waits (at most 20 s) until no change stream is still connecting or creating its slot. A
/// stream that becomes consistent bumps the epoch (whatever it missed before is dropped): the default stream
/// follows the upstream URL's database, so without this wait a test that caches in its
/// first few milliseconds could see its entries dropped by that start-up bump (a flaky
/// "expected a cache hit"). A stream that cannot connect (a test's own CDC set-up) is left
/// to the test.
async fn settle_streams(proxy: &Proxy) {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(20) {
        let metrics = proxy.admin_get("/metrics");
        let connecting = metrics.lines().any(|line| {
            line.starts_with("pgmemo_cdc_state{")
                && (line.contains("state=\"connecting\"")
                    || line.contains("state=\"creating_slot\""))
                && line.ends_with(" 1")
        });
        if !connecting {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sum of every sample of `name` in a Prometheus text exposition (headers are skipped).
pub fn metric_sum(response: &str, name: &str) -> f64 {
    let body = response
        .split_once("\r\n\r\n")
        .map_or(response, |(_, body)| body);
    body.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            if !(rest.starts_with('{') || rest.starts_with(' ')) {
                return None;
            }
            line.rsplit(' ').next()?.parse::<f64>().ok()
        })
        .sum()
}

/// A statement and its `pg_stat_statements` query id.
#[derive(Debug, Clone)]
pub struct Q {
    pub sql: String,
    pub qid: i64,
}

/// A direct superuser connection to the throwaway server's [`DB`], reading
/// `pg_stat_statements`.
pub struct Probe {
    pub client: Client,
}

impl Probe {
    /// The query id Postgres gives `sql` under `search_path` (None = the default path).
    pub async fn q(&self, sql: &str, search_path: Option<&str>) -> Q {
        if let Some(path) = search_path {
            self.exec(&format!("SET search_path = {path}")).await;
        }
        let explained = self
            .client
            .simple_query(&format!("EXPLAIN (VERBOSE) {sql}"))
            .await
            .unwrap_or_else(|e| panic!("EXPLAIN (VERBOSE) {sql}: {e} ({e:?})"));
        if search_path.is_some() {
            self.exec("RESET search_path").await;
        }
        let qid = simple_msgs(&explained)
            .into_iter()
            .find_map(|m| match m {
                SimpleMsg::Row(cols) => cols
                    .first()
                    .cloned()
                    .flatten()
                    .and_then(|line| {
                        line.trim()
                            .strip_prefix("Query Identifier: ")
                            .map(str::to_string)
                    })
                    .and_then(|id| id.parse::<i64>().ok()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no Query Identifier in EXPLAIN (VERBOSE) of {sql}"));
        Q {
            sql: sql.to_string(),
            qid,
        }
    }

    /// How many times Postgres executed statements with this query id (all roles).
    pub async fn calls(&self, q: &Q) -> i64 {
        self.scalar(&format!(
            "SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements \
             WHERE queryid = {} AND dbid = (SELECT oid FROM pg_database \
             WHERE datname = current_database())",
            q.qid
        ))
        .await
    }

    /// Executions of top-level SELECTs whose recorded text contains `fragment` (for relations
    /// the probe cannot see, such as another session's temp table). `fragment` must be unique
    /// to the statement and free of quotes.
    pub async fn calls_matching(&self, fragment: &str) -> i64 {
        assert!(!fragment.contains('\''), "fragment must not hold quotes");
        self.scalar(&format!(
            "SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements \
             WHERE query ILIKE 'select%' AND strpos(query, '{fragment}') > 0"
        ))
        .await
    }

    /// Runs `q` on `client` (simple protocol), panicking on error; returns what the client saw
    /// and how many times Postgres executed it meanwhile.
    pub async fn run(&self, client: &Client, q: &Q) -> (Vec<SimpleMsg>, i64) {
        let before = self.calls(q).await;
        let got = simple(client, &q.sql).await;
        (got, self.calls(q).await - before)
    }

    /// `q` returns `want` and was answered by pgmemo without reaching Postgres.
    pub async fn assert_hit(&self, client: &Client, q: &Q, want: &[SimpleMsg]) {
        let (got, calls) = self.run(client, q).await;
        assert_eq!(got, want, "rows of {:?}", q.sql);
        assert_eq!(
            calls, 0,
            "{:?} reached Postgres: expected a cache hit",
            q.sql
        );
    }

    /// `q` returns `want` and was executed by Postgres exactly once (not served from cache).
    pub async fn assert_upstream(&self, client: &Client, q: &Q, want: &[SimpleMsg]) {
        let (got, calls) = self.run(client, q).await;
        assert_eq!(got, want, "rows of {:?}", q.sql);
        assert_eq!(
            calls, 1,
            "{:?}: expected exactly one execution by Postgres (no cache hit)",
            q.sql
        );
    }

    /// Runs `q` until a run is a hit, each run returning `want`; panics after `within`.
    /// For sessions that may bypass the cache for a while (until pgmemo re-establishes their
    /// settings). Returns how long it took.
    pub async fn eventually_hit(
        &self,
        client: &Client,
        q: &Q,
        want: &[SimpleMsg],
        within: Duration,
    ) -> Duration {
        let started = Instant::now();
        loop {
            let (got, calls) = self.run(client, q).await;
            assert_eq!(got, want, "rows of {:?}", q.sql);
            if calls == 0 {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < within,
                "{:?} never served from cache within {within:?}",
                q.sql
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn scalar(&self, sql: &str) -> i64 {
        let msgs = simple(&self.client, sql).await;
        msgs.iter()
            .find_map(|m| match m {
                SimpleMsg::Row(cols) => cols.first().cloned().flatten(),
                _ => None,
            })
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no integer from {sql}: {msgs:?}"))
    }

    async fn exec(&self, sql: &str) {
        simple(&self.client, sql).await;
    }
}

/// Reads `sql` through `c` until it returns `new`; until then it may only return `old` (an
/// answer cached before the change). Panics if `new` does not come within `bound`; returns
/// the wait.
pub async fn until_new_answer(
    c: &Client,
    sql: &str,
    old: &[SimpleMsg],
    new: &[SimpleMsg],
    bound: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        let got = simple(c, sql).await;
        if got == new {
            return started.elapsed();
        }
        assert_eq!(got, old, "{sql}: neither the old nor the new answer");
        assert!(
            started.elapsed() < bound,
            "{sql}: still the old answer {bound:?} after the change"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Runs `sql` with the simple protocol; panics (with the SQL) on error.
pub async fn simple(client: &Client, sql: &str) -> Vec<SimpleMsg> {
    match client.simple_query(sql).await {
        Ok(messages) => simple_msgs(&messages),
        Err(e) => panic!("{sql}: {e} ({e:?})"),
    }
}

/// Runs `sql` with the simple protocol, expecting a server error; returns its SQLSTATE.
pub async fn simple_err(client: &Client, sql: &str) -> SqlState {
    match client.simple_query(sql).await {
        Ok(messages) => panic!("{sql}: expected an error, got {:?}", simple_msgs(&messages)),
        Err(e) => crate::common::db_error(&e).code().clone(),
    }
}

/// The simple-protocol messages of a one-statement result: column names, rows, row count.
pub fn table(columns: &[&str], rows: &[&[&str]]) -> Vec<SimpleMsg> {
    let mut out = vec![SimpleMsg::Columns(
        columns.iter().map(|c| c.to_string()).collect(),
    )];
    out.extend(
        rows.iter()
            .map(|row| SimpleMsg::Row(row.iter().map(|v| Some(v.to_string())).collect())),
    );
    out.push(SimpleMsg::Complete(rows.len() as u64));
    out
}

/// One-column result.
pub fn column(name: &str, values: &[&str]) -> Vec<SimpleMsg> {
    let rows: Vec<[&str; 1]> = values.iter().map(|v| [*v]).collect();
    let refs: Vec<&[&str]> = rows.iter().map(|r| r.as_slice()).collect();
    table(&[name], &refs)
}

/// The values of column `i` of every row (None for NULL).
pub fn values(msgs: &[SimpleMsg], i: usize) -> Vec<Option<String>> {
    msgs.iter()
        .filter_map(|m| match m {
            SimpleMsg::Row(cols) => Some(cols.get(i).cloned().flatten()),
            _ => None,
        })
        .collect()
}

/// The column names of the (first) RowDescription.
pub fn columns(msgs: &[SimpleMsg]) -> Vec<String> {
    msgs.iter()
        .find_map(|m| match m {
            SimpleMsg::Columns(c) => Some(c.clone()),
            _ => None,
        })
        .unwrap_or_default()
}
