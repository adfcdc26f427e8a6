//! An authenticated raw connection to PostgreSQL for pgmemo's own background work (issue 19:
//! the background executor re-runs a client's request as that client's role, with its
//! startup parameters). [`login`] connects through [`Upstream::connect`] (TCP or Unix socket,
//! TLS per `sslmode`), sends the StartupMessage, authenticates (trust, cleartext, MD5,
//! SCRAM-SHA-256 without channel binding) and collects what the server reports until the
//! first ReadyForQuery. [`BackendConn`] then sends frontend bytes and hands back whole
//! backend frames, as the original bytes.
//!
//! Nothing the server sends can panic this code, and every buffer is bounded: a frame by the
//! caller's limit (at most [`MAX_FRAME`]), the whole login exchange by [`MAX_LOGIN_BYTES`].

use std::io;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::auth::{AuthError, Exchange, Step};
use super::{ConnectError, Upstream};
use crate::net::Stream;
use crate::protocol::fields::Reader;
use crate::protocol::response::put_frame;
use crate::protocol::startup::encode_startup;
use crate::protocol::tags::{backend, frontend};
use crate::protocol::{FrameError, HEADER_LEN, header};

/// Largest backend frame ever accepted (a caller's limit is capped to this).
pub const MAX_FRAME: usize = 64 << 20;
/// Bytes the server may send from the StartupMessage to the first ReadyForQuery.
pub const MAX_LOGIN_BYTES: usize = 1 << 20;

/// Why reading a backend frame failed. The connection is unusable afterwards.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("upstream connection: {0}")]
    Io(#[from] io::Error),
    #[error("the upstream server closed the connection")]
    Closed,
    #[error("upstream frame: {0}")]
    Frame(#[from] FrameError),
}

/// Why [`login`] failed.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("upstream connection: {0}")]
    Io(#[from] io::Error),
    /// An ErrorResponse during start-up or authentication (28P01: wrong password, 3D000: no
    /// such database, ...).
    #[error("upstream login failed: {severity} {code}: {message}")]
    Server {
        severity: String,
        code: String,
        message: String,
    },
    #[error("the server asks for {0} authentication, which pgmemo's background login cannot do")]
    AuthUnsupported(String),
    #[error("the server asks for a password and none is known for this login")]
    PasswordRequired,
    #[error("SCRAM authentication failed: {0}")]
    Scram(io::Error),
    #[error("login did not complete within {0:?}")]
    Timeout(Duration),
    #[error("upstream login: unexpected message {0:?}")]
    Unexpected(char),
    #[error("upstream login: malformed {0} message")]
    Malformed(&'static str),
    #[error(
        "upstream login: the server sent more than {MAX_LOGIN_BYTES} bytes before ReadyForQuery"
    )]
    TooLong,
}

impl From<AuthError> for LoginError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Unsupported(method) => Self::AuthUnsupported(method),
            AuthError::PasswordRequired => Self::PasswordRequired,
            AuthError::Scram(e) => Self::Scram(e),
            AuthError::Malformed(what) => Self::Malformed(what),
        }
    }
}

impl LoginError {
    /// The SQLSTATE of a server error.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Server { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// One whole backend frame: its tag and its bytes, header included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub tag: u8,
    pub bytes: Bytes,
}

impl Frame {
    /// The frame after its five-byte header.
    pub fn body(&self) -> &[u8] {
        self.bytes.get(HEADER_LEN..).unwrap_or_default()
    }
}

/// A logged-in backend connection, idle (ReadyForQuery seen) when [`login`] returns it.
pub struct BackendConn {
    stream: Stream,
    buf: BytesMut,
    reports: Vec<(String, String)>,
    key: Option<(i32, i32)>,
    /// ReadyForQuery answers still owed for what was sent (Sync, Query, FunctionCall).
    pending_ready: usize,
    /// Transaction status of the last ReadyForQuery.
    status: Option<u8>,
    /// A send or read failed, or a caller gave up midway: frames may be lost or pending.
    broken: bool,
}

/// Connects and logs in as `user` to `database`, sending `params` (a client session's
/// startup parameters, in order; `user` and `database` among them are skipped) as the
/// StartupMessage's other parameters. `timeout` bounds the whole exchange.
pub async fn login(
    upstream: &Upstream,
    user: &str,
    password: Option<&str>,
    database: &str,
    params: &[(String, String)],
    timeout: Duration,
) -> Result<BackendConn, LoginError> {
    let work = async {
        let stream = upstream.connect(timeout).await?;
        handshake(stream, user, password, database, params).await
    };
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or(Err(LoginError::Timeout(timeout)))
}

/// Start-up and authentication on a connected stream.
async fn handshake(
    stream: Stream,
    user: &str,
    password: Option<&str>,
    database: &str,
    params: &[(String, String)],
) -> Result<BackendConn, LoginError> {
    let mut conn = BackendConn {
        stream,
        buf: BytesMut::with_capacity(8192),
        reports: Vec::new(),
        key: None,
        pending_ready: 1,
        status: None,
        broken: false,
    };
    let mut startup: Vec<(&str, &str)> = vec![("user", user), ("database", database)];
    startup.extend(
        params
            .iter()
            .filter(|(k, _)| k != "user" && k != "database")
            .map(|(k, v)| (k.as_str(), v.as_str())),
    );
    conn.stream
        .write_all(&encode_startup(3, 0, &startup))
        .await?;
    conn.stream.flush().await?;

    let mut budget = MAX_LOGIN_BYTES;
    let mut auth = Exchange::new(user, password);
    loop {
        let frame = conn.login_frame(&mut budget).await?;
        match frame.tag {
            backend::AUTHENTICATION => {}
            backend::ERROR_RESPONSE => return Err(server_error(frame.body())),
            backend::NOTICE_RESPONSE | backend::NEGOTIATE_PROTOCOL_VERSION => continue,
            t => return Err(LoginError::Unexpected(char::from(t))),
        }
        let reply = match auth.step(frame.body())? {
            Step::Done => break,
            Step::Wait => continue,
            Step::Reply(reply) => reply,
        };
        let mut out = Vec::with_capacity(reply.len() + HEADER_LEN);
        put_frame(&mut out, frontend::PASSWORD, &[&reply]);
        conn.stream.write_all(&out).await?;
        conn.stream.flush().await?;
    }

    loop {
        let frame = conn.login_frame(&mut budget).await?;
        let mut r = Reader::new(frame.body());
        match frame.tag {
            backend::PARAMETER_STATUS => {
                let (Some(name), Some(value)) = (r.cstr(), r.cstr()) else {
                    return Err(LoginError::Malformed("ParameterStatus"));
                };
                conn.reports.push((
                    String::from_utf8_lossy(name).into_owned(),
                    String::from_utf8_lossy(value).into_owned(),
                ));
            }
            backend::BACKEND_KEY_DATA => {
                let (Some(pid), Some(secret)) = (r.i32(), r.i32()) else {
                    return Err(LoginError::Malformed("BackendKeyData"));
                };
                conn.key = Some((pid, secret));
            }
            backend::READY_FOR_QUERY => return Ok(conn),
            backend::ERROR_RESPONSE => return Err(server_error(frame.body())),
            backend::NOTICE_RESPONSE | backend::NEGOTIATE_PROTOCOL_VERSION => {}
            t => return Err(LoginError::Unexpected(char::from(t))),
        }
    }
}

/// The severity, SQLSTATE and message of an ErrorResponse body.
fn server_error(body: &[u8]) -> LoginError {
    let (mut severity, mut code, mut message) = (None, None, None);
    let mut r = Reader::new(body);
    while let Some(t) = r.u8().filter(|t| *t != 0) {
        let Some(v) = r.cstr() else { break };
        let v = String::from_utf8_lossy(v).into_owned();
        match t {
            b'V' => severity = Some(v),
            b'S' => {
                severity.get_or_insert(v);
            }
            b'C' => code = Some(v),
            b'M' => message = Some(v),
            _ => {}
        }
    }
    LoginError::Server {
        severity: severity.unwrap_or_else(|| "ERROR".into()),
        code: code.unwrap_or_else(|| "XX000".into()),
        message: message.unwrap_or_default(),
    }
}

impl BackendConn {
    /// The ParameterStatus (name, value) pairs the server sent at login, in order.
    pub fn reports(&self) -> &[(String, String)] {
        &self.reports
    }

    /// BackendKeyData: the backend's process ID and cancel secret.
    pub fn backend_key(&self) -> Option<(i32, i32)> {
        self.key
    }

    /// Whether the connection can serve another request as it is: nothing failed, every
    /// ReadyForQuery owed has been read, and the last one said idle (no transaction open).
    pub fn is_reusable(&self) -> bool {
        !self.broken && self.pending_ready == 0 && self.status == Some(b'I')
    }

    /// Marks the connection unusable (a caller that gave up midway: frames may be pending).
    pub fn mark_broken(&mut self) {
        self.broken = true;
    }

    /// Writes frontend bytes (whole frames) and flushes.
    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        match ready_owed(bytes) {
            Some(n) => self.pending_ready += n,
            // Not whole frames: what the server answers cannot be followed.
            None => self.broken = true,
        }
        let sent = async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        };
        let r = sent.await;
        if r.is_err() {
            self.broken = true;
        }
        r
    }

    /// The next whole backend frame, at most `max` bytes (header included; capped to
    /// [`MAX_FRAME`]). A longer frame is an error before its body is read. Cancel-safe: a
    /// partly received frame stays buffered.
    pub async fn next_frame(&mut self, max: usize) -> Result<Frame, ReadError> {
        let r = self.read_frame(max.min(MAX_FRAME)).await;
        match &r {
            Ok(f) if f.tag == backend::READY_FOR_QUERY => {
                self.pending_ready = self.pending_ready.saturating_sub(1);
                self.status = f.body().first().copied();
            }
            Ok(_) => {}
            Err(_) => self.broken = true,
        }
        r
    }

    async fn read_frame(&mut self, max: usize) -> Result<Frame, ReadError> {
        loop {
            if let Some(h) = header(&self.buf, max)? {
                if self.buf.len() >= h.total {
                    let bytes = self.buf.split_to(h.total).freeze();
                    return Ok(Frame { tag: h.tag, bytes });
                }
                // Bounded by `max`: the header was checked against it.
                self.buf.reserve(h.total - self.buf.len());
            } else if self.buf.capacity() == self.buf.len() {
                self.buf.reserve(8192);
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(ReadError::Closed);
            }
        }
    }

    /// A login-phase frame, counted against the login's byte budget.
    async fn login_frame(&mut self, budget: &mut usize) -> Result<Frame, LoginError> {
        let frame = self.next_frame(*budget).await.map_err(|e| match e {
            ReadError::Frame(FrameError::TooLarge { .. }) => LoginError::TooLong,
            e => LoginError::Read(e),
        })?;
        *budget -= frame.bytes.len();
        Ok(frame)
    }

    /// Sends Terminate, best effort, and closes the connection.
    pub async fn terminate(mut self) {
        let mut out = Vec::with_capacity(HEADER_LEN);
        put_frame(&mut out, frontend::TERMINATE, &[]);
        let bye = async {
            let _ = self.stream.write_all(&out).await;
            let _ = self.stream.shutdown().await;
        };
        let _ = tokio::time::timeout(Duration::from_millis(200), bye).await;
    }
}

/// How many ReadyForQuery answers `bytes` asks for (one per Sync, Query and FunctionCall),
/// or `None` if they are not whole frames.
pub fn ready_owed(bytes: &[u8]) -> Option<usize> {
    let mut rest = bytes;
    let mut n = 0;
    while !rest.is_empty() {
        let h = header(rest, usize::MAX).ok()??;
        if matches!(
            h.tag,
            frontend::SYNC | frontend::QUERY | frontend::FUNCTION_CALL
        ) {
            n += 1;
        }
        rest = rest.get(h.total..)?;
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::response::frame;
    use tokio::net::UnixStream;

    /// Runs a handshake against a scripted server that reads the client's first packet,
    /// writes `script`, then reads whatever else comes until the client closes.
    async fn against(script: Vec<u8>, password: Option<&str>) -> Result<BackendConn, LoginError> {
        let (client, mut server) = UnixStream::pair().unwrap();
        let fake = tokio::spawn(async move {
            let mut sink = vec![0u8; 4096];
            let _ = server.read(&mut sink).await;
            let _ = server.write_all(&script).await;
            let _ = server.shutdown().await;
            while matches!(server.read(&mut sink).await, Ok(n) if n > 0) {}
        });
        let r = handshake(Stream::Unix(client), "u", password, "db", &[]).await;
        fake.abort();
        r
    }

    fn auth(code: i32, rest: &[u8]) -> Vec<u8> {
        frame(b'R', &[&code.to_be_bytes()[..], rest].concat()).to_vec()
    }

    #[tokio::test]
    async fn trust_collects_reports_and_key() {
        let mut s = auth(0, b"");
        s.extend_from_slice(&frame(b'S', b"application_name\0x\0"));
        s.extend_from_slice(&frame(b'K', &[0, 0, 0, 7, 0, 0, 0, 9]));
        s.extend_from_slice(&frame(b'Z', b"I"));
        let conn = against(s, None).await.unwrap();
        assert_eq!(
            conn.reports(),
            &[("application_name".to_owned(), "x".to_owned())]
        );
        assert_eq!(conn.backend_key(), Some((7, 9)));
        assert!(conn.is_reusable());
    }

    #[tokio::test]
    async fn only_scram_plus_is_unsupported() {
        let s = auth(10, b"SCRAM-SHA-256-PLUS\0\0");
        let e = against(s, Some("pw")).await.err().unwrap();
        assert!(matches!(e, LoginError::AuthUnsupported(_)), "{e:?}");
    }

    #[tokio::test]
    async fn a_password_is_required_when_asked() {
        let e = against(auth(5, b"salt"), None).await.err().unwrap();
        assert!(matches!(e, LoginError::PasswordRequired), "{e:?}");
        let e = against(auth(10, b"SCRAM-SHA-256\0\0"), None)
            .await
            .err()
            .unwrap();
        assert!(matches!(e, LoginError::PasswordRequired), "{e:?}");
    }

    #[tokio::test]
    async fn hostile_frames_are_errors() {
        // Length below 4, a 2 GiB frame, a truncated salt, garbage SCRAM, early EOF.
        let e = against(b"R\0\0\0\x02".to_vec(), None).await.err().unwrap();
        assert!(matches!(e, LoginError::Read(ReadError::Frame(_))), "{e:?}");
        let e = against(b"R\x7f\xff\xff\xff".to_vec(), None)
            .await
            .err()
            .unwrap();
        assert!(matches!(e, LoginError::TooLong), "{e:?}");
        let e = against(auth(5, b"sa"), Some("pw")).await.err().unwrap();
        assert!(matches!(e, LoginError::Malformed(_)), "{e:?}");
        let mut s = auth(10, b"SCRAM-SHA-256\0\0");
        s.extend_from_slice(&auth(11, b"\xffnot scram"));
        let e = against(s, Some("pw")).await.err().unwrap();
        assert!(matches!(e, LoginError::Scram(_)), "{e:?}");
        let e = against(auth(12, b"v=x"), Some("pw")).await.err().unwrap();
        assert!(matches!(e, LoginError::Malformed(_)), "{e:?}");
        let e = against(auth(0, b""), None).await.err().unwrap();
        assert!(matches!(e, LoginError::Read(ReadError::Closed)), "{e:?}");
    }

    #[tokio::test]
    async fn endless_reports_hit_the_login_bound() {
        let mut s = auth(0, b"");
        let report = frame(b'S', &[&b"x\0"[..], &[b'v'; 1000], b"\0"].concat());
        while s.len() <= MAX_LOGIN_BYTES {
            s.extend_from_slice(&report);
        }
        let e = against(s, None).await.err().unwrap();
        assert!(matches!(e, LoginError::TooLong), "{e:?}");
    }

    #[tokio::test]
    async fn login_error_keeps_sqlstate_and_message() {
        let s = frame(b'E', b"SFATAL\0VFATAL\0C28P01\0Mbad password\0\0").to_vec();
        let e = against(s, None).await.err().unwrap();
        assert_eq!(e.code(), Some("28P01"));
        assert!(e.to_string().contains("bad password"), "{e}");
    }

    #[test]
    fn ready_owed_counts_syncs_and_queries() {
        let mut b = Vec::new();
        put_frame(&mut b, b'P', &[b"\0SELECT 1\0", &[0, 0]]);
        put_frame(&mut b, b'S', &[]);
        put_frame(&mut b, b'Q', &[b"SELECT 1\0"]);
        assert_eq!(ready_owed(&b), Some(2));
        assert_eq!(ready_owed(&b[..b.len() - 1]), None);
        assert_eq!(ready_owed(b""), Some(0));
    }
}
