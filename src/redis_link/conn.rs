//! The Redis connection of the shared tier: one multiplexed connection to a single server
//! (reconnecting by itself) or a Redis Cluster connection, behind one type. Both are made
//! lazily, so pgmemo starts (and serves from L1 and upstream) while Redis is down, and
//! connects once it is up. Every call is bounded by its caller's timeout.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// A connection to the shared tier's Redis (cheap to clone: clones share the connection).
#[derive(Clone)]
pub enum RedisConn {
    Single(ConnectionManager),
    Cluster(Arc<LazyCluster>),
}

/// A cluster connection made on first use and remade after it fails to be made.
pub struct LazyCluster {
    client: ClusterClient,
    conn: tokio::sync::Mutex<Option<ClusterConnection>>,
}

impl LazyCluster {
    async fn get(&self) -> redis::RedisResult<ClusterConnection> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let c = self.client.get_async_connection().await?;
        *slot = Some(c.clone());
        Ok(c)
    }
}

impl RedisConn {
    /// A Redis Cluster: a pipeline may not span slots.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// A connection to `url` (single server) or to the cluster seeded by `seeds`. Connection
    /// and response timeouts are `timeout`; nothing is connected yet.
    pub fn new(seeds: &[String], cluster: bool, timeout: Duration) -> redis::RedisResult<Self> {
        Self::with_retries(seeds, cluster, timeout, 1)
    }

    /// As [`RedisConn::new`], with a cluster connection that sends a request again at most
    /// `retries` times after an I/O error. Callers whose requests must not run twice (the
    /// write-behind append) pass 0: a request whose reply was lost may have run.
    pub fn with_retries(
        seeds: &[String],
        cluster: bool,
        timeout: Duration,
        retries: u32,
    ) -> redis::RedisResult<Self> {
        if cluster {
            let client = ClusterClient::builder(seeds.to_vec())
                .connection_timeout(timeout)
                .response_timeout(timeout)
                .retries(retries)
                .build()?;
            return Ok(Self::Cluster(Arc::new(LazyCluster {
                client,
                conn: tokio::sync::Mutex::new(None),
            })));
        }
        let url = seeds.first().map(String::as_str).unwrap_or_default();
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        Ok(Self::Single(ConnectionManager::new_lazy_with_config(
            client, config,
        )?))
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(lazy) => Box::pin(async move {
                let mut c = lazy.get().await?;
                c.req_packed_command(cmd).await
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(lazy) => Box::pin(async move {
                let mut c = lazy.get().await?;
                c.req_packed_commands(pipeline, offset, count).await
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(_) => 0,
        }
    }
}
