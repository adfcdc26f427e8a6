//! One covered database's change stream, as a background task: connect with
//! `replication=database`, check that logical decoding is possible (`cdc = auto` turns it
//! off with one warning otherwise), make sure the publication exists, create a **temporary**
//! slot (dropped by the server when the connection ends, so an abandoned pgmemo never makes
//! PostgreSQL retain WAL), stream `pgoutput` from its consistent point, and bump what each
//! committed transaction changed. Reconnects with backoff.
//!
//! Ordering (DESIGN §2, CDC issue): until the slot is consistent the database's cache is
//! bypassed (neither served nor stored, see [`super::hub::State::serves`]); the epoch is
//! bumped once streaming has begun, never before, so whatever was committed while no stream
//! was following is covered. Each transaction is bumped before its position is confirmed to
//! the server.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use metrics::{Counter, Histogram};
use tokio_postgres::NoTls;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::conn::{ConnError, ReplConn, StreamEvent};
use super::hub::{DbStream, State};
use super::lag;
use super::pgoutput::{self, CommittedTxn, TxnCollector};
use super::wire::{self, Lsn, ServerMessage};
use crate::cache::{EpochCause, Tag};
use crate::config::CdcMode;
use crate::context::AppContext;
use crate::invalidation::{Source, Written};
use crate::telemetry::names;

/// First retry delay after a failure; doubled up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Slot names are unique per process and attempt.
static SLOT_SEQ: AtomicU64 = AtomicU64::new(0);

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
    loop {
        let started = Instant::now();
        let outcome = follow(&ctx, &stream, &stop).await;
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
async fn follow(ctx: &Arc<AppContext>, stream: &Arc<DbStream>, stop: &CancellationToken) -> Stop {
    tokio::select! {
        _ = stop.cancelled() => Stop::Shutdown,
        s = follow_inner(ctx, stream, stop) => s,
    }
}

async fn follow_inner(
    ctx: &Arc<AppContext>,
    stream: &Arc<DbStream>,
    stop: &CancellationToken,
) -> Stop {
    let config = ctx.config();
    let inv = &config.invalidation;
    let db = stream.name();
    stream.set_state(State::Connecting);
    let timeout = config.upstream.connect_timeout;
    let mut conn = match ReplConn::connect(&ctx.upstream, ctx.upstream.target(), db, timeout).await
    {
        Ok(c) => c,
        Err(e) => {
            return match e.code() {
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
            };
        }
    };
    if let Err(stop) = check_server(&mut conn, ctx, db).await {
        return stop;
    }
    if let Err(stop) = ensure_publication(&mut conn, &inv.cdc_publication).await {
        return stop;
    }

    stream.set_state(State::CreatingSlot);
    let slot = format!(
        "pgmemo_{}_{}",
        std::process::id(),
        SLOT_SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let consistent = match create_slot(&mut conn, ctx, db, &slot, inv.cdc_slot_timeout).await {
        Ok(l) => l,
        Err(stop) => return stop,
    };
    let start = format!(
        "START_REPLICATION SLOT {slot} LOGICAL {consistent} (proto_version '1', \
         publication_names '{}')",
        quote_ident(&inv.cdc_publication).replace('\'', "''")
    );
    if let Err(e) = conn.start_streaming(&start).await {
        return failed("start")(e);
    }

    // Consistent and streaming: everything committed from here on arrives in order.
    // Whatever was committed before it (while nothing followed) is covered by the epoch.
    // With a shared tier, in Redis too (no instance followed what this stream missed), and
    // before this stream reports itself streaming: other instances start serving on that.
    if let Some(shared) = ctx
        .caching
        .invalidator
        .bump_epoch_held(EpochCause::CdcResync)
    {
        shared.apply().await;
    }
    stream.advance(consistent);
    stream.set_state(State::Streaming);
    info!(database = %db, %slot, %consistent, "cdc: change stream consistent; cache serving");

    // The lag monitor samples the server's position on a side connection of its own.
    let monitor_stop = stop.child_token();
    let _monitor_guard = monitor_stop.clone().drop_guard();
    match side_client(ctx, db).await {
        Ok(client) => {
            tokio::spawn(lag::monitor(
                client,
                Arc::clone(stream),
                inv.cdc_lag_max,
                monitor_stop,
            ));
        }
        Err(e) => warn!(database = %db, error = %e, "cdc: no side connection for the lag monitor"),
    }

    stream_loop(ctx, stream, &mut conn, inv.cdc_status_interval).await
}

/// The upstream can decode WAL for this database: `wal_level = logical`, not a standby.
/// Also learns the database's OID (tags carry it).
async fn check_server(conn: &mut ReplConn, ctx: &AppContext, db: &str) -> Result<(), Stop> {
    let rows = conn
        .query(
            "SELECT current_setting('wal_level'), pg_catalog.pg_is_in_recovery()::text, \
             (SELECT oid::text FROM pg_catalog.pg_database WHERE datname = current_database())",
        )
        .await
        .map_err(failed("setup"))?;
    let row = rows.first().ok_or_else(|| Stop::Failed {
        reason: "setup",
        detail: "no row from the settings query".into(),
    })?;
    let text = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
    let wal_level = text(0);
    if wal_level != "logical" {
        return Err(Stop::Unavailable(format!(
            "the upstream has wal_level = {wal_level}; set wal_level = logical (restart \
             required), with max_replication_slots and max_wal_senders above zero"
        )));
    }
    if text(1) == "true" {
        return Err(Stop::Unavailable(
            "the upstream is a hot standby; pgmemo follows the change stream of the server it \
             reads from, and PostgreSQL 15 cannot decode on a standby: point upstream.url at \
             the primary"
                .into(),
        ));
    }
    if let Ok(oid) = text(2).parse::<u32>() {
        ctx.caching.invalidator.learn_database(db, oid);
    }
    Ok(())
}

async fn ensure_publication(conn: &mut ReplConn, name: &str) -> Result<(), Stop> {
    let exists = conn
        .query(&format!(
            "SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = {}",
            quote_literal(name)
        ))
        .await
        .map_err(failed("setup"))?;
    if !exists.is_empty() {
        return Ok(());
    }
    let create = format!("CREATE PUBLICATION {} FOR ALL TABLES", quote_ident(name));
    // PostgreSQL refuses UPDATE and DELETE on a published table without a replica identity:
    // creating the publication over such tables would break the application's writes.
    let unidentified = conn
        .query(NO_REPLICA_IDENTITY)
        .await
        .map_err(failed("setup"))?;
    if !unidentified.is_empty() {
        let names: Vec<String> = unidentified
            .iter()
            .filter_map(|r| r.first().cloned().flatten())
            .collect();
        return Err(Stop::Unavailable(format!(
            "publication {name:?} does not exist, and pgmemo will not create it FOR ALL TABLES \
             because PostgreSQL would then refuse UPDATE and DELETE on tables without a \
             primary key or replica identity: {}. Give them one (ALTER TABLE .. REPLICA \
             IDENTITY FULL) or create a publication yourself and name it in \
             invalidation.cdc_publication",
            names.join(", ")
        )));
    }
    match conn.query(&create).await {
        Ok(_) => {
            info!(
                publication = name,
                "cdc: publication created FOR ALL TABLES"
            );
            Ok(())
        }
        // Created concurrently by another instance.
        Err(e) if e.code() == Some("42710") => Ok(()),
        Err(e) if e.code() == Some("42501") => Err(Stop::Unavailable(format!(
            "publication {name:?} does not exist and pgmemo's role may not create it FOR ALL \
             TABLES (that needs a superuser): run `{create}` as a superuser, or name an \
             existing publication in invalidation.cdc_publication"
        ))),
        Err(e) => Err(failed("setup")(e)),
    }
}

/// Ordinary tables on which a FOR ALL TABLES publication would make UPDATE and DELETE fail
/// (no replica identity), at most 20.
const NO_REPLICA_IDENTITY: &str = "SELECT c.oid::regclass::text \
     FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.relkind = 'r' AND c.relpersistence = 'p' \
       AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%' \
       AND (c.relreplident = 'n' \
         OR (c.relreplident = 'd' AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_index i \
               WHERE i.indrelid = c.oid AND i.indisprimary)) \
         OR (c.relreplident = 'i' AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_index i \
               WHERE i.indrelid = c.oid AND i.indisreplident))) \
     ORDER BY 1 LIMIT 20";

/// Creates the temporary slot; returns its consistent point. Creation waits for every
/// transaction with an XID that is open at the time: past `limit`, the blockers are
/// logged, the creation is cancelled, and the caller retries with backoff.
async fn create_slot(
    conn: &mut ReplConn,
    ctx: &AppContext,
    db: &str,
    slot: &str,
    limit: Duration,
) -> Result<Lsn, Stop> {
    let command =
        format!("CREATE_REPLICATION_SLOT {slot} TEMPORARY LOGICAL pgoutput NOEXPORT_SNAPSHOT");
    match tokio::time::timeout(limit, conn.query(&command)).await {
        Ok(Ok(rows)) => rows
            .first()
            .and_then(|r| r.get(1).cloned().flatten())
            .and_then(|t| t.parse::<Lsn>().ok())
            .ok_or_else(|| Stop::Failed {
                reason: "slot",
                detail: "CREATE_REPLICATION_SLOT returned no consistent point".into(),
            }),
        Ok(Err(e)) => Err(failed("slot")(e)),
        Err(_) => {
            let blockers = blockers(ctx, db).await;
            warn!(database = %db, waited = ?limit, blockers = %blockers,
                "cdc: creating the replication slot waits for open write transactions; \
                 serving uncached and retrying");
            if let Some((_, packet)) = conn.cancel_request() {
                let _ = ctx.upstream.forward_cancel(&packet, limit).await;
            }
            Err(Stop::Failed {
                reason: "slot_timeout",
                detail: format!("open write transactions: {blockers}"),
            })
        }
    }
}

/// The backends holding a transaction ID (what slot creation waits for), for the log.
async fn blockers(ctx: &AppContext, db: &str) -> String {
    let client = match side_client(ctx, db).await {
        Ok(c) => c,
        Err(e) => return format!("(could not list them: {e})"),
    };
    let q = "SELECT pid::text || ' ' || coalesce(usename, '?') || '@' || coalesce(datname, '?') \
             || ' ' || coalesce(state, '?') || ' since ' || coalesce(xact_start::text, '?') \
             || ': ' || left(coalesce(query, ''), 120) \
             FROM pg_catalog.pg_stat_activity \
             WHERE backend_xid IS NOT NULL AND pid <> pg_catalog.pg_backend_pid() \
             ORDER BY xact_start LIMIT 20";
    match client.query(q, &[]).await {
        Ok(rows) => {
            let list: Vec<String> = rows.iter().filter_map(|r| r.try_get(0).ok()).collect();
            if list.is_empty() {
                "(none found)".into()
            } else {
                list.join("; ")
            }
        }
        Err(e) => format!("(could not list them: {e})"),
    }
}

/// A plain side connection to `db` as pgmemo's role (its driver runs as a task that ends
/// with the client).
async fn side_client(ctx: &AppContext, db: &str) -> Result<tokio_postgres::Client, String> {
    let mut config = ctx.caching.catalog.connect_config().clone();
    config.dbname(db).application_name("pgmemo-cdc-monitor");
    let timeout = ctx.config().upstream.connect_timeout;
    match tokio::time::timeout(timeout, config.connect(NoTls)).await {
        Ok(Ok((client, connection))) => {
            tokio::spawn(async move {
                let _ = connection.await;
            });
            Ok(client)
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("connect timed out after {timeout:?}")),
    }
}

struct StreamMetrics {
    transactions: Counter,
    relations: Counter,
    commit_to_bump: Histogram,
}

/// Reads the stream, bumps each committed transaction, answers keepalives and reports the
/// applied position every `status_interval`.
async fn stream_loop(
    ctx: &Arc<AppContext>,
    stream: &Arc<DbStream>,
    conn: &mut ReplConn,
    status_interval: Duration,
) -> Stop {
    let db = stream.name().to_owned();
    let m = StreamMetrics {
        transactions: metrics::counter!(names::CDC_TRANSACTIONS, "database" => db.clone()),
        relations: metrics::counter!(names::CDC_RELATIONS, "database" => db.clone()),
        commit_to_bump: metrics::histogram!(names::CDC_COMMIT_TO_BUMP_SECONDS, "database" => db.clone()),
    };
    let mut collector = TxnCollector::default();
    let mut status = tokio::time::interval(status_interval);
    status.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
        let payload = match event {
            Ok(StreamEvent::Data(p)) => p,
            Ok(StreamEvent::End) => {
                return Stop::Failed {
                    reason: "stream",
                    detail: "the server ended the stream".into(),
                };
            }
            Err(e) => return failed("stream")(e),
        };
        match wire::decode_server(&payload) {
            Ok(ServerMessage::XLogData { data, .. }) => {
                let message = match pgoutput::decode(data) {
                    Ok(m) => m,
                    Err(e) => {
                        return Stop::Failed {
                            reason: "decode",
                            detail: e.to_string(),
                        };
                    }
                };
                if let Some(txn) = collector.feed(&message) {
                    apply(ctx, &db, &txn, &m).await;
                    stream.advance(txn.end_lsn);
                }
            }
            Ok(ServerMessage::Keepalive { wal_end, .. }) => {
                // The server has sent everything it decoded up to `wal_end`: with no
                // transaction half-received, all of it is applied.
                if !collector.in_transaction() {
                    stream.advance(wal_end);
                }
                // Answer every keepalive: the server waits for the answer before it pings
                // again, and its pings are how an idle stream's position advances.
                if let Err(e) = send_status(conn, stream.applied()).await {
                    return failed("stream")(e);
                }
            }
            Err(e) => {
                return Stop::Failed {
                    reason: "decode",
                    detail: e.to_string(),
                };
            }
        }
    }
}

async fn send_status(conn: &mut ReplConn, applied: Lsn) -> Result<(), ConnError> {
    let update = wire::status_update(applied, applied, applied, wire::now_unix_micros(), false);
    conn.send_copy_data(&update).await
}

/// Bumps what `txn` changed: each relation with what a write to it reaches (partition
/// ancestors, and as for writes through pgmemo, descendants, FK actions and rules). A
/// transaction too large to track, or whose relations cannot be mapped, bumps the epoch.
async fn apply(ctx: &AppContext, db: &str, txn: &CommittedTxn, m: &StreamMetrics) {
    m.transactions.increment(1);
    m.relations.increment(txn.relations.len() as u64);
    let invalidator = &ctx.caching.invalidator;
    let mut written = Written::default();
    match invalidator.database_oid(db) {
        Some(db_oid) if !txn.overflowed => {
            for &rel in &txn.relations {
                match ctx.caching.catalog.writes(db, &[rel]).await {
                    Ok(set) => {
                        let mut tags: Vec<Tag> = set
                            .tags
                            .iter()
                            .map(|&rel| Tag { db: db_oid, rel })
                            .collect();
                        tags.push(Tag { db: db_oid, rel });
                        written.merge(&tags, None);
                    }
                    Err(e) => {
                        warn!(database = %db, rel, error = %e,
                            "cdc: could not map a changed relation; epoch bumped");
                        written.merge(&[], Some(EpochCause::CdcOverflow));
                        break;
                    }
                }
            }
        }
        _ if txn.relations.is_empty() && !txn.overflowed => {}
        _ => written.merge(&[], Some(EpochCause::CdcOverflow)),
    }
    if !written.is_empty() {
        invalidator.bump(&written, Source::Cdc);
    }
    // The timestamp comes from the server: saturating, so no value can overflow.
    let lag_micros = wire::now_unix_micros()
        .saturating_sub(wire::PG_EPOCH_OFFSET_MICROS)
        .saturating_sub(txn.committed_at);
    if txn.committed_at != 0 && lag_micros >= 0 {
        m.commit_to_bump.record(lag_micros as f64 / 1e6);
    }
}

/// `"name"`, with embedded quotes doubled.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'text'`, with embedded quotes doubled (standard_conforming_strings is always on in
/// supported servers).
fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}
