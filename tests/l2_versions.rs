//! Shared versions on a real Redis (issue 6 groundwork): counters read in one round trip,
//! bumps visible to every client, and — the point of the generation — no way for counters to
//! go backwards: after FLUSHALL, a Redis restart without persistence, or a lost versions
//! hash, a snapshot names a new generation, so no key built before can match again. A
//! server that may evict keys without a TTL is refused. And the lease that elects one
//! instance (the CDC runner) passes on when its holder lapses or releases it.

mod common;

use std::time::Duration;

use common::RedisServer;
use pgmemo::cache::l2::versions::{SharedVersions, VersionsError, parse_bump_message};
use pgmemo::cache::{Dep, Tag};

const T1: Dep = Dep::Table(Tag { db: 5, rel: 100 });
const T2: Dep = Dep::Table(Tag { db: 5, rel: 200 });

async fn conn(r: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(r.url())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connect")
}

fn shared() -> SharedVersions {
    SharedVersions::new("test", Duration::from_secs(2))
}

#[tokio::test]
async fn bumps_are_shared_and_counters_never_revive_after_a_flush_or_restart() {
    let mut r = RedisServer::start();
    let v = shared();
    let (mut a, mut b) = (conn(&r).await, conn(&r).await);
    v.check_policy(&mut a)
        .await
        .expect("default policy is noeviction");
    let s0 = v.snapshot(&mut a, &[T1, T2]).await.expect("snapshot");
    assert_eq!((s0.epoch, s0.versions.clone()), (0, vec![0, 0]));
    assert_eq!(
        v.snapshot(&mut b, &[T1]).await.expect("b").generation,
        s0.generation
    );

    let announced = v.bump(&mut b, &[T1], false).await.expect("bump");
    assert_eq!(announced.generation, s0.generation);
    assert_eq!((announced.epoch, announced.deps), (None, vec![(T1, 1)]));
    v.bump(&mut b, &[T1, T2], true).await.expect("bump");
    let s1 = v.snapshot(&mut a, &[T1, T2]).await.expect("snapshot");
    assert_eq!(
        (s1.generation.clone(), s1.epoch, s1.versions),
        (s0.generation.clone(), 1, vec![2, 1])
    );

    // FLUSHALL: the counters are gone; the next snapshot is a new generation.
    r.command("FLUSHALL");
    let s2 = v.snapshot(&mut a, &[T1]).await.expect("after flush");
    assert_ne!(s2.generation, s0.generation);
    assert_eq!(s2.versions, vec![0]);

    // Only the hash lost (as an eviction or a stray DEL would): a new generation too.
    r.command("DEL {pgmemo:test}:versions");
    let s3 = v.snapshot(&mut a, &[T1]).await.expect("after hash loss");
    assert_ne!(s3.generation, s2.generation);
    // A bump into a lost hash starts (and announces) a new generation itself, so mirrors
    // learn of the loss from the bump.
    r.command("DEL {pgmemo:test}:versions");
    let announced = v.bump(&mut a, &[T1], false).await.expect("bump");
    assert_ne!(announced.generation, s3.generation);
    assert_eq!(announced.deps, vec![(T1, 1)]);
    let s4 = v
        .snapshot(&mut a, &[T1])
        .await
        .expect("after a bump into a lost hash");
    assert_eq!(s4.generation, announced.generation);
    assert_eq!(s4.versions, vec![1]);

    // A restart without persistence.
    r.stop();
    assert!(
        v.snapshot(&mut a, &[T1]).await.is_err(),
        "Redis down is an error, not a hang"
    );
    r.start_again();
    let mut a = conn(&r).await;
    let s5 = v.snapshot(&mut a, &[T1]).await.expect("after restart");
    assert_ne!(s5.generation, s4.generation);
    for earlier in [&s0, &s2, &s3] {
        assert_ne!(s5.generation, earlier.generation);
    }
}

#[tokio::test]
async fn concurrent_instances_agree_on_one_new_generation() {
    let r = RedisServer::start();
    let v = shared();
    let mut conns = Vec::new();
    for _ in 0..8 {
        conns.push(conn(&r).await);
    }
    let reads = conns.iter_mut().map(|c| {
        let v = v.clone();
        async move { v.snapshot(c, &[T1]).await.expect("snapshot").generation }
    });
    let gens = futures_util::future::join_all(reads).await;
    assert!(gens.windows(2).all(|w| w[0] == w[1]), "{gens:?}");
}

#[tokio::test]
async fn an_evicting_policy_is_refused_and_bumps_are_announced() {
    let r = RedisServer::start();
    let v = shared();
    let mut c = conn(&r).await;
    r.command("CONFIG SET maxmemory-policy allkeys-lru");
    match v.check_policy(&mut c).await {
        Err(VersionsError::EvictionPolicy(p)) => assert_eq!(p, "allkeys-lru"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    r.command("CONFIG SET maxmemory-policy volatile-lru");
    v.check_policy(&mut c)
        .await
        .expect("volatile-* keeps keys without a TTL");

    let client = redis::Client::open(r.url()).expect("client");
    let mut sub = client.get_async_pubsub().await.expect("pubsub");
    sub.subscribe(v.channel()).await.expect("subscribe");
    v.bump(&mut c, &[T1, T2], true).await.expect("bump");
    use futures_util::StreamExt;
    let msg = tokio::time::timeout(Duration::from_secs(5), sub.on_message().next())
        .await
        .expect("announced in time")
        .expect("a message");
    let payload: String = msg.get_payload().expect("text");
    let bump = parse_bump_message(&payload).expect("well-formed");
    assert_eq!(bump.epoch, Some(1));
    assert_eq!(bump.deps, vec![(T1, 1), (T2, 1)]);
}

#[tokio::test]
async fn one_instance_holds_the_lease_and_another_takes_over_when_it_lapses_or_is_released() {
    use pgmemo::redis_link::lease::Lease;
    let r = RedisServer::start();
    let mut c = conn(&r).await;
    // Generous against scheduling delays on a shared machine: renewals every 200 ms.
    let period = Duration::from_millis(1500);
    let a = Lease::new("test", "cdc:app", "instance-a", period);
    let b = Lease::new("test", "cdc:app", "instance-b", period);
    assert!(a.acquire_or_renew(&mut c).await.expect("a"));
    assert!(!b.acquire_or_renew(&mut c).await.expect("b"), "held by a");
    // a renews within the period: b keeps losing.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(a.acquire_or_renew(&mut c).await.expect("a renews"));
        assert!(!b.acquire_or_renew(&mut c).await.expect("b"));
    }
    // a stops renewing (paused or dead): b takes over after the period...
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert!(b.acquire_or_renew(&mut c).await.expect("b takes over"));
    // ...and a, back, can neither renew nor release b's lease.
    assert!(!a.acquire_or_renew(&mut c).await.expect("a"));
    assert!(!a.release(&mut c).await.expect("a release"));
    assert_eq!(
        a.holder(&mut c).await.expect("holder").as_deref(),
        Some("instance-b")
    );
    // b releases at shutdown: a gets it at once.
    assert!(b.release(&mut c).await.expect("b release"));
    assert!(a.acquire_or_renew(&mut c).await.expect("a again"));
}
