//! Memory cost of idle client connections: 500 idle sessions through pgmemo must cost at most
//! 64 KiB of proxy RSS each (issue 2 acceptance). Prints the measured figure.

mod common;

use std::time::Duration;

use common::{PgOptions, PgServer, Proxy, ProxyArgs, SUPERUSER};
use futures_util::StreamExt;
use tokio_postgres::Client;

const DB: &str = "postgres";
const IDLE: usize = 500;
const WARM_UP: usize = 10;
const BUDGET_KIB: f64 = 64.0;
/// Connections opened at once (Postgres forks a backend per connection; keep it gentle).
const CONCURRENCY: usize = 16;

async fn open(proxy: &Proxy, n: usize) -> Vec<Client> {
    futures_util::stream::iter(0..n)
        .map(|_| async {
            let c = proxy.connect(SUPERUSER, "", DB).await;
            let one: i32 = c.query_one("SELECT 1::int4", &[]).await.unwrap().get(0);
            assert_eq!(one, 1);
            c
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_cost_at_most_64_kib_each() {
    let pg = PgServer::start(PgOptions::default().max_connections(600));
    let proxy = Proxy::start(ProxyArgs::new(pg.url(SUPERUSER, DB)));

    // Warm-up: runtime threads, allocator arenas, metrics handles and buffers exist.
    let warm = open(&proxy, WARM_UP).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = proxy.rss_kib();

    let idle = open(&proxy, IDLE).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = proxy.rss_kib();
    // Everything is still open while measuring.
    for c in warm.iter().chain(&idle).step_by(50) {
        c.simple_query("SELECT 1")
            .await
            .expect("idle session still works");
    }

    let per_conn_kib = after.saturating_sub(before) as f64 / IDLE as f64;
    let line = format!(
        "pgmemo idle memory: RSS {before} KiB -> {after} KiB with {IDLE} idle connections = \
         {per_conn_kib:.1} KiB per connection (budget {BUDGET_KIB} KiB)"
    );
    println!("{line}");
    eprintln!("{line}");
    assert!(per_conn_kib <= BUDGET_KIB, "{line}");
    drop((warm, idle));
}
