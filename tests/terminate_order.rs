//! A client's Terminate: PostgreSQL closes the connection when its backend exits, so a client
//! that waits for that close (asyncpg's `close()`, a pool replacing connections) finds the
//! backend gone. pgmemo closes the client's connection only once the upstream's closed. A
//! relay between pgmemo and PostgreSQL (`support/gate.rs`) delays the Terminate on its way
//! upstream, so a close that did not wait for the server is seen deterministically.

mod common;
#[path = "support/gate.rs"]
mod gate;
#[path = "support/wire.rs"]
mod wire;

use std::time::{Duration, Instant};

use common::{PgOptions, PgServer, Proxy, ProxyArgs, SUPERUSER};
use gate::Gate;
use pgmemo::protocol::startup::encode_startup;
use tokio::io::AsyncWriteExt;

const DB: &str = "postgres";
const UP_DELAY: Duration = Duration::from_millis(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_sees_the_close_after_the_backend_is_gone() {
    let pg = PgServer::start(PgOptions::default());
    let gate = Gate::start(pg.addr()).await;
    let proxy = Proxy::start(ProxyArgs::new(gate.url(SUPERUSER, DB)));
    let direct = pg.connect(SUPERUSER, "", DB).await;

    let mut s = wire::connect(proxy.addr()).await;
    let startup = encode_startup(
        3,
        0,
        &[
            ("user", SUPERUSER),
            ("database", DB),
            ("application_name", "terminator"),
        ],
    );
    s.write_all(&startup).await.expect("send startup");
    let frames = wire::frames_until_ready(&mut s, Duration::from_secs(10)).await;
    let key = frames
        .iter()
        .find(|f| f[0] == b'K')
        .expect("BackendKeyData");
    let pid = i32::from_be_bytes([key[5], key[6], key[7], key[8]]);
    s.write_all(&wire::query("SELECT 1")).await.expect("query");
    wire::frames_until_ready(&mut s, Duration::from_secs(10)).await;

    gate.delay_upstream("terminator", UP_DELAY);
    let started = Instant::now();
    s.write_all(&wire::frame(b'X', &[]))
        .await
        .expect("send Terminate");
    let rest = wire::bytes_until_closed(&mut s, Duration::from_secs(10)).await;
    let took = started.elapsed();
    assert!(rest.is_empty(), "pgmemo answered a Terminate: {rest:?}");
    let alive: i64 = direct
        .query_one(
            "SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE pid = $1",
            &[&pid],
        )
        .await
        .expect("pg_stat_activity")
        .get(0);
    assert_eq!(
        alive, 0,
        "the client saw its connection close after {took:?}, while its backend was still running"
    );
    assert!(took >= UP_DELAY, "closed after {took:?}");
}
