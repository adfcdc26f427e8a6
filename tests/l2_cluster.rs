//! The shared tier on a three-master Redis Cluster started on loopback (issue 6
//! groundwork): the version counters and their generation share one hash tag, so the
//! generation script and the atomic bump run in one slot; results spread over the slots;
//! the same correctness properties as on one Redis (bumps shared, a flush is a new
//! generation, one instance reads what another stored).

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::RedisCluster;
use pgmemo::cache::key::{CacheKey, KeyCheck, KeySecret};
use pgmemo::cache::l2::envelope::Sealed;
use pgmemo::cache::l2::store::{L2Settings, L2Store};
use pgmemo::cache::l2::versions::SharedVersions;
use pgmemo::cache::{Dep, Tag};
use redis::cluster_async::ClusterConnection;
use tokio_util::sync::CancellationToken;

async fn conn(c: &RedisCluster) -> ClusterConnection {
    redis::cluster::ClusterClient::new(c.urls())
        .expect("cluster client")
        .get_async_connection()
        .await
        .expect("cluster connection")
}

const T: Dep = Dep::Table(Tag { db: 1, rel: 42 });

#[tokio::test]
async fn versions_and_results_work_across_a_three_master_cluster() {
    let cluster = RedisCluster::start(3);
    let v = SharedVersions::new("c", Duration::from_secs(2));
    let (mut a, mut b) = (conn(&cluster).await, conn(&cluster).await);
    v.check_policy(&mut a).await.expect("policy");
    let s0 = v.snapshot(&mut a, &[T]).await.expect("snapshot");
    v.bump(&mut b, &[T], true).await.expect("bump");
    let s1 = v.snapshot(&mut a, &[T]).await.expect("snapshot");
    assert_eq!(
        (s1.generation.clone(), s1.epoch, s1.versions),
        (s0.generation.clone(), 1, vec![1])
    );
    // Flush every master: a new generation.
    for node in &cluster.nodes {
        node.command("FLUSHALL");
    }
    let s2 = v.snapshot(&mut a, &[T]).await.expect("after flush");
    assert_ne!(s2.generation, s0.generation);

    // Results: written by one store, read by another, over keys in many slots.
    let secret = KeySecret::from_hex("0123456789abcdef0123456789abcdef").expect("secret");
    let stop = CancellationToken::new();
    let mk = |c: ClusterConnection| {
        let (store, writer) = L2Store::new(
            c,
            pgmemo::cache::l2::envelope::EnvelopeKey::for_secret(&secret),
            L2Settings {
                cluster: true,
                ..L2Settings::default()
            },
        );
        tokio::spawn(writer.run(stop.clone()));
        store
    };
    let (sa, sb) = (mk(conn(&cluster).await), mk(conn(&cluster).await));
    let entry = |i: u128| Sealed {
        check: KeyCheck(i as u64),
        frames: Bytes::from(format!("C\0\0\0\x0dSELECT {i}\0")),
        created_unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        ttl_ms: 60_000,
    };
    for i in 0..64u128 {
        assert!(sa.put(CacheKey(i * 0x9e37_79b9_7f4a_7c15), &entry(i)));
    }
    for i in 0..64u128 {
        let key = CacheKey(i * 0x9e37_79b9_7f4a_7c15);
        let started = Instant::now();
        loop {
            if let Some(got) = sb.get(key).await {
                let want = entry(i);
                assert_eq!(
                    (got.check, got.frames, got.ttl_ms),
                    (want.check, want.frames, want.ttl_ms)
                );
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "entry {i} never readable"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let per_node: Vec<usize> = cluster
        .nodes
        .iter()
        .map(|n| {
            n.command("DBSIZE")
                .trim()
                .trim_start_matches(':')
                .parse()
                .unwrap_or(0)
        })
        .collect();
    assert!(
        per_node.iter().all(|n| *n > 0),
        "results spread over every master: {per_node:?}"
    );
    stop.cancel();
}
