//! Cancel requests for a session whose relay runs. Forwarded at once, a request could reach
//! PostgreSQL before the statement it follows: pgmemo may not have read that statement yet
//! (a busy worker, a client behind backpressure), or may hold it back to plan it, or its own
//! work (the settings probe, a Parse replayed on its own) may occupy the upstream connection,
//! where the request would cancel pgmemo's work while the client's statement queued behind it
//! ran uncancelled. So the registry holds every request (see [`crate::cancel`]) and wakes the
//! relay, which reads what the client sent first and then routes it: forwarded when the
//! client's own work is on the connection, handed to a statement pgmemo holds back, kept while
//! the client's work is still with pgmemo, and forwarded all the same (without repeats) once
//! everything the client sent has been read and nothing of it is left running: PostgreSQL
//! ignores it then, as it would a direct client's.
//! The forward uses the upstream backend's key (pgmemo relays BackendKeyData unchanged), runs
//! inside the session's task (polled by the relay, bounded by `upstream.connect_timeout`),
//! and the client's cancel connections close only once it is done.
//!
//! A request forwarded right behind the statement it is for can reach PostgreSQL before the
//! backend has read that statement; PostgreSQL then drops it (a backend waiting for input
//! ignores a cancel). A client cancelling directly is far behind its statement; pgmemo, which
//! sends both, is not. So while that statement's sync group is still the only thing
//! outstanding upstream, the request is sent again a few times, at growing intervals
//! ([`RETRY_DELAYS`]): a repeat can only reach the same statement (or nothing), never a later
//! one, and the client's frames wait while a forward is under way.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Context;
use std::time::Duration;

use bytes::Bytes;
use tracing::{debug, warn};

use crate::cancel::{CancelKeyGuard, CancelSignal, Held};
use crate::context::AppContext;
use crate::protocol::startup;
use crate::telemetry::names;

type Forwarding = Pin<Box<dyn Future<Output = ()> + Send>>;

/// When a forwarded request is sent again (after the previous forward finished) while its
/// statement's sync group is still the only thing outstanding upstream.
const RETRY_DELAYS: [Duration; 4] = [
    Duration::from_millis(25),
    Duration::from_millis(100),
    Duration::from_millis(400),
    Duration::from_millis(1600),
];

/// Where the client's work stands when held requests are routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientWork {
    /// Sent upstream and not yet answered: the requests are for it. `sole`: the session
    /// state's ReadyForQuery count when that work is one sync group with nothing behind it
    /// (see `SessionState::sole_group`); only then may the request be sent again.
    Upstream { sole: Option<u64> },
    /// A statement pgmemo holds back (waiting for another session's fill) takes them.
    HeldBack,
    /// Still with pgmemo (being planned, or not yet complete): decide later.
    Pending,
    /// Nothing: the work the requests were for is over (forwarded once, as a direct
    /// client's request would reach the idle backend; the client's next frames wait for it).
    Done,
}

/// One session's cancel key, and the requests held for it.
pub struct Deferral {
    ctx: Arc<AppContext>,
    guard: CancelKeyGuard,
    signal: Arc<CancelSignal>,
    /// The CancelRequest packet for the upstream backend.
    packet: Bytes,
    /// pgmemo's own work is marked under way in the signal.
    busy: bool,
    /// A relay routes this session's requests (marked in the signal).
    routed: bool,
    /// Requests held past the end of the own work, not yet routed.
    armed: Option<Held>,
    forwarding: Option<Forwarding>,
    retry: Option<Retry>,
}

/// Repeats of a forwarded request, for the sync group it was forwarded behind.
struct Retry {
    /// The ReadyForQuery count while that group is outstanding: once it moves, the group
    /// is over and nothing is sent again.
    readies: u64,
    /// The next delay in [`RETRY_DELAYS`].
    attempt: usize,
    /// Armed once the previous forward finished.
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Deferral {
    pub fn new(ctx: Arc<AppContext>, guard: CancelKeyGuard) -> Self {
        let signal = guard.signal();
        let packet = startup::encode_cancel(guard.key());
        Self {
            ctx,
            guard,
            signal,
            packet,
            busy: false,
            routed: false,
            armed: None,
            forwarding: None,
            retry: None,
        }
    }

    /// The session's cancel signal.
    pub fn signal(&self) -> Arc<CancelSignal> {
        self.guard.signal()
    }

    /// Called on every step of the relay: marks the session's requests as routed by it,
    /// registers its task to be woken for the next one, and arms the requests held since
    /// (unless pgmemo's own work is under way: [`Self::own_work`] hands them over at its end).
    pub fn collect(&mut self, cx: &Context<'_>) {
        // Registered before the requests are looked at, so one arriving in between wakes
        // the relay (a wake takes the waker: it is registered again on every step).
        self.signal.register(cx.waker());
        if !self.routed {
            self.routed = true;
            self.signal.set_routed(true);
        }
        if self.busy {
            return;
        }
        if let Some(held) = self.signal.take_held() {
            self.arm(held);
        }
    }

    /// The relay stops (the session ends or moves to another worker): requests arriving
    /// from now on are forwarded at once, those held stay for the next relay.
    pub fn detach(&mut self) {
        if self.routed {
            self.routed = false;
            self.signal.set_routed(false);
        }
    }

    fn arm(&mut self, held: Held) {
        match self.armed.as_mut() {
            Some(armed) => armed.merge(held),
            None => self.armed = Some(held),
        }
    }

    /// Nothing held, nothing being forwarded or to be sent again.
    pub fn idle(&self) -> bool {
        self.armed.is_none() && self.forwarding.is_none() && self.retry.is_none()
    }

    /// A forward is under way: the client's next frames wait, so the request cannot reach
    /// a statement sent after it.
    pub fn forwarding(&self) -> bool {
        self.forwarding.is_some()
    }

    /// Whether requests wait to be routed (then [`Self::route`] wants the client's state).
    pub fn armed(&self) -> bool {
        self.armed.is_some()
    }

    /// Records whether pgmemo's own work occupies the upstream connection now. Called before
    /// anything queued is written upstream, so the mark is up before the work can be hit.
    pub fn own_work(&mut self, busy: bool) {
        if busy == self.busy {
            return;
        }
        self.busy = busy;
        if let Some(held) = self.signal.set_own_work(busy) {
            self.arm(held);
        }
    }

    /// Routes the held requests by where the client's work stands. `Done` is only to be
    /// reported once everything the client sent has been read.
    pub fn route(&mut self, work: ClientWork) {
        if self.busy || self.forwarding.is_some() {
            return;
        }
        let Some(held) = self.armed.take() else {
            return;
        };
        let count = |result: &'static str, n: u64| {
            metrics::counter!(names::CANCEL_REQUESTS, "result" => result).increment(n);
        };
        if work != ClientWork::Pending {
            debug!(requests = held.requests(), to = ?work, "held cancel requests routed");
        }
        match work {
            ClientWork::Upstream { sole } => {
                self.forwarding = Some(self.forward(Some(held)));
                self.retry = sole.map(|readies| Retry {
                    readies,
                    attempt: 0,
                    sleep: None,
                });
            }
            ClientWork::HeldBack => {
                count("held_statement", held.requests());
                self.signal.raise_local();
                held.delivered();
            }
            ClientWork::Pending => self.armed = Some(held),
            ClientWork::Done => self.forwarding = Some(self.forward(Some(held))),
        }
    }

    /// Polls a forward under way and the repeats due. `sole`: what
    /// `SessionState::sole_group` says now (a repeat goes out only while it is unchanged).
    /// True when a forward finished.
    pub fn poll_forward(&mut self, cx: &mut Context<'_>, sole: Option<u64>) -> bool {
        if let Some(f) = self.forwarding.as_mut() {
            if f.as_mut().poll(cx).is_pending() {
                return false;
            }
            self.forwarding = None;
            if let Some(r) = self.retry.as_mut() {
                match RETRY_DELAYS.get(r.attempt) {
                    Some(delay) => r.sleep = Some(Box::pin(tokio::time::sleep(*delay))),
                    None => self.retry = None,
                }
            }
            return true;
        }
        let Some(r) = self.retry.as_mut() else {
            return false;
        };
        if self.busy || sole != Some(r.readies) {
            // The group ended (or more went upstream behind it): a repeat could reach
            // something else.
            self.retry = None;
            return false;
        }
        let Some(sleep) = r.sleep.as_mut() else {
            return false;
        };
        if sleep.as_mut().poll(cx).is_pending() {
            return false;
        }
        r.sleep = None;
        r.attempt += 1;
        debug!(attempt = r.attempt, "held cancel request sent again");
        self.forwarding = Some(self.forward(None));
        // Polled at once (it registers its wakeups; the branch above ends the recursion).
        self.poll_forward(cx, sole)
    }

    /// Forwards the request upstream; `held` (the first forward) is counted and its client
    /// connections told once done, a repeat (`None`) is counted as `repeated`.
    fn forward(&self, held: Option<Held>) -> Forwarding {
        let ctx = Arc::clone(&self.ctx);
        let packet = self.packet.clone();
        Box::pin(async move {
            let timeout = ctx.config().upstream.connect_timeout;
            let result = match ctx.upstream.forward_cancel(&packet, timeout).await {
                Ok(()) if held.is_none() => "repeated",
                Ok(()) => "forwarded",
                Err(e) => {
                    warn!(error = %e, "forwarding a held cancel request failed");
                    "failed"
                }
            };
            let n = held.as_ref().map_or(1, Held::requests);
            metrics::counter!(names::CANCEL_REQUESTS, "result" => result).increment(n);
            if let Some(held) = held {
                held.delivered();
            }
        })
    }
}

impl Drop for Deferral {
    /// The session ends: its own work with it (held requests are dropped and their client
    /// connections close; the upstream connection closing ends whatever ran).
    fn drop(&mut self) {
        if self.busy {
            drop(self.signal.set_own_work(false));
        }
        self.detach();
    }
}
