//! `[invalidation]`: how writes that bypass pgmemo reach the cache. With change data capture
//! (CDC) pgmemo follows each covered database's logical replication stream and bumps what
//! every committed transaction changed; without it, such writes are bounded by the TTL.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `invalidation.cdc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CdcMode {
    /// On when the upstream has `wal_level = logical` and pgmemo's role may replicate;
    /// otherwise off, with one start-up warning saying what to change.
    #[default]
    Auto,
    /// Required: while a covered database's stream is not established (or lags past
    /// `cdc_lag_max`), its cached results are bypassed rather than served unbounded.
    On,
    /// Direct writes are bounded by the TTL only.
    Off,
}

impl CdcMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::On => "on",
            Self::Off => "off",
        }
    }
}

/// `[invalidation]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct InvalidationConfig {
    /// `auto` (default), `on` or `off`. Not reloadable (the streams start with the process).
    pub cdc: CdcMode,
    /// Databases whose change stream pgmemo follows (a logical slot covers one database).
    /// Empty (default): the upstream URL's database (`postgres` without one). Other
    /// databases keep proxied-write + TTL semantics.
    pub cdc_databases: Vec<String>,
    /// A publication of the user's to follow with the `pgoutput` plugin. Unset (default):
    /// the stream uses the `test_decoding` plugin, which needs no publication. pgmemo never
    /// creates one: a publication that publishes updates makes PostgreSQL refuse UPDATE and
    /// DELETE on its tables without a replica identity.
    pub cdc_publication: Option<String>,
    /// Replication lag (measured in WAL bytes, shown in time) past which a database's cache
    /// is bypassed until the stream catches up.
    #[serde(with = "humantime_serde")]
    pub cdc_lag_max: Duration,
    /// How long a write through pgmemo whose effects SQL cannot see (triggers, functions,
    /// CALL/DO) waits for the stream to apply its commit before its acknowledgement is
    /// relayed; past it, the epoch is bumped instead.
    #[serde(with = "humantime_serde")]
    pub cdc_ack_wait_max: Duration,
    /// How long creating the replication slot may wait for open write transactions before
    /// pgmemo logs the blockers, gives up and retries with backoff.
    #[serde(with = "humantime_serde")]
    pub cdc_slot_timeout: Duration,
    /// How often pgmemo reports its applied position to the server (it must be well under
    /// the server's `wal_sender_timeout`, 60 s by default).
    #[serde(with = "humantime_serde")]
    pub cdc_status_interval: Duration,
    /// Stop a covered database's stream when no client session has used it for
    /// `side::IDLE_GRACE` (its walsender and temporary slot then leave the database, so a
    /// direct `DROP DATABASE` works), and restart it when one comes; every restart bumps
    /// the epoch. Off by default: a covered database is followed for the process's life
    /// (statements through pgmemo that need it free still stop its stream first).
    pub cdc_stop_when_idle: bool,
}

impl Default for InvalidationConfig {
    fn default() -> Self {
        Self {
            cdc: CdcMode::Auto,
            cdc_databases: Vec::new(),
            cdc_publication: None,
            cdc_lag_max: Duration::from_secs(1),
            cdc_ack_wait_max: Duration::from_millis(50),
            cdc_slot_timeout: Duration::from_secs(10),
            cdc_status_interval: Duration::from_secs(1),
            cdc_stop_when_idle: false,
        }
    }
}

impl InvalidationConfig {
    /// The databases CDC covers, given the upstream URL's database.
    pub fn databases(&self, url_db: Option<&str>) -> Vec<String> {
        if self.cdc_databases.is_empty() {
            vec![url_db.unwrap_or("postgres").to_owned()]
        } else {
            let mut dbs = self.cdc_databases.clone();
            dbs.sort();
            dbs.dedup();
            dbs
        }
    }
}
