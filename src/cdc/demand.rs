//! Runs one covered database's change stream ([`super::runner`]) only while it is wanted:
//! not while a statement that needs the database free runs (see `side::release`), and, with
//! `invalidation.cdc_stop_when_idle`, only while a client session uses the database (here,
//! or on another instance: see `super::elect`). A stopped stream is [`State::Idle`], which
//! does not serve: sessions that come bypass the cache until the restarted stream is
//! consistent, and the restart bumps the epoch before it serves (what was committed while
//! nothing followed is covered, as after any reconnect).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::info;

use super::hub::{DbStream, State};
use crate::context::AppContext;

/// How often wants are re-checked without a presence change (a grace may end).
const RECHECK: Duration = Duration::from_millis(250);

fn wanted(ctx: &AppContext, db: &str) -> bool {
    if ctx.config().invalidation.cdc_stop_when_idle {
        ctx.side.active(db)
    } else {
        !ctx.side.released(db)
    }
}

/// Follows `stream`'s database whenever it is wanted, until `stop`.
pub async fn run(ctx: Arc<AppContext>, stream: Arc<DbStream>, stop: CancellationToken) {
    let db = stream.name().to_owned();
    loop {
        if !wanted(&ctx, &db) {
            stream.set_state(State::Idle);
            while !wanted(&ctx, &db) {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = ctx.side.changed(RECHECK) => {}
                }
            }
            info!(database = %db, "cdc: a client uses the database; change stream restarting");
        }
        let token = stop.child_token();
        let runner = super::runner::run(Arc::clone(&ctx), Arc::clone(&stream), token.clone());
        tokio::pin!(runner);
        let unwanted = loop {
            tokio::select! {
                _ = &mut runner => break false,
                _ = ctx.side.changed(RECHECK) => {
                    if !wanted(&ctx, &db) {
                        break true;
                    }
                }
            }
        };
        if !unwanted {
            // Shut down, or `cdc = auto` found the stream unavailable: nothing to restart.
            return;
        }
        token.cancel();
        runner.await;
        if stop.is_cancelled() {
            return;
        }
        stream.set_state(State::Idle);
        info!(database = %db, "cdc: no client uses the database; change stream stopped");
    }
}
