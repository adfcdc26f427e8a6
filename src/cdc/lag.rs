//! Replication lag, measured by WAL position rather than by commit timestamps (one huge
//! transaction delays everything behind it, whatever its own timestamp says): a side
//! connection samples the server's flushed WAL position (what logical decoding can read;
//! with `synchronous_commit = off` a commit becomes visible before it is flushed, which
//! adds up to three `wal_writer_delay`s the stream cannot see: [`super::flush`] reports that
//! bound once per connect); the lag is how far the stream's
//! applied position trails it, in bytes and in the age of the oldest sample not yet
//! applied. Past `cdc_lag_max` the database's cache is bypassed until the stream is back
//! within half of it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::Gauge;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::hub::{DbStream, State};
use super::wire::Lsn;
use crate::telemetry::names;

/// Samples remembered (older unapplied samples than these are dropped, so lag in seconds
/// is then a lower bound; the byte lag stays exact).
const MAX_SAMPLES: usize = 4096;

/// Server positions sampled over time, oldest first.
#[derive(Debug, Default)]
pub struct LagWindow {
    samples: VecDeque<(Lsn, Instant)>,
}

impl LagWindow {
    /// Records the server's position `current` seen at `at`, forgets what `applied` has
    /// passed, and returns (lag bytes, lag age).
    pub fn observe(&mut self, current: Lsn, at: Instant, applied: Lsn) -> (u64, Duration) {
        if self.samples.back().is_none_or(|(l, _)| *l < current) {
            if self.samples.len() >= MAX_SAMPLES {
                self.samples.pop_front();
            }
            self.samples.push_back((current, at));
        }
        while self.samples.front().is_some_and(|(l, _)| *l <= applied) {
            self.samples.pop_front();
        }
        let bytes = current.0.saturating_sub(applied.0);
        let age = self
            .samples
            .front()
            .map_or(Duration::ZERO, |(_, t)| at.saturating_duration_since(*t));
        (bytes, age)
    }
}

/// Samples the server's WAL position every `tick` through `client` and moves `stream`
/// between streaming and lagging, until `stop` or a query fails (the stream's own loop
/// notices a dead server; this task then just ends).
pub async fn monitor(
    client: tokio_postgres::Client,
    stream: Arc<DbStream>,
    lag_max: Duration,
    stop: CancellationToken,
) {
    let tick = (lag_max / 4).clamp(Duration::from_millis(10), Duration::from_millis(500));
    let db = stream.name().to_owned();
    let bytes_gauge: Gauge = metrics::gauge!(names::CDC_LAG_BYTES, "database" => db.clone());
    let secs_gauge: Gauge = metrics::gauge!(names::CDC_LAG_SECONDS, "database" => db.clone());
    report_flush_delay(&db, &super::flush::probe(&client).await);
    let mut window = LagWindow::default();
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = interval.tick() => {}
        }
        let row = tokio::select! {
            _ = stop.cancelled() => return,
            r = client.query_one("SELECT pg_catalog.pg_current_wal_flush_lsn()::text", &[]) => r,
        };
        let current = match row.map(|r| r.try_get::<_, String>(0)) {
            Ok(Ok(text)) => match text.parse::<Lsn>() {
                Ok(l) => l,
                Err(_) => continue,
            },
            Ok(Err(e)) | Err(e) => {
                warn!(database = %db, error = %e, "cdc: WAL position probe failed");
                return;
            }
        };
        let (bytes, age) = window.observe(current, Instant::now(), stream.applied());
        bytes_gauge.set(bytes as f64);
        secs_gauge.set(age.as_secs_f64());
        stream.set_lag(bytes, age);
        match stream.state() {
            State::Streaming
                if age > lag_max && stream.transition(State::Streaming, State::Lagging) =>
            {
                warn!(database = %db, lag_bytes = bytes, lag = ?age, limit = ?lag_max,
                    "cdc: change stream lags past cdc_lag_max; cache bypassed until it catches up");
            }
            State::Lagging
                if age <= lag_max / 2 && stream.transition(State::Lagging, State::Streaming) =>
            {
                info!(database = %db, lag_bytes = bytes, "cdc: change stream caught up; cache serving");
            }
            _ => {}
        }
    }
}

/// Logs and exports the delay before a commit can reach the stream (on each stream connect:
/// the server's settings may have changed while it was down).
fn report_flush_delay(db: &str, delay: &super::flush::FlushDelay) {
    let bound = delay.bound();
    metrics::gauge!(names::CDC_FLUSH_DELAY_BOUND_SECONDS, "database" => db.to_owned())
        .set(bound.as_secs_f64());
    if delay.asynchronous {
        warn!(database = %db, bound = ?bound, wal_writer_delay = ?delay.wal_writer_delay,
            reason = delay.reason,
            "cdc: commits may reach the change stream up to this late (WAL is streamed only once \
             flushed), on top of pgmemo_cdc_lag_seconds");
    } else {
        info!(database = %db, reason = delay.reason,
            "cdc: commits reach the change stream once flushed (no extra delay)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_the_age_of_the_oldest_unapplied_position() {
        let t0 = Instant::now();
        let mut w = LagWindow::default();
        assert_eq!(w.observe(Lsn(100), t0, Lsn(100)), (0, Duration::ZERO));
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(w.observe(Lsn(200), t1, Lsn(100)), (100, Duration::ZERO));
        let t2 = t1 + Duration::from_millis(100);
        // 200 (seen at t1) is still unapplied at t2.
        assert_eq!(
            w.observe(Lsn(300), t2, Lsn(150)),
            (150, Duration::from_millis(100))
        );
        let t3 = t2 + Duration::from_millis(100);
        assert_eq!(
            w.observe(Lsn(300), t3, Lsn(250)),
            (50, Duration::from_millis(100))
        );
        assert_eq!(w.observe(Lsn(300), t3, Lsn(300)), (0, Duration::ZERO));
    }
}
