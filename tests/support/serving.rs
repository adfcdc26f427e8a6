//! Proof that a proxy keeps serving well-behaved sessions while a test misbehaves next to
//! them: a heartbeat session querying in a loop, a fresh-session check, and a wait for a
//! backend to be inside `pg_sleep`. Included by path next to `mod common;` in the test root.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Mutex;
use tokio_postgres::Client;

use crate::common::{PgServer, Proxy, SUPERUSER};

const DB: &str = "postgres";
/// Generous bound for "promptly" (functional tests, not benchmarks).
pub const PROMPT: Duration = Duration::from_secs(5);

/// A well-behaved session running `SELECT 1` in a loop for the whole test; `assert_serving`
/// proves it made progress since the last check and never saw an error.
pub struct Heartbeat {
    count: Arc<AtomicU64>,
    error: Arc<Mutex<Option<String>>>,
    seen: u64,
    task: tokio::task::JoinHandle<()>,
}

impl Heartbeat {
    pub async fn start(proxy: &Proxy) -> Heartbeat {
        let client = proxy.connect(SUPERUSER, "", DB).await;
        let count = Arc::new(AtomicU64::new(0));
        let error = Arc::new(Mutex::new(None));
        let task = tokio::spawn({
            let (count, error) = (Arc::clone(&count), Arc::clone(&error));
            async move {
                loop {
                    match select_one(&client).await {
                        Ok(()) => {
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            *error.lock().await = Some(e);
                            return;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        });
        let mut hb = Heartbeat {
            count,
            error,
            seen: 0,
            task,
        };
        hb.assert_serving("at start").await;
        hb
    }

    pub async fn assert_serving(&mut self, when: &str) {
        let deadline = Instant::now() + PROMPT;
        loop {
            if let Some(e) = self.error.lock().await.as_ref() {
                panic!("the well-behaved session failed ({when}): {e}");
            }
            let now = self.count.load(Ordering::Relaxed);
            if now > self.seen {
                self.seen = now;
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the well-behaved session made no progress for {PROMPT:?} ({when})"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn select_one(client: &Client) -> Result<(), String> {
    let row = tokio::time::timeout(PROMPT, client.query_one("SELECT 1::int4", &[]))
        .await
        .map_err(|_| format!("SELECT 1 took over {PROMPT:?}"))?
        .map_err(|e| format!("{e} ({e:?})"))?;
    let one: i32 = row.get(0);
    if one == 1 {
        Ok(())
    } else {
        Err(format!("SELECT 1 returned {one}"))
    }
}

/// The proxy is still running and a brand-new session works.
pub async fn assert_alive_and_serving(proxy: &mut Proxy, when: &str) {
    assert!(
        proxy.try_exit_status().is_none(),
        "pgmemo exited ({when}): {:?}\n{}",
        proxy.try_exit_status(),
        proxy.stderr()
    );
    let fresh = tokio::time::timeout(PROMPT, proxy.try_connect(SUPERUSER, "", DB))
        .await
        .unwrap_or_else(|_| panic!("new session timed out ({when})"))
        .unwrap_or_else(|e| panic!("new session failed ({when}): {e}"));
    select_one(&fresh)
        .await
        .unwrap_or_else(|e| panic!("new session query failed ({when}): {e}"));
}

/// Waits until a backend is inside pg_sleep, so a cancel has something to hit.
pub async fn wait_until_sleeping(pg: &PgServer) {
    let direct = pg.connect(SUPERUSER, "", DB).await;
    let deadline = Instant::now() + PROMPT;
    loop {
        let n: i64 = direct
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' \
                 AND query LIKE 'SELECT pg_sleep(%' AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if n > 0 {
            return;
        }
        assert!(Instant::now() < deadline, "pg_sleep never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
