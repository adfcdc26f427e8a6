//! A replication connection (`replication=database`) to one database: start-up and
//! authentication as pgmemo's side role (trust, cleartext, md5, SCRAM-SHA-256), simple-query
//! commands (SQL and replication commands such as `CREATE_REPLICATION_SLOT`), then the
//! CopyBoth stream of `START_REPLICATION`. Frames are bounded: of a frame longer than
//! [`KEEP_BYTES`] only the head is kept (pgoutput's change messages are decoded from their
//! first bytes only), the rest is read and discarded.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::UpstreamTarget;
use crate::net::Stream;
use crate::protocol::fields::Reader;
use crate::protocol::startup::encode_startup;
use crate::upstream::auth::{AuthError, Exchange, Step};
use crate::upstream::{ConnectError, Upstream};

/// The head of a frame that is kept; the rest of a longer one is skipped.
pub const KEEP_BYTES: usize = 1 << 20;
/// Most rows a command's result may have (pgmemo's own small queries).
const MAX_ROWS: usize = 10_000;
/// Largest frame accepted during start-up and commands (the stream's are skipped instead).
const MAX_COMMAND_FRAME: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("replication connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("server error {code}: {message}")]
    Server { code: String, message: String },
    #[error("replication connection: unexpected message {0:?}")]
    Unexpected(char),
    #[error("replication connection: malformed {0} message")]
    Malformed(&'static str),
    #[error("the server asks for {0} authentication, which pgmemo's side connection cannot do")]
    AuthUnsupported(String),
    #[error("the server asks for a password and upstream.url has none")]
    NoPassword,
    #[error("SCRAM authentication failed: {0}")]
    Scram(std::io::Error),
    #[error("the server closed the replication connection")]
    Closed,
    #[error("command result has more than {MAX_ROWS} rows")]
    TooManyRows,
}

impl From<AuthError> for ConnError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Unsupported(method) => Self::AuthUnsupported(method),
            AuthError::PasswordRequired => Self::NoPassword,
            AuthError::Scram(e) => Self::Scram(e),
            AuthError::Malformed(what) => Self::Malformed(what),
        }
    }
}

impl ConnError {
    /// The SQLSTATE of a server error.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Server { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// One frame from the server: its tag and (the kept head of) its body.
pub struct Frame {
    pub tag: u8,
    pub body: Bytes,
}

/// What arrives on the stream after `START_REPLICATION`.
pub enum StreamEvent {
    /// A CopyData payload (XLogData or keepalive).
    Data(Bytes),
    /// The server ended the stream (CopyDone) or the connection.
    End,
}

/// A row of a command result, as text (`None` = NULL).
pub type Row = Vec<Option<String>>;

pub struct ReplConn {
    stream: Stream,
    buf: BytesMut,
    /// Bytes of a long frame's tail still to be read and dropped.
    skip: usize,
    /// BackendKeyData: what a CancelRequest for this connection's backend carries.
    cancel_key: Option<(i32, Bytes)>,
}

impl ReplConn {
    /// Connects to `db` with `replication=database` and authenticates as the URL's role.
    pub async fn connect(
        upstream: &Upstream,
        target: &UpstreamTarget,
        db: &str,
        timeout: std::time::Duration,
    ) -> Result<ReplConn, ConnError> {
        let stream = upstream.connect(timeout).await?;
        let mut conn = ReplConn {
            stream,
            buf: BytesMut::with_capacity(8192),
            skip: 0,
            cancel_key: None,
        };
        let user = target.user.as_deref().unwrap_or("postgres");
        let startup = encode_startup(
            3,
            0,
            &[
                ("user", user),
                ("database", db),
                ("replication", "database"),
                ("application_name", "pgmemo-cdc"),
                ("client_encoding", "UTF8"),
            ],
        );
        let handshake = async {
            conn.stream.write_all(&startup).await?;
            conn.authenticate(user, target.password.as_deref()).await?;
            conn.until_ready().await
        };
        match tokio::time::timeout(timeout, handshake).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(ConnError::Connect(ConnectError::Timeout {
                    addr: upstream.address().to_owned(),
                    timeout,
                }));
            }
        }
        Ok(conn)
    }

    async fn authenticate(&mut self, user: &str, password: Option<&str>) -> Result<(), ConnError> {
        let mut auth = Exchange::new(user, password);
        loop {
            let frame = self.command_frame().await?;
            match frame.tag {
                b'R' => {}
                b'E' => return Err(server_error(&frame.body)),
                b'N' => continue,
                t => return Err(ConnError::Unexpected(char::from(t))),
            }
            match auth.step(&frame.body)? {
                Step::Done => return Ok(()),
                Step::Wait => {}
                Step::Reply(body) => self.send(b'p', &body).await?,
            }
        }
    }

    /// Reads until ReadyForQuery (after authentication).
    async fn until_ready(&mut self) -> Result<(), ConnError> {
        loop {
            let frame = self.command_frame().await?;
            match frame.tag {
                b'Z' => return Ok(()),
                b'E' => return Err(server_error(&frame.body)),
                b'K' => {
                    let mut r = Reader::new(&frame.body);
                    if let Some(pid) = r.i32() {
                        let key = Bytes::copy_from_slice(r.remaining());
                        self.cancel_key = Some((pid, key));
                    }
                }
                _ => {}
            }
        }
    }

    /// The backend's process ID and a CancelRequest packet for it (stops a command that
    /// waits, such as slot creation behind open transactions).
    pub fn cancel_request(&self) -> Option<(i32, Vec<u8>)> {
        let (pid, key) = self.cancel_key.as_ref()?;
        let len = i32::try_from(12 + key.len()).ok()?;
        let mut out = Vec::with_capacity(12 + key.len());
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&crate::protocol::startup::CANCEL_REQUEST_CODE.to_be_bytes());
        out.extend_from_slice(&pid.to_be_bytes());
        out.extend_from_slice(key);
        Some((*pid, out))
    }

    /// Runs one command (SQL or a replication command) and returns its rows as text. A
    /// server error is returned after the connection is ready again.
    pub async fn query(&mut self, sql: &str) -> Result<Vec<Row>, ConnError> {
        self.send_query(sql).await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let frame = self.command_frame().await?;
            match frame.tag {
                b'D' => {
                    if rows.len() >= MAX_ROWS {
                        error.get_or_insert(ConnError::TooManyRows);
                        continue;
                    }
                    rows.push(data_row(&frame.body)?);
                }
                b'E' => error = Some(server_error(&frame.body)),
                b'Z' => {
                    return match error {
                        Some(e) => Err(e),
                        None => Ok(rows),
                    };
                }
                _ => {}
            }
        }
    }

    async fn send_query(&mut self, sql: &str) -> Result<(), ConnError> {
        let mut body = sql.as_bytes().to_vec();
        body.push(0);
        self.send(b'Q', &body).await
    }

    /// Sends `START_REPLICATION ...` and waits for the CopyBoth response.
    pub async fn start_streaming(&mut self, command: &str) -> Result<(), ConnError> {
        self.send_query(command).await?;
        loop {
            let frame = self.command_frame().await?;
            match frame.tag {
                b'W' => return Ok(()),
                b'E' => {
                    let e = server_error(&frame.body);
                    // The ReadyForQuery that follows is not awaited: the connection is
                    // dropped by the caller.
                    return Err(e);
                }
                b'N' | b'S' => {}
                t => return Err(ConnError::Unexpected(char::from(t))),
            }
        }
    }

    /// The next stream event (cancel-safe: a partly read frame stays buffered).
    pub async fn next_event(&mut self) -> Result<StreamEvent, ConnError> {
        loop {
            let frame = self.frame(KEEP_BYTES).await?;
            match frame.tag {
                b'd' => return Ok(StreamEvent::Data(frame.body)),
                b'c' => return Ok(StreamEvent::End),
                b'E' => return Err(server_error(&frame.body)),
                _ => {}
            }
        }
    }

    /// The next stream event if it has arrived already, without waiting (lets the caller
    /// handle a burst of transactions as one batch).
    pub fn buffered_event(&mut self) -> Result<Option<StreamEvent>, ConnError> {
        while let Some(frame) = self.take_frame(KEEP_BYTES)? {
            match frame.tag {
                b'd' => return Ok(Some(StreamEvent::Data(frame.body))),
                b'c' => return Ok(Some(StreamEvent::End)),
                b'E' => return Err(server_error(&frame.body)),
                _ => {}
            }
        }
        Ok(None)
    }

    /// Sends one CopyData message.
    pub async fn send_copy_data(&mut self, payload: &[u8]) -> Result<(), ConnError> {
        self.send(b'd', payload).await
    }

    async fn send(&mut self, tag: u8, body: &[u8]) -> Result<(), ConnError> {
        let len = i32::try_from(body.len() + 4).map_err(|_| ConnError::Malformed("outgoing"))?;
        let mut out = BytesMut::with_capacity(body.len() + 5);
        out.put_u8(tag);
        out.put_i32(len);
        out.put_slice(body);
        self.stream.write_all(&out).await?;
        self.stream.flush().await?;
        Ok(())
    }

    async fn command_frame(&mut self) -> Result<Frame, ConnError> {
        let frame = self.frame(MAX_COMMAND_FRAME).await?;
        if frame.body.len() >= MAX_COMMAND_FRAME {
            return Err(ConnError::Malformed("oversized"));
        }
        Ok(frame)
    }

    /// Reads one frame, keeping at most `keep` bytes of its body. Cancel-safe: state lives
    /// in `self.buf` until the whole frame has arrived (a long frame's tail is consumed
    /// in place as it arrives, and only its kept head is buffered).
    async fn frame(&mut self, keep: usize) -> Result<Frame, ConnError> {
        loop {
            if let Some(frame) = self.take_frame(keep)? {
                return Ok(frame);
            }
            let n = self.stream.read_buf(&mut self.buf).await?;
            if n == 0 {
                return Err(ConnError::Closed);
            }
        }
    }

    fn take_frame(&mut self, keep: usize) -> Result<Option<Frame>, ConnError> {
        self.discard();
        if self.skip > 0 {
            return Ok(None);
        }
        let Some(header) = self.buf.get(..5) else {
            return Ok(None);
        };
        let tag = header.first().copied().unwrap_or(0);
        let len = Reader::new(header.get(1..).unwrap_or_default())
            .u32()
            .ok_or(ConnError::Malformed("frame"))? as usize;
        if len < 4 {
            return Err(ConnError::Malformed("frame length"));
        }
        let body_len = len - 4;
        if body_len <= keep {
            if self.buf.len() < 5 + body_len {
                self.buf.reserve(5 + body_len - self.buf.len());
                return Ok(None);
            }
            self.buf.advance(5);
            let body = self.buf.split_to(body_len).freeze();
            return Ok(Some(Frame { tag, body }));
        }
        // A long frame: hand out its head once it has arrived, then drop the tail as it
        // comes (`skip`), so at most `keep` bytes of it are ever buffered.
        if self.buf.len() < 5 + keep {
            self.buf.reserve(5 + keep - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(5);
        let head = self.buf.split_to(keep).freeze();
        self.skip = body_len - keep;
        self.discard();
        Ok(Some(Frame { tag, body: head }))
    }

    /// Drops what has arrived of a long frame's tail.
    fn discard(&mut self) {
        let n = self.skip.min(self.buf.len());
        self.buf.advance(n);
        self.skip -= n;
    }
}

fn data_row(body: &[u8]) -> Result<Row, ConnError> {
    let mut r = Reader::new(body);
    let n = r.i16().ok_or(ConnError::Malformed("DataRow"))?;
    let mut row = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
    for _ in 0..n {
        let len = r.i32().ok_or(ConnError::Malformed("DataRow"))?;
        if len < 0 {
            row.push(None);
        } else {
            let v = r
                .bytes(len as usize)
                .ok_or(ConnError::Malformed("DataRow"))?;
            row.push(Some(String::from_utf8_lossy(v).into_owned()));
        }
    }
    Ok(row)
}

/// An ErrorResponse's SQLSTATE and message.
fn server_error(body: &[u8]) -> ConnError {
    let mut r = Reader::new(body);
    let mut code = String::new();
    let mut message = String::new();
    while let Some(field) = r.u8().filter(|f| *f != 0) {
        let Some(value) = r.cstr() else { break };
        match field {
            b'C' => code = String::from_utf8_lossy(value).into_owned(),
            b'M' => message = String::from_utf8_lossy(value).into_owned(),
            _ => {}
        }
    }
    ConnError::Server { code, message }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        out.extend_from_slice(&u32::try_from(body.len() + 4).unwrap_or(0).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn pair() -> (ReplConn, tokio::net::UnixStream) {
        let (a, b) = tokio::net::UnixStream::pair().unwrap_or_else(|e| panic!("pair: {e}"));
        let conn = ReplConn {
            stream: Stream::Unix(a),
            buf: BytesMut::new(),
            skip: 0,
            cancel_key: None,
        };
        (conn, b)
    }

    #[tokio::test]
    async fn a_long_frame_keeps_only_its_head_and_the_next_frame_follows_intact() {
        let (mut conn, mut peer) = pair();
        let long: Vec<u8> = (0..KEEP_BYTES + 300_000).map(|i| (i % 251) as u8).collect();
        let mut bytes = frame(b'd', &long);
        bytes.extend(frame(b'd', b"after"));
        bytes.extend(frame(b'c', b""));
        // Written in odd-sized pieces, so frames and the skipped tail straddle reads.
        let writer = tokio::spawn(async move {
            for chunk in bytes.chunks(65_537) {
                peer.write_all(chunk).await.unwrap_or_default();
            }
            peer
        });
        match conn.next_event().await {
            Ok(StreamEvent::Data(head)) => {
                assert_eq!(head.len(), KEEP_BYTES);
                assert_eq!(head.as_ref(), long.get(..KEEP_BYTES).unwrap_or_default());
            }
            _ => panic!("expected the long frame's head"),
        }
        match conn.next_event().await {
            Ok(StreamEvent::Data(d)) => assert_eq!(d.as_ref(), b"after"),
            _ => panic!("expected the frame after the long one"),
        }
        assert!(matches!(conn.next_event().await, Ok(StreamEvent::End)));
        assert!(
            conn.buf.len() < KEEP_BYTES + 70_000,
            "the tail was never buffered"
        );
        drop(writer.await);
    }

    #[tokio::test]
    async fn malformed_frames_are_errors_not_panics() {
        let (mut conn, mut peer) = pair();
        peer.write_all(&[b'd', 0, 0, 0, 2])
            .await
            .unwrap_or_default();
        assert!(matches!(
            conn.next_event().await,
            Err(ConnError::Malformed(_))
        ));
        let (mut conn, mut peer) = pair();
        peer.write_all(&frame(b'E', b"SXX\0C42501\0Mno\0\0"))
            .await
            .unwrap_or_default();
        match conn.next_event().await {
            Err(e) => assert_eq!(e.code(), Some("42501")),
            Ok(_) => panic!("expected the server error"),
        }
        let (mut conn, peer) = pair();
        drop(peer);
        assert!(matches!(conn.next_event().await, Err(ConnError::Closed)));
        // A DataRow whose lengths lie.
        assert!(data_row(&[0, 2, 0, 0, 0, 9, b'x']).is_err());
        assert_eq!(data_row(&[0, 1, 255, 255, 255, 255]).ok(), Some(vec![None]));
    }
}
