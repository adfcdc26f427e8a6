//! Results on a real Redis (issue 6 groundwork): what one instance stores another with the
//! same secret reads back byte for byte; another secret, a tampered value or an expired
//! entry is a miss; a Redis that is killed opens the circuit breaker so lookups stop waiting
//! on it, and it closes again once Redis is back. Nothing here ever errors to the caller.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::RedisServer;
use pgmemo::cache::KeySecret;
use pgmemo::cache::key::{CacheKey, KeyCheck};
use pgmemo::cache::l2::envelope::Sealed;
use pgmemo::cache::l2::store::{L2Settings, L2Store};
use pgmemo::redis_link::breaker::BreakerState;
use tokio_util::sync::CancellationToken;

type Conn = redis::aio::ConnectionManager;

async fn store(r: &RedisServer, secret: &str) -> (L2Store<Conn>, CancellationToken) {
    let client = redis::Client::open(r.url()).expect("client");
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(200)))
        .set_response_timeout(Some(Duration::from_millis(200)))
        .set_number_of_retries(1);
    let conn = Conn::new_with_config(client, config)
        .await
        .expect("connect");
    let secret = KeySecret::from_hex(secret).expect("secret");
    let settings = L2Settings {
        breaker_cooldown: Duration::from_millis(200),
        ..L2Settings::default()
    };
    let (store, writer) = L2Store::new(
        conn,
        pgmemo::cache::l2::envelope::EnvelopeKey::for_secret(&secret),
        settings,
    );
    let stop = CancellationToken::new();
    tokio::spawn(writer.run(stop.clone()));
    (store, stop)
}

const SECRET: &str = "0123456789abcdef0123456789abcdef";

fn entry(n: usize, ttl_ms: u64) -> Sealed {
    let mut frames =
        b"T\0\0\0\x1a\0\x01abalance\0\0\0\0\0\0\0\0\0\0\x17\0\x04\xff\xff\xff\xff\0\0".to_vec();
    for i in 0..n {
        let v = format!("{i:08}");
        frames.extend_from_slice(b"D\0\0\0\x12\0\x01\0\0\0\x08");
        frames.extend_from_slice(v.as_bytes());
    }
    frames.extend_from_slice(b"C\0\0\0\x0dSELECT 1\0");
    Sealed {
        check: KeyCheck(42),
        frames: Bytes::from(frames),
        created_unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        ttl_ms,
    }
}

async fn eventually_get(s: &L2Store<Conn>, key: CacheKey) -> Option<Sealed> {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        if let Some(e) = s.get(key).await {
            return Some(e);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

#[tokio::test]
async fn an_entry_stored_by_one_instance_is_read_by_another_and_only_with_the_secret() {
    let r = RedisServer::start();
    let (a, _sa) = store(&r, SECRET).await;
    let (b, _sb) = store(&r, SECRET).await;
    let (other, _so) = store(&r, "ffffffffffffffffffffffffffffffff").await;
    let key = CacheKey(0x1234_5678_9abc_def0_1234_5678_9abc_def0);
    let e = entry(500, 60_000);
    assert!(a.put(key, &e));
    let got = eventually_get(&b, key)
        .await
        .expect("B reads what A stored");
    assert_eq!(got, e);
    assert!(
        other.get(key).await.is_none(),
        "another deployment's secret"
    );
    // Compressed on the way: the pgbench-like rows shrink.
    let stored = r.command(&format!("STRLEN {}", a.redis_key(key)));
    let stored: usize = stored
        .trim()
        .trim_start_matches(':')
        .parse()
        .expect("STRLEN");
    assert!(
        stored * 2 < e.frames.len(),
        "{stored} of {}",
        e.frames.len()
    );
    // Tampered with in Redis: a miss, not a wrong answer.
    r.command(&format!("SETRANGE {} 60 XXXX", a.redis_key(key)));
    assert!(b.get(key).await.is_none());
    // Expired by its own TTL (Redis keeps it a little longer: pgmemo checks too).
    let short = CacheKey(7);
    assert!(a.put(short, &entry(1, 150)));
    assert!(eventually_get(&b, short).await.is_some());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(b.get(short).await.is_none());
}

#[tokio::test]
async fn a_dead_redis_opens_the_breaker_and_lookups_stop_waiting_on_it() {
    let mut r = RedisServer::start();
    let (a, _s) = store(&r, SECRET).await;
    let key = CacheKey(99);
    assert!(a.put(key, &entry(3, 60_000)));
    assert!(eventually_get(&a, key).await.is_some());
    r.stop();
    let started = Instant::now();
    while a.breaker().state() != BreakerState::Open {
        assert!(a.get(key).await.is_none());
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "breaker never opened"
        );
    }
    // Open: lookups return at once.
    let t = Instant::now();
    for _ in 0..100 {
        assert!(a.get(key).await.is_none());
    }
    assert!(
        t.elapsed() < Duration::from_millis(100),
        "{:?}",
        t.elapsed()
    );
    r.start_again();
    let started = Instant::now();
    while a.breaker().state() != BreakerState::Closed {
        let _ = a.get(key).await;
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "breaker never closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Redis restarted empty: a miss, then stores work again.
    assert!(a.get(key).await.is_none());
    assert!(a.put(key, &entry(3, 60_000)));
    assert!(eventually_get(&a, key).await.is_some());
}
