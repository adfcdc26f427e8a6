//! With a shared tier, one instance follows the change streams for all (issue 6): the
//! instances compete for a lease in Redis ([`Lease`]); the holder runs the per-database
//! runners — whose bumps reach every instance through Redis — and publishes each stream's
//! state there; the others mirror those states into their own [`Hub`], so their sessions
//! use the cache for a database exactly when the holder's stream serves it.
//!
//! Ordering (the CDC issue's consistent point, across instances): a runner bumps the epoch
//! in Redis *before* it reports itself streaming, and the holder publishes `streaming` only
//! while none of its bumps is waiting for a retry; so no instance serves a database until
//! every result cached before the gap is unreachable everywhere. A holder that cannot renew
//! stops its runners before the lease can pass to another; a published state expires
//! unless refreshed, so the others stop serving when the holder goes away, and serve again
//! once a new holder's stream is consistent.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::hub::State;
use crate::cache::l2::tier::SharedTier;
use crate::context::AppContext;
use crate::redis_link::lease::Lease;
use crate::telemetry::names;

/// How long the lease lasts without renewal.
const LEASE_PERIOD: Duration = Duration::from_secs(3);
/// How often the holder renews it and publishes states, and the others read them.
const TICK: Duration = Duration::from_millis(250);
/// A published state expires after this unless refreshed (the holder is gone).
/// Also the longest a dead holder's `streaming` is believed: direct writes in that window
/// are followed by nobody until a new holder's stream is consistent (its epoch bump).
const STATE_TTL: Duration = Duration::from_millis(750);

/// Runs the election and either the runners (holding) or the state mirror, until `stop`.
pub async fn run(ctx: Arc<AppContext>, tier: Arc<SharedTier>, stop: CancellationToken) {
    let mut id = [0u8; 8];
    let holder: String = match getrandom::fill(&mut id) {
        Ok(()) => id.iter().map(|b| format!("{b:02x}")).collect(),
        Err(_) => format!("pid-{}", std::process::id()),
    };
    let lease = Lease::new(tier.namespace(), "cdc", &holder, LEASE_PERIOD);
    let mut conn = tier.conn();
    let mut runners: Option<(CancellationToken, JoinSet<()>)> = None;
    let mut renewed_at: Option<Instant> = None;
    metrics::gauge!(names::CDC_LEADER).set(0.0);
    loop {
        let held = match tokio::time::timeout(tier.timeout() * 4, lease.acquire_or_renew(&mut conn))
            .await
        {
            Ok(Ok(held)) => {
                if held {
                    renewed_at = Some(Instant::now());
                }
                held
            }
            // Unknown: keep running while the lease surely has not passed to another.
            _ => renewed_at.is_some_and(|t| t.elapsed() < LEASE_PERIOD * 2 / 3),
        };
        match (held, runners.is_some()) {
            (true, false) => {
                info!(holder = %holder, "cdc: this instance holds the lease; following the change streams");
                let token = stop.child_token();
                let mut set = JoinSet::new();
                for stream in ctx.services.cdc.streams() {
                    stream.set_remote(false);
                    stream.set_state(State::Connecting);
                    set.spawn(super::demand::run(
                        Arc::clone(&ctx),
                        Arc::clone(stream),
                        token.clone(),
                    ));
                }
                runners = Some((token, set));
                metrics::gauge!(names::CDC_LEADER).set(1.0);
            }
            (false, true) => {
                warn!("cdc: lease lost; another instance follows the change streams");
                metrics::gauge!(names::CDC_LEADER).set(0.0);
                if let Some((token, mut set)) = runners.take() {
                    token.cancel();
                    while set.join_next().await.is_some() {}
                }
                // Nothing follows the streams here now (the mirror takes over next tick).
                for stream in ctx.services.cdc.streams() {
                    stream.set_state(State::Disconnected);
                }
                renewed_at = None;
            }
            _ => {}
        }
        if held {
            publish(&ctx, &tier, &mut conn).await;
        } else {
            mirror(&ctx, &tier, &mut conn).await;
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(TICK) => {}
        }
    }
    if let Some((token, mut set)) = runners.take() {
        token.cancel();
        while set.join_next().await.is_some() {}
        // Another instance takes over at once instead of after the period.
        let _ = tokio::time::timeout(tier.timeout() * 4, lease.release(&mut conn)).await;
    }
}

fn state_key(tier: &SharedTier, db: &str) -> String {
    format!("pgmemo:{}:cdc:state:{db}", tier.namespace())
}

/// Set while some non-holder instance has client sessions of the database: the holder keeps
/// its stream wanted (see `side`).
fn want_key(tier: &SharedTier, db: &str) -> String {
    format!("pgmemo:{}:cdc:want:{db}", tier.namespace())
}

/// Set by an instance about to forward a statement that needs the database free: the
/// holder stops its stream.
fn release_key(tier: &SharedTier, db: &str) -> String {
    format!("pgmemo:{}:cdc:release:{db}", tier.namespace())
}

/// How long a want lasts unless refreshed (a few ticks: a slow tick must not stop a stream
/// other instances' sessions use).
const WANT_TTL: Duration = Duration::from_secs(2);

/// Asks the lease holder, whichever instance it is, to stop `db`'s stream now (before a
/// statement that needs the database free). Best effort: a failure leaves the stream to
/// the holder's own idle rule, and the statement reports what uses the database. The
/// request lasts `hold` (the caller's release period).
pub async fn request_release(tier: &SharedTier, db: &str, hold: Duration) {
    let mut conn = tier.conn();
    let ttl = u64::try_from(hold.as_millis()).unwrap_or(10_000);
    let mut cmd = redis::cmd("SET");
    cmd.arg(release_key(tier, db)).arg("1").arg("PX").arg(ttl);
    let _ = tokio::time::timeout(tier.timeout(), cmd.query_async::<()>(&mut conn)).await;
}

/// The holder: every stream's state, `disconnected` while a bump waits for its retry.
async fn publish(
    ctx: &AppContext,
    tier: &SharedTier,
    conn: &mut crate::redis_link::conn::RedisConn,
) {
    let pending = tier.has_pending();
    let ttl = u64::try_from(STATE_TTL.as_millis()).unwrap_or(750);
    for stream in ctx.services.cdc.streams() {
        let db = stream.name();
        for (key, release) in [(release_key(tier, db), true), (want_key(tier, db), false)] {
            let mut get = redis::cmd("EXISTS");
            get.arg(key);
            let read = tokio::time::timeout(tier.timeout(), get.query_async::<u32>(conn)).await;
            if let Ok(Ok(n)) = read
                && n > 0
            {
                if release {
                    let _ = ctx.side.release(db);
                    break;
                }
                ctx.side.touch_remote(db, WANT_TTL);
            }
        }
        let state = match stream.state() {
            State::Streaming if pending => State::Disconnected,
            s => s,
        };
        let mut cmd = redis::cmd("SET");
        cmd.arg(state_key(tier, stream.name()))
            .arg(state.as_str())
            .arg("PX")
            .arg(ttl);
        // A failure here lets the state expire: the others stop serving (safe).
        let _ = tokio::time::timeout(tier.timeout(), cmd.query_async::<()>(conn)).await;
    }
}

/// The others: the holder's published states become this instance's (none: disconnected).
async fn mirror(
    ctx: &AppContext,
    tier: &SharedTier,
    conn: &mut crate::redis_link::conn::RedisConn,
) {
    for stream in ctx.services.cdc.streams() {
        if ctx.side.sessions(stream.name()) > 0 {
            let ttl = u64::try_from(WANT_TTL.as_millis()).unwrap_or(2000);
            let mut cmd = redis::cmd("SET");
            cmd.arg(want_key(tier, stream.name()))
                .arg("1")
                .arg("PX")
                .arg(ttl);
            // A failure lets the want lapse: the holder may stop the stream, and this
            // instance's sessions then bypass the cache (safe).
            let _ = tokio::time::timeout(tier.timeout(), cmd.query_async::<()>(conn)).await;
        }
        let mut cmd = redis::cmd("GET");
        cmd.arg(state_key(tier, stream.name()));
        let read = tokio::time::timeout(tier.timeout(), cmd.query_async::<Option<String>>(conn));
        let state = match read.await {
            Ok(Ok(Some(name))) => State::parse(&name).unwrap_or(State::Disconnected),
            _ => State::Disconnected,
        };
        stream.set_remote(true);
        if stream.state() != state {
            stream.set_state(state);
        }
    }
}
