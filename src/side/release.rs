//! Closing pgmemo's side connections to a database: when no client session used it for
//! [`super::IDLE_GRACE`] (the catalog poller's task calls [`close_idle`]), and at once before
//! a client statement that needs it free is forwarded ([`release`]).

use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::cache::EpochCause;
use crate::cdc::hub::State;
use crate::context::AppContext;
use crate::sql::NeedsFree;

/// How long a release waits for the change stream of a database to stop (its replication
/// connection to end and its temporary slot to go): past it the statement is forwarded
/// anyway, and PostgreSQL reports what still uses the database.
const STREAM_STOP_WAIT: Duration = Duration::from_secs(5);
/// How long a release waits for the client sessions of the database here to end (PostgreSQL
/// itself waits up to 5 s for other sessions to leave before it refuses the statement).
const SESSIONS_LEAVE_WAIT: Duration = Duration::from_secs(2);

/// Closes the catalog connections of `db`. With a shared tier, results other instances
/// cached could depend on relations only this instance watched: the epoch is bumped so
/// none of them is served unwatched.
pub async fn close_catalog(ctx: &AppContext, db: &str) {
    let had_tracked = ctx.services.catalog.close_database(db).await;
    if had_tracked && ctx.services.shared.is_some() {
        ctx.services.invalidator.bump_epoch(EpochCause::SideClosed);
    }
}

/// Closes the catalog connections of every database that is no longer active.
pub async fn close_idle(ctx: &AppContext) {
    for db in ctx.services.catalog.open_databases() {
        if !ctx.side.active(&db) {
            debug!(database = %db, "no client session: pgmemo's catalog connections closed");
            close_catalog(ctx, &db).await;
        }
    }
}

/// Releases `db` once no client session of it is left here, waiting for sessions that are
/// ending (a client typically closes its connection and at once drops the database from
/// another: its session here may not have noticed yet). False when one stays.
async fn release_when_left(ctx: &AppContext, db: &str) -> bool {
    let started = Instant::now();
    loop {
        if ctx.side.release(db) {
            return true;
        }
        if started.elapsed() > SESSIONS_LEAVE_WAIT {
            return false;
        }
        ctx.side.changed(Duration::from_millis(50)).await;
    }
}

/// Before a statement that needs these databases free is forwarded by a session of
/// `session_db`: closes pgmemo's side connections to each (none while a session of it stays
/// open here: the statement fails on that session anyway) and waits, bounded, until its
/// change stream has stopped.
pub async fn release(ctx: &AppContext, session_db: &str, needs: &[NeedsFree]) {
    for need in needs {
        let db = need.name.as_str();
        if db == session_db || !release_when_left(ctx, db).await {
            continue;
        }
        info!(database = %db, kind = ?need.kind,
            "a statement needs the database free: pgmemo's side connections to it close");
        close_catalog(ctx, db).await;
        let Some(stream) = ctx.services.cdc.streams().find(|s| s.name() == db) else {
            continue;
        };
        if let Some(tier) = &ctx.services.shared {
            // The lease holder may be another instance: ask it to stop too.
            crate::cdc::elect::request_release(tier, db, super::RELEASE_HOLD).await;
        }
        let started = Instant::now();
        loop {
            let stopped = matches!(
                stream.state(),
                State::Idle | State::Off | State::Disconnected
            );
            if stopped
                && ctx
                    .services
                    .catalog
                    .active_pgmemo_slots(session_db, db)
                    .await
                    .is_ok_and(|n| n == 0)
            {
                break;
            }
            if started.elapsed() > STREAM_STOP_WAIT {
                warn!(database = %db, state = stream.state().as_str(),
                    "the change stream did not stop in time; forwarding the statement anyway");
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
