//! Manual invalidation end to end: a throwaway Postgres, the pgmemo binary in front of it.
//! Two reads are cached (evidence: `pg_stat_statements` calls stay put, and
//! `pgmemo_cache_hits_total` moves), then their rows are changed directly on Postgres, which
//! pgmemo cannot see: it keeps serving the cached values. `POST /invalidate` for one table
//! makes only that table's new value visible; `{"all": true}` and SIGUSR1 make both visible.
//! Refused requests change nothing. The catalog poller runs hourly and the TTL is 10 minutes,
//! so nothing else can make the new values appear during a test.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use pgmemo::telemetry::names;
use tokio_postgres::Client;

use crate::common::SUPERUSER;
use crate::common::compare::SimpleMsg;
use crate::invalidate_api::{error_text, labelled};
use crate::probe::{CacheStack, Q, column};
use crate::{http_get, post_json};

const SETUP: &str = "
CREATE TABLE accounts(id int PRIMARY KEY, balance int NOT NULL);
INSERT INTO accounts VALUES (1, 100);
CREATE TABLE audit(id int PRIMARY KEY, note text NOT NULL);
INSERT INTO audit VALUES (1, 'first');
";

const CONFIG: &str = "[cache]\nttl = \"10m\"\n\n[catalog]\npoll_interval = \"1h\"\n";

/// How long a SIGUSR1 may take to be handled (a task on a busy two-core machine).
const SIGNAL_BOUND: Duration = Duration::from_secs(10);

struct Fixture {
    s: CacheStack,
    c: Client,
    balance: Q,
    note: Q,
}

fn old_balance() -> Vec<SimpleMsg> {
    column("balance", &["100"])
}

fn new_balance() -> Vec<SimpleMsg> {
    column("balance", &["200"])
}

fn old_note() -> Vec<SimpleMsg> {
    column("note", &["first"])
}

fn new_note() -> Vec<SimpleMsg> {
    column("note", &["second"])
}

impl Fixture {
    /// Both reads cached, then both rows changed directly on Postgres; pgmemo still serves the
    /// old values from its cache.
    async fn stale() -> Fixture {
        let s = CacheStack::start(SETUP, CONFIG).await;
        let c = s.session(SUPERUSER).await;
        let balance = s
            .probe
            .q("SELECT balance FROM accounts WHERE id = 1", None)
            .await;
        let note = s.probe.q("SELECT note FROM audit WHERE id = 1", None).await;
        s.probe.assert_upstream(&c, &balance, &old_balance()).await;
        let hits = s.metric(names::CACHE_HITS);
        s.probe.assert_hit(&c, &balance, &old_balance()).await;
        assert!(
            s.metric(names::CACHE_HITS) > hits,
            "pgmemo did not count the hit"
        );
        s.probe.assert_upstream(&c, &note, &old_note()).await;
        s.probe.assert_hit(&c, &note, &old_note()).await;

        s.direct_sql(
            "UPDATE accounts SET balance = 200 WHERE id = 1; \
             UPDATE audit SET note = 'second' WHERE id = 1;",
        );
        // pgmemo cannot know: the cached answers are still served.
        s.probe.assert_hit(&c, &balance, &old_balance()).await;
        s.probe.assert_hit(&c, &note, &old_note()).await;
        Fixture {
            s,
            c,
            balance,
            note,
        }
    }

    fn admin(&self) -> SocketAddr {
        self.s.proxy.admin_addr()
    }

    async fn invalidations(&self, scope: &str, result: &str) -> f64 {
        let reply = http_get(self.admin(), "/metrics").await;
        labelled(
            &reply.body,
            names::ADMIN_INVALIDATIONS,
            &[("scope", scope), ("result", result)],
        )
    }

    /// Both reads return the new values: first from Postgres, then cached again.
    async fn assert_both_fresh(&self) {
        let p = &self.s.probe;
        p.assert_upstream(&self.c, &self.balance, &new_balance())
            .await;
        p.assert_upstream(&self.c, &self.note, &new_note()).await;
        p.assert_hit(&self.c, &self.balance, &new_balance()).await;
        p.assert_hit(&self.c, &self.note, &new_note()).await;
    }

    fn sigusr1(&self) {
        let pid = self.s.proxy.pid().to_string();
        let status = Command::new("kill")
            .args(["-s", "USR1", &pid])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -s USR1 {pid} failed");
    }

    /// Waits until pgmemo has counted `n` flushes (the signal is handled by a task).
    async fn await_flushes(&self, n: f64) {
        let started = Instant::now();
        while self.invalidations("all", "ok").await < n {
            assert!(
                started.elapsed() < SIGNAL_BOUND,
                "SIGUSR1 not handled within {SIGNAL_BOUND:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test]
async fn post_invalidate_table_makes_only_that_tables_direct_change_visible() {
    let f = Fixture::stale().await;
    let reply = post_json(
        f.admin(),
        "/invalidate",
        r#"{"database": "app", "table": "public.accounts"}"#,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let json = reply.json();
    assert_eq!(json["invalidated"], "table", "{}", reply.body);
    assert_eq!(json["database"], "app");
    assert_eq!(json["table"], "public.accounts");
    assert!(json["tags"].as_u64().unwrap() >= 1, "{}", reply.body);

    let p = &f.s.probe;
    p.assert_upstream(&f.c, &f.balance, &new_balance()).await;
    p.assert_hit(&f.c, &f.balance, &new_balance()).await;
    // The other table was not invalidated: still the stale cached value.
    p.assert_hit(&f.c, &f.note, &old_note()).await;

    // An unqualified, differently cased name resolves like SQL (search_path public).
    let reply = post_json(
        f.admin(),
        "/invalidate",
        r#"{"database": "app", "table": "Audit"}"#,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    p.assert_upstream(&f.c, &f.note, &new_note()).await;
    p.assert_hit(&f.c, &f.note, &new_note()).await;
    assert_eq!(f.invalidations("table", "ok").await, 2.0);
    assert_eq!(f.invalidations("all", "ok").await, 0.0);
}

#[tokio::test]
async fn post_invalidate_all_makes_every_direct_change_visible() {
    let f = Fixture::stale().await;
    let reply = post_json(f.admin(), "/invalidate", r#"{"all": true}"#).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let json = reply.json();
    assert_eq!(json["invalidated"], "all", "{}", reply.body);
    assert!(json["epoch"].is_u64(), "{}", reply.body);
    f.assert_both_fresh().await;
    assert_eq!(f.invalidations("all", "ok").await, 1.0);
}

#[tokio::test]
async fn sigusr1_flushes_the_cache_every_time() {
    let mut f = Fixture::stale().await;
    f.sigusr1();
    f.await_flushes(1.0).await;
    f.assert_both_fresh().await;

    // The handler stays installed: a second change, a second signal.
    f.s.direct_sql("UPDATE accounts SET balance = 300 WHERE id = 1");
    let p = &f.s.probe;
    p.assert_hit(&f.c, &f.balance, &new_balance()).await;
    f.sigusr1();
    f.await_flushes(2.0).await;
    p.assert_upstream(&f.c, &f.balance, &column("balance", &["300"]))
        .await;
    assert_eq!(f.s.proxy.try_exit_status(), None, "SIGUSR1 stopped pgmemo");
    assert!(
        f.s.proxy.stderr().contains("SIGUSR1"),
        "the flush was not logged:\n{}",
        f.s.proxy.stderr()
    );
}

#[tokio::test]
async fn refused_invalidations_leave_the_cache_as_it_was() {
    let f = Fixture::stale().await;
    let cases = [
        // The database is known (the fixture's session used it), the relation is not.
        (
            r#"{"database": "app", "table": "public.nope"}"#,
            404,
            "nope",
        ),
        // A database no session has used through pgmemo.
        (
            r#"{"database": "elsewhere", "table": "accounts"}"#,
            404,
            "elsewhere",
        ),
        (r#"{"database": "app"}"#, 400, "missing \"table\""),
        (r#"{"all": "yes"}"#, 400, "invalid JSON"),
    ];
    for (body, status, want) in cases {
        let reply = post_json(f.admin(), "/invalidate", body).await;
        assert_eq!(reply.status, status, "{body}: {}", reply.body);
        let error = error_text(&reply);
        assert!(error.contains(want), "{body}: {error}");
    }
    assert_eq!(http_get(f.admin(), "/invalidate").await.status, 405);
    assert_eq!(f.invalidations("table", "error").await, 2.0);
    assert_eq!(f.invalidations("table", "ok").await, 0.0);
    let p = &f.s.probe;
    p.assert_hit(&f.c, &f.balance, &old_balance()).await;
    p.assert_hit(&f.c, &f.note, &old_note()).await;
    // Still in service after the refusals.
    assert_eq!(
        post_json(f.admin(), "/invalidate", r#"{"all": true}"#)
            .await
            .status,
        200
    );
    f.assert_both_fresh().await;
}
