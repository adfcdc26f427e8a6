//! One covered database's change stream, as a background task: connect with
//! `replication=database`, check that logical decoding is possible (`cdc = auto` turns it
//! off with one warning otherwise), choose the output plugin, create a **temporary** slot
//! (dropped by the server when the connection ends, so an abandoned pgmemo never makes
//! PostgreSQL retain WAL), stream from its consistent point, and bump what each committed
//! transaction changed. Reconnects with backoff.
//!
//! The plugin (issue 16): pgmemo never creates a publication, because any publication that
//! publishes a table's updates makes PostgreSQL refuse UPDATE and DELETE on it once it has
//! no replica identity (a table created later without a primary key, a dropped primary
//! key), and a publication outlives pgmemo. Without a publication the stream uses
//! `test_decoding` (shipped with PostgreSQL), whose relation names [`super::names`] maps to
//! OIDs only when certain. A publication the user names in `invalidation.cdc_publication`
//! is followed with `pgoutput`, as before. A `FOR ALL TABLES` publication called `pgmemo`
//! (created by earlier versions) is reported once with the command that removes it, and
//! neither used nor dropped.
//!
//! Ordering (DESIGN §2, CDC issue): until the slot is consistent the database's cache is
//! bypassed (neither served nor stored, see [`super::hub::State::serves`]); the epoch is
//! bumped once streaming has begun, never before, so whatever was committed while no stream
//! was following is covered. Each transaction is bumped before its position is confirmed to
//! the server.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use metrics::{Counter, Histogram};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::conn::{ConnError, ReplConn, StreamEvent};
use super::hub::{DbStream, State};
use super::lag;
use super::names::{NameMap, Observation};
use super::pgoutput::{self, TxnCollector};
use super::test_decoding::{self, NamedTxn, QualifiedName};
use super::wire::{self, Lsn, ServerMessage};
use crate::cache::{EpochCause, Tag};
use crate::config::CdcMode;
use crate::context::AppContext;
use crate::invalidation::{Source, Written};
use crate::telemetry::names;

mod apply;
mod setup;

use apply::*;
use setup::*;

/// First retry delay after a failure; doubled up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Slot names are unique per process and attempt.
static SLOT_SEQ: AtomicU64 = AtomicU64::new(0);

/// Transactions already received that are checked and bumped as one batch (one catalog
/// lookup for all of them).
const MAX_BATCH: usize = 256;
/// Table names in one batch at most (plus one transaction's): bounds its memory and its
/// lookup's size.
const MAX_BATCH_NAMES: usize = 4_096;
/// Bytes of changed rows' text (their keys are read at apply) in one batch at most.
const MAX_BATCH_ROW_BYTES: usize = 4 << 20;

/// The publication name earlier pgmemo versions created `FOR ALL TABLES`.
const LEGACY_PUBLICATION: &str = "pgmemo";

/// How the stream is decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Plugin {
    /// `pgoutput` over the user's publication.
    Pgoutput { publication: String },
    /// `test_decoding`: no publication.
    TestDecoding,
}

/// Warnings said once per database for the life of the process, not once per reconnect.
#[derive(Debug, Default)]
struct Said {
    legacy_publication: bool,
    missing_publication: bool,
}

/// Why following the stream stopped.
#[derive(Debug)]
enum Stop {
    /// Shutting down.
    Shutdown,
    /// The server cannot stream this database (no logical WAL, no privilege, a standby...):
    /// what to change.
    Unavailable(String),
    /// Anything else: retried.
    Failed {
        reason: &'static str,
        detail: String,
    },
}

fn failed(reason: &'static str) -> impl FnOnce(ConnError) -> Stop {
    move |e| Stop::Failed {
        reason,
        detail: e.to_string(),
    }
}

/// Follows `stream`'s database until `stop`.
pub async fn run(ctx: Arc<AppContext>, stream: Arc<DbStream>, stop: CancellationToken) {
    let mode = ctx.config().invalidation.cdc;
    let db = stream.name().to_owned();
    let mut backoff = MIN_BACKOFF;
    let mut said = Said::default();
    loop {
        let started = Instant::now();
        let outcome = follow(&ctx, &stream, &stop, &mut said).await;
        let reason = match outcome {
            Stop::Shutdown => return,
            Stop::Unavailable(why) if mode == CdcMode::Auto => {
                stream.set_state(State::Off);
                let ttl = humantime::format_duration(ctx.config().cache.ttl);
                warn!(database = %db,
                    "cdc = auto: change data capture is off for this database: {why}. Writes \
                     made directly on PostgreSQL reach cached results only through the TTL \
                     ({ttl}) and the catalog poll");
                return;
            }
            Stop::Unavailable(why) => {
                error!(database = %db,
                    "cdc = on, but the change stream cannot run: {why}. This database's cache \
                     is bypassed until it can");
                backoff = MAX_BACKOFF;
                "unavailable"
            }
            Stop::Failed { reason, detail } => {
                warn!(database = %db, reason, error = %detail,
                    "cdc: change stream lost; cache bypassed until it is re-established");
                reason
            }
        };
        stream.set_state(State::Disconnected);
        metrics::counter!(names::CDC_RECONNECTS, "database" => db.clone(), "reason" => reason)
            .increment(1);
        if started.elapsed() > MAX_BACKOFF * 3 {
            backoff = MIN_BACKOFF;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection's life: set-up, then streaming until it fails or `stop`.
async fn follow(
    ctx: &Arc<AppContext>,
    stream: &Arc<DbStream>,
    stop: &CancellationToken,
    said: &mut Said,
) -> Stop {
    tokio::select! {
        _ = stop.cancelled() => Stop::Shutdown,
        s = follow_inner(ctx, stream, stop, said) => s,
    }
}

async fn follow_inner(
    ctx: &Arc<AppContext>,
    stream: &Arc<DbStream>,
    stop: &CancellationToken,
    said: &mut Said,
) -> Stop {
    let config = ctx.config();
    let inv = &config.invalidation;
    let db = stream.name();
    stream.set_state(State::Connecting);
    let mut conn = match connect(ctx, db, config.upstream.connect_timeout).await {
        Ok(c) => c,
        Err(stop) => return stop,
    };
    if let Err(stop) = check_server(&mut conn, ctx, db).await {
        return stop;
    }
    let plugin = match choose_plugin(&mut conn, ctx, db, said).await {
        Ok(p) => p,
        Err(stop) => return stop,
    };
    // With test_decoding, the relations that exist now are observed before the slot is
    // created, so they precede every transaction the stream carries (see `names`).
    let mut decoder = match &plugin {
        Plugin::Pgoutput { .. } => Decoder::Pgoutput(TxnCollector::default()),
        Plugin::TestDecoding => {
            let mut lookup = NameLookup::new(ctx, db).await;
            lookup.observe(None).await;
            Decoder::TestDecoding(test_decoding::Collector::default(), Box::new(lookup))
        }
    };

    stream.set_state(State::CreatingSlot);
    let slot = format!(
        "pgmemo_{}_{}",
        std::process::id(),
        SLOT_SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let consistent =
        match create_slot(&mut conn, ctx, db, &slot, &plugin, inv.cdc_slot_timeout).await {
            Ok(l) => l,
            Err(stop) => return stop,
        };
    if let Err(e) = conn
        .start_streaming(&start_command(&plugin, &slot, consistent))
        .await
    {
        return failed("start")(e);
    }

    // Consistent and streaming: everything committed from here on arrives in order.
    // Whatever was committed before it (while nothing followed) is covered by the epoch.
    // With a shared tier, in Redis too (no instance followed what this stream missed), and
    // before this stream reports itself streaming: other instances start serving on that.
    if let Some(shared) = ctx
        .services
        .invalidator
        .bump_epoch_held(EpochCause::CdcResync)
    {
        shared.apply().await;
    }
    stream.advance(consistent);
    stream.set_state(State::Streaming);
    let plugin_name = match &plugin {
        Plugin::Pgoutput { .. } => "pgoutput",
        Plugin::TestDecoding => "test_decoding",
    };
    info!(database = %db, %slot, %consistent, plugin = plugin_name,
        "cdc: change stream consistent; cache serving");

    // The lag monitor samples the server's position on a side connection of its own.
    let monitor_stop = stop.child_token();
    let _monitor_guard = monitor_stop.clone().drop_guard();
    match side_client(ctx, db).await {
        Ok(client) => {
            ctx.tasks.spawn(
                "cdc-lag-monitor",
                lag::monitor(client, Arc::clone(stream), inv.cdc_lag_max, monitor_stop),
            );
        }
        Err(e) => warn!(database = %db, error = %e, "cdc: no side connection for the lag monitor"),
    }

    stream_loop(
        ctx,
        stream,
        &mut conn,
        &mut decoder,
        inv.cdc_status_interval,
    )
    .await
}

/// The replication connection to `db`; a refusal that configuration must fix is
/// `Unavailable` with the fix, anything else a failure to retry.
async fn connect(ctx: &AppContext, db: &str, timeout: Duration) -> Result<ReplConn, Stop> {
    ReplConn::connect(&ctx.upstream, ctx.upstream.target(), db, timeout)
        .await
        .map_err(|e| match e.code() {
            Some("42501") => Stop::Unavailable(format!(
                "pgmemo's role may not replicate ({e}); grant it: ALTER ROLE <role> \
                 REPLICATION"
            )),
            Some("28000") => Stop::Unavailable(format!(
                "pg_hba.conf refuses the replication connection ({e}); add a `host \
                 replication` line (logical replication matches the database name)"
            )),
            _ => Stop::Failed {
                reason: "connect",
                detail: e.to_string(),
            },
        })
}

/// START_REPLICATION for `slot` from `consistent`, with the plugin's options.
fn start_command(plugin: &Plugin, slot: &str, consistent: Lsn) -> String {
    match plugin {
        Plugin::Pgoutput { publication } => format!(
            "START_REPLICATION SLOT {slot} LOGICAL {consistent} (proto_version '1', \
             publication_names '{}')",
            quote_ident(publication).replace('\'', "''")
        ),
        // No transaction IDs (not needed); commit times for the latency metric; no
        // BEGIN/COMMIT pairs for transactions that changed no table.
        Plugin::TestDecoding => format!(
            "START_REPLICATION SLOT {slot} LOGICAL {consistent} (\"include-xids\" '0', \
             \"include-timestamp\" 'on', \"skip-empty-xacts\" 'on')"
        ),
    }
}

struct StreamMetrics {
    transactions: Counter,
    relations: Counter,
    commit_to_bump: Histogram,
}

/// The decoder of the chosen plugin, with what it keeps between transactions.
enum Decoder {
    Pgoutput(TxnCollector),
    TestDecoding(test_decoding::Collector, Box<NameLookup>),
}

impl Decoder {
    fn in_transaction(&self) -> bool {
        match self {
            Self::Pgoutput(c) => c.in_transaction(),
            Self::TestDecoding(c, _) => c.in_transaction(),
        }
    }
}

/// The side connection and map that turn test_decoding's names into OIDs (see `names`).
struct NameLookup {
    db: String,
    client: Option<tokio_postgres::Client>,
    /// When connecting last failed: retried at most once a second meanwhile.
    failed_at: Option<Instant>,
    map: NameMap,
}

impl NameLookup {
    async fn new(ctx: &AppContext, db: &str) -> Self {
        let mut lookup = Self {
            db: db.to_owned(),
            client: None,
            failed_at: None,
            map: NameMap::default(),
        };
        lookup.connect(ctx).await;
        lookup
    }

    async fn connect(&mut self, ctx: &AppContext) {
        if self.client.as_ref().is_some_and(|c| !c.is_closed()) {
            return;
        }
        if self
            .failed_at
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        match side_client_named(ctx, &self.db, "pgmemo-cdc-names").await {
            Ok(c) => {
                self.client = Some(c);
                self.failed_at = None;
            }
            Err(e) => {
                warn!(database = %self.db, error = %e,
                    "cdc: no side connection to look relation names up; streamed writes \
                     invalidate the whole cache until there is one");
                self.client = None;
                self.failed_at = Some(Instant::now());
            }
        }
    }

    /// Observes `names` (every table when `None`); `None` when the catalog could not be
    /// read.
    async fn observe(&mut self, names: Option<&[&QualifiedName]>) -> Option<Observation> {
        let client = self.client.as_ref()?;
        match tokio::time::timeout(Duration::from_secs(5), super::names::observe(client, names))
            .await
        {
            Ok(Ok(obs)) => {
                if names.is_none() {
                    self.map.record(&obs);
                }
                Some(obs)
            }
            Ok(Err(e)) => {
                warn!(database = %self.db, error = %e, "cdc: looking relation names up failed");
                self.client = None;
                None
            }
            Err(_) => {
                warn!(database = %self.db, "cdc: looking relation names up timed out");
                self.client = None;
                None
            }
        }
    }
}

/// Reads the stream, bumps each committed transaction, answers keepalives and reports the
/// applied position every `status_interval`.
async fn stream_loop(
    ctx: &Arc<AppContext>,
    stream: &Arc<DbStream>,
    conn: &mut ReplConn,
    decoder: &mut Decoder,
    status_interval: Duration,
) -> Stop {
    let db = stream.name().to_owned();
    let m = StreamMetrics {
        transactions: metrics::counter!(names::CDC_TRANSACTIONS, "database" => db.clone()),
        relations: metrics::counter!(names::CDC_RELATIONS, "database" => db.clone()),
        commit_to_bump: metrics::histogram!(names::CDC_COMMIT_TO_BUMP_SECONDS, "database" => db.clone()),
    };
    let mut status = tokio::time::interval(status_interval);
    status.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch = Batch::default();
    loop {
        let event = tokio::select! {
            e = conn.next_event() => e,
            _ = status.tick() => {
                if let Err(e) = send_status(conn, stream.applied()).await {
                    return failed("stream")(e);
                }
                continue;
            }
        };
        let mut event = Some(event);
        // Take what has already arrived as one batch (test_decoding: one name lookup).
        while let Some(e) = event.take() {
            let payload = match e {
                Ok(StreamEvent::Data(p)) => p,
                Ok(StreamEvent::End) => {
                    return Stop::Failed {
                        reason: "stream",
                        detail: "the server ended the stream".into(),
                    };
                }
                Err(e) => return failed("stream")(e),
            };
            if let Err(stop) = batch.take(ctx, &db, decoder, &payload, &m).await {
                return stop;
            }
            if batch.named.len() < MAX_BATCH
                && batch.names < MAX_BATCH_NAMES
                && batch.row_bytes < MAX_BATCH_ROW_BYTES
            {
                event = conn.buffered_event().transpose();
            }
        }
        if let Decoder::TestDecoding(_, lookup) = decoder {
            apply_named(ctx, &db, lookup, &batch.named, &m).await;
        }
        if let Some(end) = batch.named.last().map(|t| t.end_lsn) {
            stream.advance(end);
        }
        if let Some(end) = batch.applied_end.take() {
            stream.advance(end);
        }
        batch.named.clear();
        batch.names = 0;
        batch.row_bytes = 0;
        if let Some(wal_end) = batch.keepalive.take() {
            // The server has sent everything it decoded up to `wal_end`: with no
            // transaction half-received at that point, all of it is applied.
            if let Some(idle_end) = wal_end {
                stream.advance(idle_end);
            }
            // Answer every keepalive: the server waits for the answer before it pings
            // again, and its pings are how an idle stream's position advances.
            if let Err(e) = send_status(conn, stream.applied()).await {
                return failed("stream")(e);
            }
        }
    }
}

/// What one pass of the stream loop took: test_decoding transactions to bump together, and
/// the last keepalive (its position when no transaction was half-received then).
#[derive(Default)]
struct Batch {
    named: Vec<NamedTxn>,
    /// Table names in `named`.
    names: usize,
    /// Bytes of changed rows' column text in `named`.
    row_bytes: usize,
    /// The end of the last pgoutput transaction bumped.
    applied_end: Option<Lsn>,
    keepalive: Option<Option<Lsn>>,
}

impl Batch {
    /// Decodes one CopyData payload. pgoutput transactions are bumped at once (their OIDs
    /// need no lookup); test_decoding ones are collected.
    async fn take(
        &mut self,
        ctx: &AppContext,
        db: &str,
        decoder: &mut Decoder,
        payload: &[u8],
        m: &StreamMetrics,
    ) -> Result<(), Stop> {
        let decode_failed = |e: &dyn std::fmt::Display| Stop::Failed {
            reason: "decode",
            detail: e.to_string(),
        };
        match wire::decode_server(payload) {
            Ok(ServerMessage::XLogData { start, data, .. }) => match decoder {
                Decoder::Pgoutput(collector) => {
                    let message = pgoutput::decode(data).map_err(|e| decode_failed(&e))?;
                    if let Some(txn) = collector.feed(&message) {
                        let cause = txn.overflowed.then_some(EpochCause::CdcOverflow);
                        let rows: RowsByRel<'_> = txn
                            .rows
                            .iter()
                            .filter_map(|(rel, r)| Some((*rel, StreamRows::Pgoutput(r.as_ref()?))))
                            .collect();
                        apply(ctx, db, &txn.relations, &rows, cause, txn.committed_at, m).await;
                        // Bumped: its position may be confirmed.
                        self.applied_end = Some(txn.end_lsn);
                    }
                }
                Decoder::TestDecoding(collector, _) => {
                    if let Some(txn) = collector.feed(start, data) {
                        self.names += txn.tables.len();
                        self.row_bytes += txn
                            .rows
                            .values()
                            .flatten()
                            .flatten()
                            .map(|r| r.columns.len())
                            .sum::<usize>();
                        self.named.push(txn);
                    }
                }
            },
            Ok(ServerMessage::Keepalive { wal_end, .. }) => {
                self.keepalive = Some((!decoder.in_transaction()).then_some(wal_end));
            }
            Err(e) => return Err(decode_failed(&e)),
        }
        Ok(())
    }
}

async fn send_status(conn: &mut ReplConn, applied: Lsn) -> Result<(), ConnError> {
    let update = wire::status_update(applied, applied, applied, wire::now_unix_micros(), false);
    conn.send_copy_data(&update).await
}
