//! Runs one conversation on one raw connection and records every frame the server sends,
//! step by step. What to read is decided from the protocol, never from timing: each
//! message's reply ends with a known frame (ParseComplete, BindComplete, RowDescription or
//! NoData, CommandComplete / EmptyQueryResponse / PortalSuspended, CloseComplete,
//! ReadyForQuery), an ErrorResponse ends an extended message's reply and makes the server
//! skip everything but Sync (a simple Query included), and a Flush needs no reply. So a
//! Flush-ended pipeline is read exactly as far as the server must have answered it; the
//! per-frame timeout only catches a side that answers nothing. A cancel step's statement
//! (`pg_sleep(30)`) gets a CancelRequest (with the session's BackendKeyData) every 200 ms until
//! its reply starts, each sent only once the previous cancel connection closed (the request
//! was delivered): a request that reaches the backend before the statement does is ignored
//! there and the next one cancels it, and none is left to hit the next step.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pgmemo::protocol::startup::encode_startup;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::conversation::{Conversation, Step};
use super::msg::{self, Ends, Msg};

/// Largest frame accepted from a server (the fixture's results are tiny).
const MAX_FRAME: usize = 16 << 20;

/// How a side's run stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Nothing arrived within the frame timeout.
    TimedOut,
    /// The server closed the connection.
    Closed,
    /// A frame with an impossible length.
    Garbled,
}

/// Frames received for one step (or the startup), and how the run stopped if it did.
#[derive(Debug, Clone, Default)]
pub struct Reply {
    pub frames: Vec<Bytes>,
    pub end: Option<End>,
}

/// Everything one side sent back during a conversation.
#[derive(Debug, Clone, Default)]
pub struct Transcript {
    /// One per session, in session order.
    pub startup: Vec<Reply>,
    pub steps: Vec<Reply>,
}

/// Where a conversation runs: a server (pgmemo or PostgreSQL) and a database.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub db: String,
}

struct Conn {
    io: BufReader<TcpStream>,
    addr: SocketAddr,
    /// BackendKeyData's body (pid and secret), for CancelRequests.
    key: Vec<u8>,
    /// An extended message failed and no Sync came since: the server skips all but Sync.
    skipping: bool,
    timeout: Duration,
}

impl Conn {
    async fn read(&mut self) -> Result<Bytes, End> {
        match tokio::time::timeout(self.timeout, read_frame(&mut self.io)).await {
            Err(_) => Err(End::TimedOut),
            Ok(r) => r,
        }
    }
}

async fn read_frame(io: &mut BufReader<TcpStream>) -> Result<Bytes, End> {
    let mut head = [0u8; 5];
    io.read_exact(&mut head).await.map_err(|_| End::Closed)?;
    let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]);
    let len = usize::try_from(len)
        .ok()
        .filter(|l| (4..=MAX_FRAME).contains(l))
        .ok_or(End::Garbled)?;
    let mut frame = BytesMut::with_capacity(len + 1);
    frame.extend_from_slice(&head);
    frame.resize(len + 1, 0);
    io.read_exact(&mut frame[5..])
        .await
        .map_err(|_| End::Closed)?;
    Ok(frame.freeze())
}

/// Runs `conv` as `user` on `target` and records the replies. Never panics on what the
/// server sends: a side that misbehaves shows as an early `End`.
pub async fn run(
    target: &Target,
    user: &str,
    conv: &Conversation,
    timeout: Duration,
) -> Transcript {
    run_steps(target, user, &conv.steps, timeout).await
}

pub async fn run_steps(
    target: &Target,
    user: &str,
    steps: &[Step],
    timeout: Duration,
) -> Transcript {
    let mut t = Transcript::default();
    let sessions = steps
        .iter()
        .map(|s| usize::from(s.session))
        .max()
        .unwrap_or(0)
        + 1;
    let mut conns = Vec::with_capacity(sessions);
    for _ in 0..sessions {
        let (reply, conn) = open(target, user, timeout).await;
        let failed = reply.end.is_some();
        t.startup.push(reply);
        match conn {
            Some(c) if !failed => conns.push(c),
            _ => return t,
        }
    }
    for step in steps {
        let Some(c) = conns.get_mut(usize::from(step.session)) else {
            break;
        };
        let reply = run_step(c, step).await;
        let stop = reply.end.is_some();
        t.steps.push(reply);
        if stop {
            break;
        }
    }
    for c in &mut conns {
        let _ = c.io.get_mut().write_all(&[b'X', 0, 0, 0, 4]).await;
    }
    t
}

/// Connects and logs in; the startup reply, and the session if it is ready for queries.
async fn open(target: &Target, user: &str, timeout: Duration) -> (Reply, Option<Conn>) {
    let mut reply = Reply::default();
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(target.addr)).await {
        Ok(Ok(s)) => s,
        _ => {
            reply.end = Some(End::Closed);
            return (reply, None);
        }
    };
    let _ = stream.set_nodelay(true);
    let mut c = Conn {
        io: BufReader::with_capacity(64 << 10, stream),
        addr: target.addr,
        key: Vec::new(),
        skipping: false,
        timeout,
    };
    let startup = encode_startup(3, 0, &[("user", user), ("database", &target.db)]);
    if c.io.get_mut().write_all(&startup).await.is_err() {
        reply.end = Some(End::Closed);
        return (reply, None);
    }
    loop {
        match c.read().await {
            Ok(f) => {
                let tag = f[0];
                if tag == b'K' {
                    c.key = f.get(5..).unwrap_or_default().to_vec();
                }
                reply.frames.push(f);
                if tag == b'Z' {
                    return (reply, Some(c));
                }
                if tag == b'E' {
                    reply.end = Some(End::Closed);
                    return (reply, None);
                }
            }
            Err(e) => {
                reply.end = Some(e);
                return (reply, None);
            }
        }
    }
}

async fn run_step(c: &mut Conn, step: &Step) -> Reply {
    let mut reply = Reply::default();
    let mut out = Vec::new();
    for m in &step.msgs {
        m.encode(&mut out);
    }
    if c.io.get_mut().write_all(&out).await.is_err() {
        reply.end = Some(End::Closed);
        return reply;
    }
    if step.cancel {
        cancel_until_answered(c).await;
    }
    let mut copy_sent = false;
    for m in &step.msgs {
        if c.skipping && !m.is_sync() {
            continue;
        }
        let ends = m.ends();
        if ends == Ends::Nothing {
            continue;
        }
        loop {
            let f = match c.read().await {
                Ok(f) => f,
                Err(e) => {
                    reply.end = Some(e);
                    return reply;
                }
            };
            let tag = f[0];
            reply.frames.push(f);
            match tag {
                b'G' => {
                    // CopyInResponse: send the step's data once, else refuse.
                    let mut data = Vec::new();
                    match (&step.copy, copy_sent) {
                        (Some(copy), false) => {
                            for chunk in &copy.chunks {
                                msg::copy_data(&mut data, chunk);
                            }
                            if copy.fail {
                                msg::copy_fail(&mut data, "generated CopyFail");
                            } else {
                                msg::copy_done(&mut data);
                            }
                            copy_sent = true;
                        }
                        _ => msg::copy_fail(&mut data, "no data for this COPY"),
                    }
                    if c.io.get_mut().write_all(&data).await.is_err() {
                        reply.end = Some(End::Closed);
                        return reply;
                    }
                }
                b'E' if !matches!(m, Msg::Query(_) | Msg::Sync | Msg::FunctionCall { .. }) => {
                    c.skipping = true;
                    break;
                }
                b'Z' if ends == Ends::Ready => {
                    c.skipping = false;
                    break;
                }
                t => {
                    if let Ends::OneOf(tags) = ends
                        && tags.contains(&t)
                    {
                        break;
                    }
                }
            }
        }
    }
    reply
}

/// Sends CancelRequests (one at a time, each awaited until its connection closes) until the
/// first reply frame is buffered, at most 50 times.
async fn cancel_until_answered(c: &mut Conn) {
    for _ in 0..50 {
        let ready = tokio::time::timeout(Duration::from_millis(200), c.io.fill_buf()).await;
        if matches!(ready, Ok(Ok(buf)) if !buf.is_empty()) || matches!(ready, Ok(Err(_))) {
            return;
        }
        let Ok(Ok(mut s)) =
            tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(c.addr)).await
        else {
            return;
        };
        let mut req = Vec::with_capacity(8 + c.key.len());
        req.extend_from_slice(&((8 + c.key.len()) as i32).to_be_bytes());
        req.extend_from_slice(&80_877_102i32.to_be_bytes());
        req.extend_from_slice(&c.key);
        if s.write_all(&req).await.is_err() {
            continue;
        }
        let mut sink = [0u8; 64];
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read(&mut sink)).await;
    }
}
