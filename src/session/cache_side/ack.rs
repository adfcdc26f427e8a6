//! Read-your-writes for effects SQL cannot see, with change data capture on (CDC issue): a
//! transaction through pgmemo that ran a trigger, a volatile user function, CALL or DO may
//! have written tables pgmemo cannot name. Without CDC its commit bumps the epoch. With the
//! session's database streaming, the acknowledgement (the ReadyForQuery or COMMIT's
//! CommandComplete) is instead held until the stream has applied everything up to the
//! server's WAL insert position taken after the commit — which includes the commit — so
//! the writer's next read sees the trigger's writes, and no other cached result is lost.
//! Past `invalidation.cdc_ack_wait_max`, or if anything fails, the epoch is bumped as
//! without CDC (also when the session ends while its acknowledgement is held).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::cache::EpochCause;
use crate::catalog::Catalog;
use crate::cdc::hub::DbStream;
use crate::cdc::wire::Lsn;
use crate::invalidation::Invalidator;
use crate::telemetry::names;

/// The relay polls this before relaying the held acknowledgement.
pub type AckFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Bumps the epoch unless the wait succeeded, however the future ends (dropped included).
struct Fallback {
    invalidator: Arc<Invalidator>,
    settled: bool,
}

impl Drop for Fallback {
    fn drop(&mut self) {
        if !self.settled {
            self.invalidator.bump_epoch(EpochCause::SideEffects);
        }
    }
}

/// Waits until `stream` has applied the commit just reported on `db`, for at most `max`.
pub fn wait(
    invalidator: Arc<Invalidator>,
    catalog: Arc<Catalog>,
    stream: Arc<DbStream>,
    db: Arc<str>,
    max: Duration,
) -> AckFuture {
    // Made outside the async block, so dropping the future unpolled still bumps.
    let fallback = Fallback {
        invalidator,
        settled: false,
    };
    Box::pin(async move {
        let mut fallback = fallback;
        let applied = async {
            let lsn = catalog.wal_insert_lsn(&db).await.ok()??;
            let lsn = lsn.parse::<Lsn>().ok()?;
            stream.wait_applied(lsn, max).await.then_some(())
        };
        let applied = matches!(tokio::time::timeout(max, applied).await, Ok(Some(())));
        fallback.settled = true;
        let result = if applied {
            "applied"
        } else {
            // As without CDC; with a shared tier the acknowledgement also waits for Redis
            // to have the epoch bump.
            let shared = fallback
                .invalidator
                .bump_epoch_held(EpochCause::SideEffects);
            if let Some(shared) = shared {
                shared.apply().await;
            }
            "timed_out"
        };
        metrics::counter!(names::CDC_ACK_WAITS, "result" => result).increment(1);
    })
}
