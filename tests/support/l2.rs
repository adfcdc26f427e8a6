//! Several pgmemo instances sharing one Redis (or a Redis Cluster) in front of one throwaway
//! Postgres, and a TCP relay a test can cut, to take one instance off Redis while the
//! others keep it.
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio_postgres::Client;

use crate::common::{PgOptions, PgServer, Proxy, ProxyArgs, SUPERUSER};

pub const SECRET: &str = "00112233445566778899aabbccddeeff";
pub const DB: &str = "app";

/// `[cache.redis]` and the rest of an instance's config, change data capture off; `extra`
/// goes into `[cache]`.
pub fn config(redis_urls: &[String], consistency: &str, extra: &str) -> String {
    config_with(redis_urls, consistency, extra, "cdc = \"off\"")
}

/// As [`config`], with the change stream on for [`DB`].
pub fn config_cdc(redis_urls: &[String], consistency: &str) -> String {
    config_with(
        redis_urls,
        consistency,
        "",
        &format!("cdc = \"on\"\ncdc_databases = [\"{DB}\"]"),
    )
}

fn config_with(
    redis_urls: &[String],
    consistency: &str,
    extra: &str,
    invalidation: &str,
) -> String {
    let (url, cluster) = match redis_urls {
        [one] => (one.clone(), String::new()),
        [first, rest @ ..] => (
            first.clone(),
            format!(
                "cluster = true\ncluster_nodes = [{}]\n",
                rest.iter()
                    .map(|u| format!("\"{u}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        [] => panic!("no redis url"),
    };
    format!(
        "[cache]\nsecret = \"{SECRET}\"\n{extra}\n[invalidation]\n{invalidation}\n\
         [cache.redis]\nurl = \"{url}\"\nnamespace = \"t\"\nconsistency = \"{consistency}\"\n\
         timeout = \"100ms\"\n{cluster}"
    )
}

/// One Postgres with the test table `kv(k int primary key, v int)`, rows 1..=100 at 0.
pub fn postgres() -> PgServer {
    let pg = PgServer::start(PgOptions::default());
    pg.psql(
        DB,
        "CREATE TABLE kv (k int PRIMARY KEY, v int NOT NULL);\
         INSERT INTO kv SELECT g, 0 FROM generate_series(1, 100) g;\
         CREATE TABLE other (k int PRIMARY KEY, v int NOT NULL);\
         INSERT INTO other SELECT g, 0 FROM generate_series(1, 10) g;",
    );
    pg
}

/// A pgmemo instance in front of `pg` with `config_toml`.
pub fn instance(pg: &PgServer, config_toml: &str) -> Proxy {
    Proxy::start(ProxyArgs::new(pg.url(SUPERUSER, "postgres")).config(config_toml.to_string()))
}

pub async fn session(p: &Proxy) -> Client {
    p.connect(SUPERUSER, "", DB).await
}

/// `SELECT v FROM kv WHERE k = $k` through the simple protocol.
pub async fn read(c: &Client, k: i32) -> i32 {
    let rows = c
        .simple_query(&format!("SELECT v FROM kv WHERE k = {k}"))
        .await
        .expect("read");
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).and_then(|v| v.parse().ok()),
            _ => None,
        })
        .expect("one row")
}

pub async fn write(c: &Client, k: i32, v: i32) {
    c.simple_query(&format!("UPDATE kv SET v = {v} WHERE k = {k}"))
        .await
        .expect("write");
}

/// The sum of `name` over the label sets whose text contains every one of `labels`.
pub fn metric(p: &Proxy, name: &str, labels: &[&str]) -> f64 {
    p.metric(name, labels)
}

/// Waits until `p`'s shared tier is usable.
pub async fn usable(p: &Proxy) {
    eventually(
        Duration::from_secs(10),
        "the shared tier to be usable",
        || metric(p, "pgmemo_l2_usable", &[]) == 1.0,
    )
    .await;
}

/// Waits until `cond` holds (polling), or panics with `what` after `limit`.
pub async fn eventually(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A TCP relay to `target` that a test can cut: cut, it drops every connection and
/// refuses (closes) new ones, as a network partition between one instance and Redis would.
pub struct Relay {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
}

impl Relay {
    pub async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind relay");
        let addr = listener.local_addr().expect("relay addr");
        let cut = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&cut);
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if flag.load(Ordering::SeqCst) {
                    continue; // dropped: closed at once
                }
                let flag = Arc::clone(&flag);
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let copy = tokio::io::copy_bidirectional(&mut inbound, &mut outbound);
                    let watch = async {
                        while !flag.load(Ordering::SeqCst) {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    };
                    tokio::select! {
                        _ = copy => {}
                        () = watch => {}
                    }
                });
            }
        });
        Relay { addr, cut }
    }

    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    pub fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::SeqCst);
    }
}
