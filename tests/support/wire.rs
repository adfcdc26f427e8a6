//! Raw wire-protocol client helpers for tests that must send what no driver would (garbage,
//! oversized frames, protocol 3.2, unknown tags) and see every byte that comes back.
//! Included by path (`#[path = "support/wire.rs"] mod wire;`); each test uses a part of it.
#![allow(dead_code)]

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pgmemo::protocol::startup::encode_startup;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest frame these helpers accept from the proxy (tests never expect more).
const MAX_TEST_FRAME: usize = 16 << 20;
pub const CANCEL_REQUEST_CODE: i32 = 80_877_102;

/// What a read of one frame produced.
#[derive(Debug)]
pub enum Read {
    Frame(Bytes),
    /// The peer closed the connection (EOF or reset).
    Closed,
    /// Nothing complete arrived within the time allowed.
    TimedOut,
}

/// Connects to `addr` with TCP_NODELAY.
pub async fn connect(addr: SocketAddr) -> TcpStream {
    let s = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr))
        .await
        .unwrap_or_else(|_| panic!("connect {addr}: timed out"))
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_nodelay(true).expect("set_nodelay");
    s
}

/// Reads one tagged frame (tag, length, body) within `timeout`.
pub async fn read_frame(s: &mut TcpStream, timeout: Duration) -> Read {
    match tokio::time::timeout(timeout, read_frame_inner(s)).await {
        Err(_) => Read::TimedOut,
        Ok(Ok(Some(frame))) => Read::Frame(frame),
        Ok(Ok(None)) => Read::Closed,
        Ok(Err(e)) if is_close(&e) => Read::Closed,
        Ok(Err(e)) => panic!("reading a frame from the proxy: {e}"),
    }
}

async fn read_frame_inner(s: &mut TcpStream) -> io::Result<Option<Bytes>> {
    let mut head = [0u8; 5];
    match s.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]);
    let len = usize::try_from(len)
        .ok()
        .filter(|l| (4..=MAX_TEST_FRAME).contains(l))
        .unwrap_or_else(|| panic!("proxy sent a frame with bad length {len} (tag {})", head[0]));
    let mut frame = BytesMut::with_capacity(len + 1);
    frame.extend_from_slice(&head);
    frame.resize(len + 1, 0);
    s.read_exact(&mut frame[5..]).await?;
    Ok(Some(frame.freeze()))
}

/// EOF, reset or broken pipe: the peer is gone.
pub fn is_close(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

/// Reads frames until the peer closes; panics if it is still open after `timeout`.
pub async fn frames_until_closed(s: &mut TcpStream, timeout: Duration) -> Vec<Bytes> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut frames = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match read_frame(s, left).await {
            Read::Frame(f) => frames.push(f),
            Read::Closed => return frames,
            Read::TimedOut => panic!(
                "connection still open after {timeout:?}; frames so far: {:?}",
                frames.iter().map(|f| describe(f)).collect::<Vec<_>>()
            ),
        }
    }
}

/// Reads frames up to and including ReadyForQuery; panics on close, timeout or ErrorResponse.
pub async fn frames_until_ready(s: &mut TcpStream, timeout: Duration) -> Vec<Bytes> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut frames = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match read_frame(s, left).await {
            Read::Frame(f) => {
                let tag = f[0];
                if tag == b'E' {
                    panic!("unexpected error from the proxy: {}", describe(&f));
                }
                frames.push(f);
                if tag == b'Z' {
                    return frames;
                }
            }
            other => panic!(
                "expected frames up to ReadyForQuery, got {other:?} after {:?}",
                frames.iter().map(|f| describe(f)).collect::<Vec<_>>()
            ),
        }
    }
}

/// A session through the proxy as `user` (trust auth), ready for queries.
pub async fn trust_session(addr: SocketAddr, user: &str, db: &str) -> TcpStream {
    let mut s = connect(addr).await;
    s.write_all(&encode_startup(3, 0, &[("user", user), ("database", db)]))
        .await
        .expect("send startup");
    frames_until_ready(&mut s, Duration::from_secs(10)).await;
    s
}

/// A tagged frame.
pub fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(tag);
    out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// A simple Query frame.
pub fn query(sql: &str) -> Vec<u8> {
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    frame(b'Q', &body)
}

/// A CancelRequest packet carrying `key` (pid followed by the secret).
pub fn cancel_request(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + key.len());
    out.extend_from_slice(&((8 + key.len()) as i32).to_be_bytes());
    out.extend_from_slice(&CANCEL_REQUEST_CODE.to_be_bytes());
    out.extend_from_slice(key);
    out
}

/// Sends a CancelRequest to `addr` and waits (bounded) for the other side to close.
pub async fn send_cancel(addr: SocketAddr, key: &[u8]) {
    let mut s = connect(addr).await;
    s.write_all(&cancel_request(key))
        .await
        .expect("send cancel");
    let mut sink = [0u8; 64];
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read(&mut sink)).await;
}

/// The (code, value) fields of an ErrorResponse or NoticeResponse.
pub fn fields(frame: &[u8]) -> Vec<(u8, String)> {
    let mut out = Vec::new();
    let mut rest = frame.get(5..).unwrap_or_default();
    while let Some((&code, tail)) = rest.split_first() {
        if code == 0 {
            break;
        }
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        out.push((code, String::from_utf8_lossy(&tail[..end]).into_owned()));
        rest = tail.get(end + 1..).unwrap_or_default();
    }
    out
}

pub fn field(frame: &[u8], code: u8) -> Option<String> {
    fields(frame)
        .into_iter()
        .find(|(c, _)| *c == code)
        .map(|(_, v)| v)
}

/// The first ErrorResponse among `frames`.
pub fn first_error(frames: &[Bytes]) -> Option<&Bytes> {
    frames.iter().find(|f| f.first() == Some(&b'E'))
}

/// Human-readable summary of a frame for assertion messages.
pub fn describe(f: &[u8]) -> String {
    match f.first() {
        Some(b'E') | Some(b'N') => format!("{}{:?}", char::from(f[0]), fields(f)),
        Some(&t) => format!("{}({} bytes)", char::from(t), f.len()),
        None => "<empty>".into(),
    }
}

/// Garbage inputs, reproducible from a seed.
pub struct Garbage(pgmemo::rng::Rng);

impl Garbage {
    pub fn new(seed: u64) -> Self {
        Garbage(pgmemo::rng::Rng::new(seed))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        self.0.bytes(n)
    }
}

/// Reads raw bytes until the peer closes; panics if it is still open after `timeout`.
pub async fn bytes_until_closed(s: &mut TcpStream, timeout: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if is_close(&e) => return,
                Err(e) => panic!("reading from the proxy: {e}"),
            }
        }
    };
    if tokio::time::timeout(timeout, read).await.is_err() {
        panic!("connection still open after {timeout:?}");
    }
    out
}

/// Splits complete tagged frames; panics on a truncated or malformed tail.
pub fn split_frames(mut bytes: &[u8]) -> Vec<Bytes> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let len = bytes
            .get(1..5)
            .map(|l| i32::from_be_bytes([l[0], l[1], l[2], l[3]]))
            .unwrap_or_else(|| panic!("truncated frame header {bytes:?}"));
        let total = usize::try_from(len)
            .ok()
            .filter(|l| *l >= 4)
            .map(|l| l + 1)
            .unwrap_or_else(|| panic!("bad frame length {len}"));
        let frame = bytes
            .get(..total)
            .unwrap_or_else(|| panic!("truncated frame {bytes:?}"));
        out.push(Bytes::copy_from_slice(frame));
        bytes = &bytes[total..];
    }
    out
}
