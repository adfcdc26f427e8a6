//! What the change streams share with sessions: per covered database, the stream's state
//! (which decides whether that database's cached results may be used at all), its applied
//! WAL position (which acknowledgement waits watch), and the gauges that report both.
//!
//! Sessions ask [`Hub::serves`] on every lookup; while every stream is healthy that is one
//! atomic load. The set of covered databases is fixed at start-up; a covered database's
//! stream may be stopped while no client uses it ([`State::Idle`], see `cdc::demand`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use metrics::Gauge;
use tokio::sync::Notify;

use super::wire::Lsn;
use crate::telemetry::names;

/// Where one database's change stream stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    /// Not followed (`cdc = auto` found it unavailable): TTL bounds direct writes, and the
    /// cache is used as without CDC.
    Off = 0,
    /// Connecting, choosing the output plugin.
    Connecting = 1,
    /// Waiting for the slot's consistent point (open write transactions delay it).
    CreatingSlot = 2,
    /// Following the stream within the lag bound: the only state that is fresh.
    Streaming = 3,
    /// Following it, but further behind than `cdc_lag_max`.
    Lagging = 4,
    /// The connection failed; retrying with backoff.
    Disconnected = 5,
    /// Stopped: no client session uses the database (with `cdc_stop_when_idle`), or a
    /// statement that needs it free is running (see `side`). Restarted, with the epoch
    /// bump of every restart, when a session of it comes.
    Idle = 6,
}

impl State {
    const ALL: [State; 7] = [
        Self::Off,
        Self::Connecting,
        Self::CreatingSlot,
        Self::Streaming,
        Self::Lagging,
        Self::Disconnected,
        Self::Idle,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Connecting => "connecting",
            Self::CreatingSlot => "creating_slot",
            Self::Streaming => "streaming",
            Self::Lagging => "lagging",
            Self::Disconnected => "disconnected",
            Self::Idle => "idle",
        }
    }

    /// The state named by [`as_str`](Self::as_str) (as another instance published it).
    pub fn parse(name: &str) -> Option<State> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }

    fn from_u8(v: u8) -> State {
        Self::ALL.get(usize::from(v)).copied().unwrap_or(Self::Off)
    }

    /// Whether a database in this state may use its cache: while the stream is not known
    /// to carry every commit in time, cached results could be stale beyond any bound.
    pub fn serves(self) -> bool {
        matches!(self, Self::Off | Self::Streaming)
    }
}

/// One covered database's stream.
pub struct DbStream {
    name: String,
    state: AtomicU8,
    applied: AtomicU64,
    advanced: Notify,
    degraded: Arc<AtomicUsize>,
    gauges: [Gauge; 7],
    /// The state is another instance's (the CDC lease holder's): nothing here applies the
    /// stream, so nothing can wait for it.
    remote: AtomicBool,
    /// The lag monitor's last reading: WAL bytes behind, and milliseconds since the oldest
    /// position not applied was first seen (for the admin console; the gauges have them too).
    lag_bytes: AtomicU64,
    lag_ms: AtomicU64,
}

impl DbStream {
    /// Marks the state as mirrored from another instance (`true`) or this one's own.
    pub fn set_remote(&self, remote: bool) {
        self.remote.store(remote, Ordering::Release);
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Records the lag monitor's reading.
    pub fn set_lag(&self, bytes: u64, age: std::time::Duration) {
        self.lag_bytes.store(bytes, Ordering::Relaxed);
        let ms = u64::try_from(age.as_millis()).unwrap_or(u64::MAX);
        self.lag_ms.store(ms, Ordering::Relaxed);
    }

    /// The last lag reading: WAL bytes behind, and how long behind.
    pub fn lag(&self) -> (u64, std::time::Duration) {
        (
            self.lag_bytes.load(Ordering::Relaxed),
            std::time::Duration::from_millis(self.lag_ms.load(Ordering::Relaxed)),
        )
    }

    /// Whether the state is mirrored from another instance.
    pub fn is_remote(&self) -> bool {
        self.remote.load(Ordering::Acquire)
    }

    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Moves to `next`; returns the previous state.
    pub fn set_state(&self, next: State) -> State {
        let prev = State::from_u8(self.state.swap(next as u8, Ordering::AcqRel));
        self.moved(prev, next);
        prev
    }

    /// Moves from `from` to `to` only if the state is still `from` (the lag monitor must not
    /// undo the stream loop's own moves).
    pub fn transition(&self, from: State, to: State) -> bool {
        let moved = self
            .state
            .compare_exchange(from as u8, to as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if moved {
            self.moved(from, to);
        }
        moved
    }

    fn moved(&self, prev: State, next: State) {
        if prev.serves() && !next.serves() {
            self.degraded.fetch_add(1, Ordering::AcqRel);
        } else if !prev.serves() && next.serves() {
            self.degraded.fetch_sub(1, Ordering::AcqRel);
        }
        for (s, g) in State::ALL.iter().zip(&self.gauges) {
            g.set(if *s == next { 1.0 } else { 0.0 });
        }
        if next != State::Streaming {
            // Acknowledgement waits give up at once rather than wait for their timeout.
            self.advanced.notify_waiters();
        }
    }

    /// The WAL position up to which every committed transaction has been bumped.
    pub fn applied(&self) -> Lsn {
        Lsn(self.applied.load(Ordering::Acquire))
    }

    /// Records that everything up to `lsn` is applied (never moves back).
    pub fn advance(&self, lsn: Lsn) {
        let prev = self.applied.fetch_max(lsn.0, Ordering::AcqRel);
        if lsn.0 > prev {
            self.advanced.notify_waiters();
        }
    }

    /// Waits until the stream has applied `lsn`, for at most `max`. False when it has not
    /// (timed out, or the stream is not streaming).
    pub async fn wait_applied(&self, lsn: Lsn, max: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.advanced.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.applied() >= lsn {
                    return true;
                }
                if self.state() != State::Streaming {
                    return false;
                }
                notified.await;
            }
        };
        tokio::time::timeout(max, wait).await.unwrap_or(false)
    }
}

/// Every covered database's stream.
pub struct Hub {
    streams: HashMap<String, Arc<DbStream>>,
    /// Streams in a state that does not serve: while zero, [`Hub::serves`] is one load.
    degraded: Arc<AtomicUsize>,
}

impl Hub {
    /// No database covered (`cdc = off`).
    pub fn none() -> Hub {
        Hub::new(&[])
    }

    /// Covers `databases`, each starting in [`State::Connecting`].
    pub fn new(databases: &[String]) -> Hub {
        let degraded = Arc::new(AtomicUsize::new(0));
        let streams = databases
            .iter()
            .map(|db| {
                let s = Arc::new(DbStream {
                    name: db.clone(),
                    state: AtomicU8::new(State::Off as u8),
                    applied: AtomicU64::new(0),
                    remote: AtomicBool::new(false),
            lag_bytes: AtomicU64::new(0),
            lag_ms: AtomicU64::new(0),
                    advanced: Notify::new(),
                    degraded: Arc::clone(&degraded),
                    gauges: State::ALL.map(|st| {
                        metrics::gauge!(names::CDC_STATE, "database" => db.clone(), "state" => st.as_str())
                    }),
                });
                s.set_state(State::Connecting);
                (db.clone(), s)
            })
            .collect();
        Hub { streams, degraded }
    }

    /// Whether sessions of `database` may use the cache now.
    pub fn serves(&self, database: &str) -> bool {
        if self.degraded.load(Ordering::Acquire) == 0 {
            return true;
        }
        self.streams
            .get(database)
            .is_none_or(|s| s.state().serves())
    }

    /// The stream of `database`, when it is covered and streaming (acknowledgement waits).
    pub fn streaming(&self, database: &str) -> Option<&Arc<DbStream>> {
        self.streams
            .get(database)
            .filter(|s| s.state() == State::Streaming && !s.remote.load(Ordering::Acquire))
    }

    pub fn streams(&self) -> impl Iterator<Item = &Arc<DbStream>> {
        self.streams.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_streaming_and_off_serve_and_the_fast_path_tracks_that() {
        let hub = Hub::new(&["a".into(), "b".into()]);
        assert!(!hub.serves("a"), "connecting does not serve");
        assert!(
            hub.serves("other"),
            "an uncovered database keeps TTL semantics"
        );
        let a = hub
            .streams
            .get("a")
            .cloned()
            .unwrap_or_else(|| unreachable!());
        let b = hub
            .streams
            .get("b")
            .cloned()
            .unwrap_or_else(|| unreachable!());
        a.set_state(State::Streaming);
        assert!(hub.serves("a") && !hub.serves("b"));
        b.set_state(State::Off);
        assert_eq!(hub.degraded.load(Ordering::Acquire), 0);
        a.set_state(State::Lagging);
        assert!(!hub.serves("a"));
        a.set_state(State::Disconnected);
        assert_eq!(hub.degraded.load(Ordering::Acquire), 1);
        a.set_state(State::Streaming);
        assert!(hub.serves("a") && hub.serves("b"));
        assert!(hub.streaming("a").is_some() && hub.streaming("b").is_none());
    }

    #[tokio::test]
    async fn waits_end_when_applied_or_when_the_stream_drops() {
        let hub = Hub::new(&["a".into()]);
        let a = hub
            .streams
            .get("a")
            .cloned()
            .unwrap_or_else(|| unreachable!());
        a.set_state(State::Streaming);
        a.advance(Lsn(100));
        assert!(a.wait_applied(Lsn(90), Duration::from_millis(10)).await);
        assert!(!a.wait_applied(Lsn(200), Duration::from_millis(10)).await);
        let waiter = {
            let a = Arc::clone(&a);
            tokio::spawn(async move { a.wait_applied(Lsn(200), Duration::from_secs(10)).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        a.advance(Lsn(250));
        assert!(waiter.await.unwrap_or(false));
        let waiter = {
            let a = Arc::clone(&a);
            tokio::spawn(async move { a.wait_applied(Lsn(300), Duration::from_secs(10)).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        a.set_state(State::Disconnected);
        assert!(!waiter.await.unwrap_or(true));
        a.advance(Lsn(10));
        assert_eq!(a.applied(), Lsn(250), "never moves back");
    }
}
