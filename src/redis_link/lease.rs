//! A lease in Redis (issue 6): with several pgmemo instances and change data capture on,
//! only one needs to follow each database's stream. The lease names its holder (a random
//! id per instance) and expires unless renewed, so when the holder dies another instance
//! takes over after at most one lease period. Renewal and release only act while the caller
//! still holds the lease (compare-and-set scripts), so an instance that lost it (paused
//! past its expiry) can never extend or drop the new holder's.
//!
//! Taking over is safe for invalidation because a new runner starts with the CDC ordering:
//! the cache is bypassed until its slot is consistent, then the epoch is bumped.

use std::time::Duration;

use redis::aio::ConnectionLike;

const RENEW: &str = "\
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0";

const RELEASE: &str = "\
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

/// One named lease as one instance sees it.
#[derive(Debug, Clone)]
pub struct Lease {
    key: String,
    holder: String,
    period: Duration,
}

impl Lease {
    /// The lease `name` in `namespace`, held (if at all) as `holder` for `period` at a time.
    pub fn new(namespace: &str, name: &str, holder: &str, period: Duration) -> Lease {
        Lease {
            key: format!("pgmemo:{namespace}:lease:{name}"),
            holder: holder.to_owned(),
            period,
        }
    }

    fn period_ms(&self) -> u64 {
        u64::try_from(self.period.as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// Takes the lease if nobody holds it, or renews it if this instance does. Returns
    /// whether this instance holds it now.
    pub async fn acquire_or_renew<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
    ) -> Result<bool, redis::RedisError> {
        let taken: Option<String> = redis::cmd("SET")
            .arg(&self.key)
            .arg(&self.holder)
            .arg("NX")
            .arg("PX")
            .arg(self.period_ms())
            .query_async(conn)
            .await?;
        if taken.is_some() {
            return Ok(true);
        }
        let renewed: i64 = redis::cmd("EVAL")
            .arg(RENEW)
            .arg(1)
            .arg(&self.key)
            .arg(&self.holder)
            .arg(self.period_ms())
            .query_async(conn)
            .await?;
        Ok(renewed == 1)
    }

    /// Gives the lease up if this instance holds it (at shutdown, so another takes over at
    /// once instead of after the period).
    pub async fn release<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
    ) -> Result<bool, redis::RedisError> {
        let n: i64 = redis::cmd("EVAL")
            .arg(RELEASE)
            .arg(1)
            .arg(&self.key)
            .arg(&self.holder)
            .query_async(conn)
            .await?;
        Ok(n == 1)
    }

    /// Who holds it now, if anyone.
    pub async fn holder<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
    ) -> Result<Option<String>, redis::RedisError> {
        redis::cmd("GET").arg(&self.key).query_async(conn).await
    }
}
