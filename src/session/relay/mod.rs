//! The relay loop of an authenticated session: one task, one hand-written poll loop over both
//! sockets, so neither direction can block the other (no proxy deadlock), each direction is
//! bounded by its out-queue's high-water mark, and the session state is owned without locks.
//!
//! Frames are split by their length and forwarded as the original bytes, coalesced into one
//! chunk per read; only the frames the session state needs are inspected (in place, no copy).
//! Frames that need no inspection (DataRow, CopyData, ...) are streamed through even when they
//! are larger than a read, so a huge row never sits whole in memory.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::cache_side::ack::AckFuture;
use super::cache_side::{
    CacheSession, FrameAction, GroupAction, Hold, NamesFuture, PlanFuture, ProbeStep, WaitFuture,
};
use super::deferred::{ClientWork, Deferral};
use super::outq::OutQueue;
use super::state::SessionState;
use crate::error::ClientError;
use crate::net::Stream;
use crate::protocol::tags::{backend, frontend};
use crate::protocol::{self, FrameError, response};
use crate::telemetry::names;
use crate::telemetry::striped::Striped;
use crate::workers::Workers;

mod client;
mod upstream;

pub use upstream::is_fatal;

/// Read buffers start at this size and return to it when idle (memory per idle session).
const MIN_READ: usize = 8 * 1024;
/// Largest read buffer kept after a burst.
const MAX_KEEP: usize = 256 * 1024;
/// Backend frames larger than this are streamed without inspection.
const MAX_INSPECT_BACKEND: usize = 1024 * 1024;

/// Why the relay stopped.
#[derive(Debug)]
pub enum RelayEnd {
    /// The client closed its socket.
    ClientClosed,
    /// The client sent Terminate (forwarded upstream).
    Terminated,
    /// The upstream closed the connection; `fatal_relayed` if it said why first.
    UpstreamClosed { fatal_relayed: bool },
    /// A client frame was malformed or oversized (the client has been told; upstream closed).
    ClientProtocol(FrameError),
    /// pgmemo is shutting down (the client has been told 57P01).
    Shutdown,
    /// The session is idle and should continue on this worker (see [`super::follow`]):
    /// nothing is buffered in either direction and no response is outstanding.
    Migrate(usize),
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("client connection: {0}")]
    Client(io::Error),
    #[error("upstream connection: {0}")]
    Upstream(io::Error),
}

/// The relay's counters: process-wide, striped per worker thread (see
/// [`crate::telemetry::striped`]), bumped for every frame batch.
struct Counters {
    bytes_in: Arc<Striped>,
    bytes_out: Arc<Striped>,
    simple: Arc<Striped>,
    extended: Arc<Striped>,
    function_call: Arc<Striped>,
}

static COUNTERS: LazyLock<Counters> = LazyLock::new(|| {
    let statements =
        |protocol| Striped::register(names::STATEMENTS_TOTAL, &[("protocol", protocol)]);
    Counters {
        bytes_in: Striped::register(names::CLIENT_BYTES_RECEIVED, &[]),
        bytes_out: Striped::register(names::CLIENT_BYTES_SENT, &[]),
        simple: statements("simple"),
        extended: statements("extended"),
        function_call: statements("function_call"),
    }
});

/// Statements relayed by every session so far (Query, Execute, FunctionCall: answered from
/// the cache or sent upstream).
pub(crate) fn statements_total() -> u64 {
    let c = &*COUNTERS;
    c.simple.get() + c.extended.get() + c.function_call.get()
}

pub struct Relay<'a> {
    client: &'a mut Stream,
    upstream: &'a mut Stream,
    state: &'a mut SessionState,
    cache_side: &'a mut CacheSession,
    /// The session's cancel key: requests held while pgmemo's own work runs upstream.
    cancels: Option<&'a mut Deferral>,
    /// The plan being computed for the frame held at the head of `cbuf`.
    pending_plan: Option<PlanFuture>,
    /// A plan computed for a later frame (nothing is held for it); its result is memoised.
    background_plan: Option<PlanFuture>,
    /// The wait for another session's fill of the Query or group held at the head of `cbuf`.
    pending_wait: Option<WaitFuture>,
    /// The catalog read the next settings probe waits for.
    pending_names: Option<NamesFuture>,
    /// The acknowledgement at the head of `ubuf` waits for the change stream (see
    /// `cache_side::ack`); upstream reading pauses meanwhile.
    pending_ack: Option<AckFuture>,
    /// Client processing stopped at a held frame (plan or probe pending): resume it.
    client_paused: bool,
    /// The streamed upstream frame is swallowed (the probe's), not relayed.
    u_stream_drop: bool,
    max_message: usize,
    cbuf: BytesMut,
    ubuf: BytesMut,
    /// Bytes of a streamed (uninspected) frame still to pass, per direction.
    c_stream_left: usize,
    u_stream_left: usize,
    to_client: OutQueue,
    to_upstream: OutQueue,
    /// Set once the relay has decided to stop; returned when both queues are settled.
    ending: Option<RelayEnd>,
    client_eof: bool,
    fatal_relayed: bool,
    /// Shutdown signals and their tokens' wait futures. The futures are polled once, to
    /// register this task's (stable) waker; after that the signals' flags (one atomic load
    /// each, no lock) are checked per step.
    drain_signal: super::Signal,
    force_signal: super::Signal,
    shutdown_waits: [Pin<Box<WaitForCancellationFutureOwned>>; 2],
    shutdown_registered: bool,
    draining: bool,
    counters: &'static Counters,
    /// Following the client's CPU, when workers are pinned.
    follow: Option<(super::follow::Follow, &'a Workers)>,
}

impl<'a> Relay<'a> {
    pub fn new(
        client: &'a mut Stream,
        upstream: &'a mut Stream,
        state: &'a mut SessionState,
        cache_side: &'a mut CacheSession,
        max_message: usize,
        shutdown: super::Shutdown,
        follow: Option<(super::follow::Follow, &'a Workers)>,
    ) -> Self {
        let super::Shutdown { drain, force } = shutdown;
        Self {
            client,
            upstream,
            state,
            cache_side,
            cancels: None,
            pending_plan: None,
            background_plan: None,
            pending_wait: None,
            pending_names: None,
            pending_ack: None,
            client_paused: false,
            u_stream_drop: false,
            max_message,
            cbuf: BytesMut::new(),
            ubuf: BytesMut::new(),
            c_stream_left: 0,
            u_stream_left: 0,
            to_client: OutQueue::default(),
            to_upstream: OutQueue::default(),
            ending: None,
            client_eof: false,
            fatal_relayed: false,
            shutdown_waits: [
                Box::pin(drain.token().clone().cancelled_owned()),
                Box::pin(force.token().clone().cancelled_owned()),
            ],
            shutdown_registered: false,
            drain_signal: drain,
            force_signal: force,
            draining: false,
            counters: &COUNTERS,
            follow,
        }
    }

    /// The session's cancel key, for cancel requests held while pgmemo's own work runs.
    pub fn with_cancels(mut self, cancels: Option<&'a mut Deferral>) -> Self {
        self.cancels = cancels;
        self
    }

    /// Runs until the session ends; see `RelayEnd`.
    pub async fn run(mut self) -> Result<RelayEnd, RelayError> {
        let end = std::future::poll_fn(|cx| self.poll_step(cx)).await;
        if let Some(d) = self.cancels.as_deref_mut() {
            d.detach();
        }
        end
    }

    fn poll_step(&mut self, cx: &mut Context<'_>) -> Poll<Result<RelayEnd, RelayError>> {
        loop {
            // 0. Whether pgmemo's own work is on the upstream connection: marked before
            //    anything queued is written, so a cancel request cannot reach it unseen.
            self.track_own_work();

            // 1. Writes first: they free room for reads.
            let mut progress = match self.poll_writes(cx) {
                Ok(progress) => progress,
                Err(e) => return Poll::Ready(Err(e)),
            };
            if self.ending.is_some() {
                if self.to_client.is_settled() && self.to_upstream.is_settled() {
                    let end = self.ending.take().unwrap_or(RelayEnd::ClientClosed);
                    return Poll::Ready(Ok(end));
                }
                if !progress {
                    return Poll::Pending;
                }
                continue;
            }

            // 2. Shutdown: immediately when forced, otherwise at the next idle point.
            if self.shutdown_due(cx) {
                self.begin_shutdown();
                continue;
            }

            // 3. The cache's own work, and cancel requests held meanwhile.
            progress |= self.poll_own_work(cx);
            progress |= self.route_cancels(cx, false);

            // 4. Reads, each only while its destination has room.
            match self.poll_reads(cx) {
                Ok(read) => progress |= read,
                Err(e) => return Poll::Ready(Err(e)),
            }

            if !progress {
                // Everything the client sent has been read: held cancel requests with no
                // client work left to cancel are dropped now.
                if self.route_cancels(cx, true) {
                    continue;
                }
                if let Some(worker) = self.migration_due() {
                    return Poll::Ready(Ok(RelayEnd::Migrate(worker)));
                }
                return Poll::Pending;
            }
        }
    }

    /// Drains both outgoing queues as far as the sockets take; true on progress.
    fn poll_writes(&mut self, cx: &mut Context<'_>) -> Result<bool, RelayError> {
        let mut progress = false;
        match self.to_upstream.poll_drain(self.upstream, cx) {
            Poll::Ready(Ok(n)) => progress |= n > 0,
            Poll::Ready(Err(e)) => return Err(RelayError::Upstream(e)),
            Poll::Pending => {}
        }
        match self.to_client.poll_drain(self.client, cx) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.counters.bytes_out.add(n as u64);
                    progress = true;
                }
            }
            Poll::Ready(Err(e)) => return Err(RelayError::Client(e)),
            Poll::Pending => {}
        }
        Ok(progress)
    }

    /// Whether the session is to end for a shutdown now: at once when forced, at the next
    /// idle point when draining.
    fn shutdown_due(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.shutdown_registered {
            for w in self.shutdown_waits.iter_mut() {
                let _ = w.as_mut().poll(cx);
            }
            self.shutdown_registered = true;
        }
        if self.force_signal.is_raised() {
            return true;
        }
        if !self.draining && self.drain_signal.is_raised() {
            self.draining = true;
        }
        // A write-through holds the writer's acknowledgement while the state is idle: the
        // session is not at a safe point until it is relayed.
        self.draining
            && self.state.is_idle()
            && !self.cache_side.write_through_running()
            && self.to_client.is_empty()
            && self.to_upstream.is_empty()
            && self.cbuf.is_empty()
            && self.c_stream_left == 0
    }

    /// The cache's own work: a plan the held frame waits for, a fill or shared-tier wait, a
    /// held acknowledgement, the settings probe (injected upstream only while the session is
    /// idle); then the held client frames go on if nothing blocks them. True on progress.
    fn poll_own_work(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        if let Some(fut) = self.pending_plan.as_mut()
            && let Poll::Ready(plan) = fut.as_mut().poll(cx)
        {
            self.pending_plan = None;
            self.cache_side.plan_ready(plan);
            progress = true;
        }
        if self.background_plan.is_none() {
            self.background_plan = self.cache_side.background_plan();
        }
        if let Some(fut) = self.background_plan.as_mut()
            && fut.as_mut().poll(cx).is_ready()
        {
            self.background_plan = None;
            progress = true;
        }
        if let Some(fut) = self.pending_wait.as_mut()
            && let Poll::Ready(result) = fut.as_mut().poll(cx)
        {
            self.pending_wait = None;
            self.cache_side.wait_done(result);
            progress = true;
        }
        if let Some(fut) = self.pending_ack.as_mut()
            && let Poll::Ready(()) = fut.as_mut().poll(cx)
        {
            self.pending_ack = None;
            self.cache_side.ack_done();
            self.process_upstream();
            progress = true;
        }
        if let Some(fut) = self.pending_names.as_mut()
            && let Poll::Ready(names) = fut.as_mut().poll(cx)
        {
            self.pending_names = None;
            self.cache_side.names_ready(names);
            progress = true;
        }
        if self.c_stream_left == 0 && self.pending_plan.is_none() && self.pending_wait.is_none() {
            match self.cache_side.probe_query(self.state) {
                ProbeStep::Idle => {}
                ProbeStep::Send(probe) => {
                    self.to_upstream.push(probe);
                    progress = true;
                }
                ProbeStep::Fetch(fut) => {
                    self.pending_names = Some(fut);
                    progress = true;
                }
            }
        }
        if self.client_paused && !self.client_blocked() {
            self.client_paused = false;
            self.process_client();
            progress = true;
        }
        progress
    }

    /// Reads from the client and from upstream, each only while its destination has room.
    /// True on progress.
    fn poll_reads(&mut self, cx: &mut Context<'_>) -> Result<bool, RelayError> {
        let mut progress = false;
        if !self.client_eof
            && self.to_upstream.has_room()
            && !self.client_paused
            && !self.client_blocked()
        {
            reserve_read(&mut self.cbuf);
            match tokio_util::io::poll_read_buf(Pin::new(&mut *self.client), cx, &mut self.cbuf) {
                Poll::Ready(Ok(0)) => {
                    self.client_eof = true;
                    self.ending = Some(RelayEnd::ClientClosed);
                    progress = true;
                }
                Poll::Ready(Ok(n)) => {
                    self.counters.bytes_in.add(n as u64);
                    if let Some((follow, _)) = self.follow.as_mut() {
                        follow.on_read();
                    }
                    self.process_client();
                    progress = true;
                }
                Poll::Ready(Err(e)) => return Err(RelayError::Client(e)),
                Poll::Pending => {}
            }
        }
        if self.ending.is_none() && self.to_client.has_room() && self.pending_ack.is_none() {
            reserve_read(&mut self.ubuf);
            match tokio_util::io::poll_read_buf(Pin::new(&mut *self.upstream), cx, &mut self.ubuf) {
                Poll::Ready(Ok(0)) => {
                    self.ending = Some(RelayEnd::UpstreamClosed {
                        fatal_relayed: self.fatal_relayed,
                    });
                    progress = true;
                }
                Poll::Ready(Ok(_)) => {
                    self.process_upstream();
                    progress = true;
                }
                Poll::Ready(Err(e)) => return Err(RelayError::Upstream(e)),
                Poll::Pending => {}
            }
        }
        Ok(progress)
    }

    /// At the end of a step with nothing left to do: the worker this session should move to,
    /// if it follows its client and this is a point where nothing is in flight.
    fn migration_due(&mut self) -> Option<usize> {
        let (follow, pool) = self.follow.as_mut()?;
        if !follow.due() {
            return None;
        }
        let quiet = self.ending.is_none()
            && !self.draining
            && !self.client_paused
            && self.pending_plan.is_none()
            && self.pending_wait.is_none()
            && self.pending_names.is_none()
            && self.pending_ack.is_none()
            && self.cbuf.is_empty()
            && self.ubuf.is_empty()
            && self.c_stream_left == 0
            && self.u_stream_left == 0
            && self.to_client.is_empty()
            && self.to_upstream.is_empty()
            && self.state.is_idle()
            && self.state.awaiting_ready() == 0
            && !self.cache_side.inspects_all_backend()
            // A forward's socket belongs to this worker's runtime.
            && self.cancels.as_deref().is_none_or(Deferral::idle);
        if !quiet {
            return None;
        }
        let target = self
            .client
            .incoming_cpu()
            .and_then(|cpu| pool.worker_on_cpu(cpu));
        follow.decide(target)
    }

    /// Whether a cancel request now would miss what the client waits for: pgmemo's own work
    /// is at the head of the upstream connection (the settings probe, or a Parse replayed on
    /// its own with its Sync after a cache hit), or pgmemo holds the client's frames back
    /// while nothing of the client's runs upstream (the probe's catalog read, a plan being
    /// computed). A statement waiting for another session's fill takes requests itself.
    fn own_work(&self) -> bool {
        self.cache_side.probing()
            || self.state.own_work_at_head()
            || (self.pending_plan.is_some() && !self.state.outstanding())
    }

    fn track_own_work(&mut self) {
        let busy = self.own_work();
        if let Some(d) = self.cancels.as_deref_mut() {
            d.own_work(busy);
        }
    }

    /// Routes the cancel requests held for the session (every one that arrives while the
    /// relay runs, see `session::deferred`) by where the client's work stands, and polls
    /// their forward. `quiet`: the step found nothing more to read or do, so a client with
    /// nothing outstanding has nothing left to cancel (the request goes to the idle
    /// backend). True on progress.
    fn route_cancels(&mut self, cx: &mut Context<'_>, quiet: bool) -> bool {
        // Once per step: the quiet pass comes right after the first in the same step, and a
        // request held in between has woken the task (it is collected on the next poll).
        if !quiet && let Some(d) = self.cancels.as_deref_mut() {
            d.collect(cx);
        }
        if self.cancels.as_deref().is_none_or(Deferral::idle) {
            return false;
        }
        let busy = self.own_work();
        // A repeat needs the group alone upstream: nothing queued behind it either.
        let sole = self
            .state
            .sole_group()
            .filter(|_| self.to_upstream.is_empty());
        let work = if self.pending_wait.is_some() {
            ClientWork::HeldBack
        } else if self.state.outstanding() && !busy {
            ClientWork::Upstream { sole }
        } else if !quiet
            || self.client_paused
            || self.pending_plan.is_some()
            || !self.cbuf.is_empty()
            || self.c_stream_left > 0
        {
            ClientWork::Pending
        } else {
            ClientWork::Done
        };
        let Some(d) = self.cancels.as_deref_mut() else {
            return false;
        };
        if d.armed() && !busy {
            d.route(work);
        }
        d.poll_forward(cx, sole)
    }

    /// Client frames wait while a plan is computed, the settings probe is in flight, or a
    /// held cancel request is being forwarded (it must not reach a later statement).
    fn client_blocked(&self) -> bool {
        self.pending_plan.is_some()
            || self.pending_wait.is_some()
            || self.cache_side.probing()
            || self.cancels.as_deref().is_some_and(Deferral::forwarding)
    }

    fn begin_shutdown(&mut self) {
        self.to_client.push(ClientError::admin_shutdown().encode());
        self.to_upstream.push(response::terminate());
        self.ending = Some(RelayEnd::Shutdown);
    }
}

fn reserve_read(buf: &mut BytesMut) {
    let spare = buf.capacity() - buf.len();
    if spare < MIN_READ / 2 {
        // Grow with the data in flight: a full buffer means a burst, so read more at once.
        let want = (buf.capacity() * 2).clamp(MIN_READ, MAX_KEEP);
        buf.reserve(want);
    }
}

fn shrink_if_idle(buf: &mut BytesMut) {
    if buf.is_empty() && buf.capacity() > MAX_KEEP {
        *buf = BytesMut::new();
    }
}
