//! Raw PostgreSQL wire messages for tests that must control the bytes a driver would hide:
//! SSLRequest / GSSENCRequest answers, direct TLS, and reading backend frames one by one.
#![allow(dead_code)]

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Protocol 3.0.
const PROTOCOL_3_0: i32 = 196_608;
const SSL_REQUEST_CODE: i32 = 80_877_103;
const GSSENC_REQUEST_CODE: i32 = 80_877_104;
/// Largest backend frame these tests expect (startup and tiny queries only).
const MAX_FRAME: usize = 1 << 20;
/// Bound on any single read in these tests.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// One backend message: its type byte and body (length word stripped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub tag: u8,
    pub body: Vec<u8>,
}

impl Frame {
    /// For 'R' frames: the authentication request code.
    pub fn auth_code(&self) -> Option<i32> {
        (self.tag == b'R')
            .then(|| self.body.get(..4)?.try_into().ok().map(i32::from_be_bytes))
            .flatten()
    }

    /// For 'E'/'N' frames: the value of field `code` (e.g. b'C' for SQLSTATE, b'M').
    pub fn field(&self, code: u8) -> Option<String> {
        let mut rest = self.body.as_slice();
        while let Some((&t, tail)) = rest.split_first() {
            if t == 0 {
                break;
            }
            let end = tail.iter().position(|&b| b == 0)?;
            if t == code {
                return Some(String::from_utf8_lossy(&tail[..end]).into_owned());
            }
            rest = &tail[end + 1..];
        }
        None
    }
}

fn untagged(code: i32, body: &[u8]) -> Vec<u8> {
    let len = i32::try_from(8 + body.len()).expect("packet length");
    let mut out = Vec::with_capacity(8 + body.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(body);
    out
}

pub fn ssl_request() -> Vec<u8> {
    untagged(SSL_REQUEST_CODE, &[])
}

pub fn gssenc_request() -> Vec<u8> {
    untagged(GSSENC_REQUEST_CODE, &[])
}

/// A protocol 3.0 StartupMessage for `user` and `database`.
pub fn startup(user: &str, database: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for (k, v) in [("user", user), ("database", database)] {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    untagged(PROTOCOL_3_0, &body)
}

fn tagged(tag: u8, body: &[u8]) -> Vec<u8> {
    let len = i32::try_from(4 + body.len()).expect("message length");
    let mut out = vec![tag];
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// A simple-protocol Query.
pub fn query(sql: &str) -> Vec<u8> {
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    tagged(b'Q', &body)
}

pub fn terminate() -> Vec<u8> {
    tagged(b'X', &[])
}

pub async fn send<S: AsyncWrite + Unpin>(s: &mut S, bytes: &[u8]) {
    s.write_all(bytes).await.expect("write to server");
    s.flush().await.expect("flush to server");
}

/// Reads the single-byte answer to an SSLRequest or GSSENCRequest.
pub async fn read_answer_byte<S: AsyncRead + Unpin>(s: &mut S) -> u8 {
    tokio::time::timeout(READ_TIMEOUT, s.read_u8())
        .await
        .expect("no answer to the negotiation request within the timeout")
        .expect("read the negotiation answer")
}

/// Reads one frame; `Ok(None)` on a clean EOF before the first byte.
pub async fn read_frame<S: AsyncRead + Unpin>(s: &mut S) -> std::io::Result<Option<Frame>> {
    let mut head = [0u8; 5];
    match tokio::time::timeout(READ_TIMEOUT, s.read_exact(&mut head)).await {
        Err(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no frame",
            ));
        }
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(_)) => {}
    }
    let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]);
    let len = usize::try_from(len)
        .ok()
        .filter(|&n| (4..=MAX_FRAME).contains(&n))
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "bad frame length"))?;
    let mut body = vec![0u8; len - 4];
    tokio::time::timeout(READ_TIMEOUT, s.read_exact(&mut body))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "frame body"))??;
    Ok(Some(Frame { tag: head[0], body }))
}

/// Reads frames up to and including ReadyForQuery (or an ErrorResponse during startup);
/// panics on EOF or timeout.
pub async fn read_until_ready<S: AsyncRead + Unpin>(s: &mut S) -> Vec<Frame> {
    let mut frames = Vec::new();
    loop {
        let frame = read_frame(s)
            .await
            .expect("read frame")
            .unwrap_or_else(|| panic!("connection closed after {frames:?}"));
        let done = frame.tag == b'Z';
        frames.push(frame);
        if done {
            return frames;
        }
    }
}

/// Logs in as a trust user over `s` and runs `SELECT 1`, asserting the answer; the proof
/// that a full session works over whatever transport `s` is.
pub async fn trust_login_and_select_one<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    user: &str,
    database: &str,
) {
    send(s, &startup(user, database)).await;
    let first = read_frame(s)
        .await
        .expect("read the first frame after StartupMessage")
        .expect("connection closed right after StartupMessage");
    assert_eq!(
        first.auth_code(),
        Some(0),
        "expected AuthenticationOk, got {first:?}"
    );
    let rest = read_until_ready(s).await;
    assert!(
        rest.iter().any(|f| f.tag == b'K'),
        "no BackendKeyData in {rest:?}"
    );
    send(s, &query("SELECT 1 AS one")).await;
    let answer = read_until_ready(s).await;
    let tags: Vec<u8> = answer.iter().map(|f| f.tag).collect();
    assert_eq!(
        tags,
        b"TDCZ".to_vec(),
        "unexpected answer to SELECT 1: {answer:?}"
    );
    assert_eq!(
        answer[1].body,
        b"\0\x01\0\0\0\x011".to_vec(),
        "DataRow of SELECT 1"
    );
    send(s, &terminate()).await;
}
