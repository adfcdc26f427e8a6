//! The background executor's upstream connections (issue 19): a refresh re-runs a client's
//! request as that client would have, so it needs a connection logged in with exactly the
//! client's database, role and startup parameters ([`LoginKey`]). [`Pool`] keeps a bounded
//! number of such connections in total, reuses an idle one of the same key, and makes room
//! for another key by closing the least recently used idle connection. A connection goes
//! back to the idle list only when its user says so ([`PooledConn::release_clean`]) and it is
//! idle on the wire; anything else is closed, so a refresh that failed midway leaves no
//! state (an open transaction, a pending result, a changed setting) for the next one.
//!
//! [`run`] sends one sync group and collects its answer, bounded in bytes and time.

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::protocol::FrameError;
use crate::protocol::tags::{backend, frontend};
use crate::upstream::Upstream;
use crate::upstream::login::{BackendConn, LoginError, ReadError, login};

/// What a background connection is logged in as: connections are shared only between
/// requests of exactly the same key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LoginKey {
    pub database: String,
    pub user: String,
    /// The client session's startup parameters, in order (`user`/`database` among them are
    /// not sent again).
    pub params: Vec<(String, String)>,
}

impl LoginKey {
    /// Bytes it holds (for the bounds of what keeps it).
    pub fn bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.database.len()
            + self.user.len()
            + self
                .params
                .iter()
                .map(|(n, v)| n.len() + v.len() + 48)
                .sum::<usize>()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error(transparent)]
    Login(#[from] LoginError),
    #[error("no background connection became free within {0:?}")]
    Timeout(Duration),
}

/// Why [`run`] failed. Every variant but `Request` leaves the connection unusable (it is
/// marked so, and [`PooledConn::release_clean`] then closes it).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("background request is not frontend frames ending with its only Sync")]
    Request,
    #[error("background request: {0}")]
    Io(#[from] std::io::Error),
    #[error("background request: {0}")]
    Read(#[from] ReadError),
    #[error("background request's answer exceeds {0} bytes")]
    TooLarge(usize),
    #[error("background request did not complete within {0:?}")]
    Timeout(Duration),
}

/// A bounded pool of logged-in background connections. Cheap to clone (shared state).
#[derive(Clone)]
pub struct Pool {
    shared: Arc<Shared>,
}

struct Shared {
    upstream: Arc<Upstream>,
    max_connections: usize,
    idle_timeout: Duration,
    connect_timeout: Duration,
    state: Mutex<State>,
    /// Woken when a connection is returned or closed (a slot or an idle one is free).
    freed: Notify,
}

#[derive(Default)]
struct State {
    /// Connections that exist: idle, in use, or being opened.
    open: usize,
    /// Oldest return first.
    idle: Vec<Idle>,
}

struct Idle {
    key: LoginKey,
    conn: BackendConn,
    since: Instant,
}

/// What `get` does after looking at the state.
enum Step {
    Reuse(BackendConn),
    /// A slot is reserved; the idle connection of another key it came from, if any, goes.
    Open(Option<BackendConn>),
    Wait,
}

/// A step with its accounting held by guards.
enum Next {
    Ready(PooledConn),
    Open(Slot, Option<BackendConn>),
    Wait,
}

impl Pool {
    pub fn new(
        upstream: Arc<Upstream>,
        max_connections: usize,
        idle_timeout: Duration,
        connect_timeout: Duration,
    ) -> Pool {
        Pool {
            shared: Arc::new(Shared {
                upstream,
                max_connections,
                idle_timeout,
                connect_timeout,
                state: Mutex::new(State::default()),
                freed: Notify::new(),
            }),
        }
    }

    /// Connections that exist (idle, in use, or being opened).
    pub fn open(&self) -> usize {
        self.shared.lock().open
    }

    /// Idle connections.
    pub fn idle(&self) -> usize {
        self.shared.lock().idle.len()
    }

    /// A connection logged in as `key`: an idle one of that key, else a new one (below the
    /// bound, or in place of the least recently used idle one of another key), else the
    /// first to become free within the connect timeout. `password` is used only to open.
    pub async fn get(
        &self,
        key: &LoginKey,
        password: Option<&str>,
    ) -> Result<PooledConn, PoolError> {
        let shared = &self.shared;
        let deadline = Instant::now() + shared.connect_timeout;
        loop {
            let freed = shared.freed.notified();
            tokio::pin!(freed);
            let (step, expired) = {
                let mut state = shared.lock();
                let expired = state.expire(shared.idle_timeout);
                // Registered before the lock is released: a connection freed from now on wakes
                // this waiter.
                freed.as_mut().enable();
                (state.step(key, shared.max_connections), expired)
            };
            // Guards first, so a cancelled `get` gives back what it took.
            let next = match step {
                Step::Reuse(conn) => Next::Ready(PooledConn::new(shared, key, conn)),
                Step::Open(evicted) => Next::Open(Slot(Some(shared.clone())), evicted),
                Step::Wait => Next::Wait,
            };
            for conn in expired {
                conn.terminate().await;
            }
            match next {
                Next::Ready(conn) => return Ok(conn),
                Next::Open(slot, evicted) => {
                    if let Some(old) = evicted {
                        old.terminate().await;
                    }
                    let conn = login(
                        &shared.upstream,
                        &key.user,
                        password,
                        &key.database,
                        &key.params,
                        shared.connect_timeout,
                    )
                    .await?;
                    slot.keep();
                    return Ok(PooledConn::new(shared, key, conn));
                }
                Next::Wait => {
                    if tokio::time::timeout_at(deadline, freed).await.is_err() {
                        return Err(PoolError::Timeout(shared.connect_timeout));
                    }
                }
            }
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    /// Takes out the idle connections older than `timeout` (they no longer count as open).
    fn expire(&mut self, timeout: Duration) -> Vec<BackendConn> {
        let now = Instant::now();
        let (old, young): (Vec<Idle>, Vec<Idle>) = std::mem::take(&mut self.idle)
            .into_iter()
            .partition(|i| now.saturating_duration_since(i.since) > timeout);
        self.idle = young;
        self.open -= old.len();
        old.into_iter().map(|i| i.conn).collect()
    }

    fn step(&mut self, key: &LoginKey, max: usize) -> Step {
        // The most recently returned of the key: the others age out when demand drops.
        if let Some(i) = self.idle.iter().rposition(|i| &i.key == key) {
            return Step::Reuse(self.idle.remove(i).conn);
        }
        if self.open < max {
            self.open += 1;
            return Step::Open(None);
        }
        if !self.idle.is_empty() {
            // All idle connections are of other keys: the least recently used makes room,
            // its slot passing to the new connection.
            return Step::Open(Some(self.idle.remove(0).conn));
        }
        Step::Wait
    }
}

/// One counted connection slot: dropped without [`Slot::keep`], it is given back.
struct Slot(Option<Arc<Shared>>);

impl Slot {
    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(shared) = self.0.take() {
            shared.lock().open -= 1;
            shared.freed.notify_waiters();
        }
    }
}

/// A connection taken from the [`Pool`]. Dropped, it is closed; [`PooledConn::release_clean`]
/// returns it to the idle list instead (when it is idle on the wire).
pub struct PooledConn {
    conn: Option<BackendConn>,
    key: LoginKey,
    shared: Arc<Shared>,
}

impl PooledConn {
    fn new(shared: &Arc<Shared>, key: &LoginKey, conn: BackendConn) -> PooledConn {
        PooledConn {
            conn: Some(conn),
            key: key.clone(),
            shared: shared.clone(),
        }
    }

    pub fn key(&self) -> &LoginKey {
        &self.key
    }

    /// Gives the connection back for reuse by the same key, if it is reusable (no error
    /// seen, every ReadyForQuery read, no transaction open); otherwise closes it.
    pub fn release_clean(mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        if !conn.is_reusable() {
            self.conn = Some(conn);
            return; // Drop closes it.
        }
        let key = self.key.clone();
        self.shared.lock().idle.push(Idle {
            key,
            conn,
            since: Instant::now(),
        });
        self.shared.freed.notify_waiters();
    }
}

impl Deref for PooledConn {
    type Target = BackendConn;

    fn deref(&self) -> &BackendConn {
        // Always `Some` until `release_clean` consumes the guard.
        self.conn.as_ref().unwrap_or_else(|| unreachable!())
    }
}

impl DerefMut for PooledConn {
    fn deref_mut(&mut self) -> &mut BackendConn {
        self.conn.as_mut().unwrap_or_else(|| unreachable!())
    }
}

impl Drop for PooledConn {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            // Closed with the socket; the slot is free.
            drop(conn);
            drop(Slot(Some(self.shared.clone())));
        }
    }
}

/// Sends `request` (frontend frames whose last, and only, Sync ends them) and collects every
/// backend frame up to and including ReadyForQuery, as their original bytes. An
/// ErrorResponse is part of the answer, not an error. Fails when the answer's bytes would
/// exceed `max_bytes`, or on `timeout`: the connection is then marked unusable (frames are
/// left unread), and [`PooledConn::release_clean`] closes it.
pub async fn run(
    conn: &mut BackendConn,
    request: &[u8],
    max_bytes: usize,
    timeout: Duration,
) -> Result<Vec<Bytes>, RunError> {
    if !one_sync_at_end(request) {
        return Err(RunError::Request);
    }
    let work = async {
        conn.send(request).await?;
        let mut frames = Vec::new();
        let mut total = 0usize;
        loop {
            let left = max_bytes - total;
            let frame = conn.next_frame(left).await.map_err(|e| match e {
                ReadError::Frame(FrameError::TooLarge { len, .. }) if len > left => {
                    RunError::TooLarge(max_bytes)
                }
                e => RunError::Read(e),
            })?;
            total += frame.bytes.len();
            let last = frame.tag == backend::READY_FOR_QUERY;
            frames.push(frame.bytes);
            if last {
                return Ok(frames);
            }
        }
    };
    let r = tokio::time::timeout(timeout, work)
        .await
        .unwrap_or(Err(RunError::Timeout(timeout)));
    if r.is_err() {
        conn.mark_broken();
    }
    r
}

/// Whether `request` is whole frames with exactly one ReadyForQuery-producing frame, a Sync,
/// at the end.
fn one_sync_at_end(request: &[u8]) -> bool {
    let mut rest = request;
    let mut last = None;
    while !rest.is_empty() {
        let Ok(Some(h)) = crate::protocol::header(rest, usize::MAX) else {
            return false;
        };
        if last.is_some_and(|t| t == frontend::SYNC) {
            return false;
        }
        if matches!(h.tag, frontend::QUERY | frontend::FUNCTION_CALL) {
            return false;
        }
        last = Some(h.tag);
        let Some(next) = rest.get(h.total..) else {
            return false;
        };
        rest = next;
    }
    last == Some(frontend::SYNC)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::response::put_frame;

    #[test]
    fn a_request_ends_with_its_only_sync() {
        let mut ok = Vec::new();
        put_frame(&mut ok, b'P', &[b"\0SELECT 1\0", &[0, 0]]);
        put_frame(&mut ok, b'S', &[]);
        assert!(one_sync_at_end(&ok));

        let mut two = ok.clone();
        put_frame(&mut two, b'S', &[]);
        assert!(!one_sync_at_end(&two));
        assert!(!one_sync_at_end(&ok[..ok.len() - 5]));
        assert!(!one_sync_at_end(&ok[..ok.len() - 1]));
        assert!(!one_sync_at_end(b""));
        let mut query = Vec::new();
        put_frame(&mut query, b'Q', &[b"SELECT 1\0"]);
        put_frame(&mut query, b'S', &[]);
        assert!(!one_sync_at_end(&query));
    }
}
