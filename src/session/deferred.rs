//! Cancel requests that arrive while pgmemo's own work (the settings probe, a Parse replayed
//! on its own) occupies the session's upstream connection. Forwarded then, a request would
//! cancel pgmemo's work, and the client's statement queued behind it would run uncancelled.
//! So the registry holds it (see [`crate::cancel`]), and the relay routes it once that work
//! is over: forwarded when the client's own work is on the connection, handed to a statement
//! pgmemo holds back, kept while the client's work is still with pgmemo, or dropped when the
//! client has nothing left running (as PostgreSQL drops a cancel that finds nothing to cancel).
//! The forward uses the upstream backend's key (pgmemo relays BackendKeyData unchanged), runs
//! inside the session's task (polled by the relay, bounded by `upstream.connect_timeout`),
//! and the client's cancel connections close only once it is done.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Context;

use bytes::Bytes;
use tracing::warn;

use crate::cancel::{CancelKeyGuard, CancelSignal, Held};
use crate::context::AppContext;
use crate::protocol::startup;
use crate::telemetry::names;

type Forwarding = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Where the client's work stands when held requests are routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientWork {
    /// Sent upstream and not yet answered: the requests are for it.
    Upstream,
    /// A statement pgmemo holds back (waiting for another session's fill) takes them.
    HeldBack,
    /// Still with pgmemo (being planned, or not yet complete): decide later.
    Pending,
    /// Nothing: the work the requests were for is over.
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
    /// Requests held past the end of the own work, not yet routed.
    armed: Option<Held>,
    forwarding: Option<Forwarding>,
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
            armed: None,
            forwarding: None,
        }
    }

    /// The session's cancel signal.
    pub fn signal(&self) -> Arc<CancelSignal> {
        self.guard.signal()
    }

    /// Nothing held and nothing being forwarded.
    pub fn idle(&self) -> bool {
        self.armed.is_none() && self.forwarding.is_none()
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
            match self.armed.as_mut() {
                Some(armed) => armed.merge(held),
                None => self.armed = Some(held),
            }
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
        match work {
            ClientWork::Upstream => self.forwarding = Some(self.forward(held)),
            ClientWork::HeldBack => {
                count("held_statement", held.requests);
                self.signal.raise_local();
                held.delivered();
            }
            ClientWork::Pending => self.armed = Some(held),
            ClientWork::Done => count("nothing_running", held.requests),
        }
    }

    /// Polls a forward under way; true when it finished.
    pub fn poll_forward(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(f) = self.forwarding.as_mut() else {
            return false;
        };
        if f.as_mut().poll(cx).is_pending() {
            return false;
        }
        self.forwarding = None;
        true
    }

    fn forward(&self, held: Held) -> Forwarding {
        let ctx = Arc::clone(&self.ctx);
        let packet = self.packet.clone();
        Box::pin(async move {
            let timeout = ctx.config().upstream.connect_timeout;
            let result = match ctx.upstream.forward_cancel(&packet, timeout).await {
                Ok(()) => "forwarded",
                Err(e) => {
                    warn!(error = %e, "forwarding a held cancel request failed");
                    "failed"
                }
            };
            metrics::counter!(names::CANCEL_REQUESTS, "result" => result).increment(held.requests);
            held.delivered();
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
    }
}
