//! A scripted fake PostgreSQL server on 127.0.0.1:0 for protocol-negotiation tests: it
//! accepts connections one at a time, records the startup packet exactly as received
//! (answering an SSLRequest with 'N' first, as a server without TLS would), and lets the
//! test script every byte it sends back. Built on pgmemo's own framing helpers.
//! Included by path (`#[path = "support/fake_upstream.rs"] mod fake_upstream;`).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pgmemo::protocol::response::frame;
use pgmemo::protocol::startup::{self, StartupPacket};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Longest the fake waits for anything the proxy should send.
const WAIT: Duration = Duration::from_secs(10);
/// Largest frame the fake accepts from the proxy.
const MAX_FRAME: usize = 1 << 20;

pub struct FakeUpstream {
    listener: TcpListener,
    addr: SocketAddr,
}

/// One accepted connection from the proxy.
pub struct FakeConn {
    pub stream: TcpStream,
    /// The first startup-phase packet after any SSLRequest/GSSENCRequest, byte for byte.
    pub startup: Bytes,
    /// Whether an SSLRequest came first (answered 'N').
    pub saw_ssl_request: bool,
}

impl FakeUpstream {
    pub async fn start() -> FakeUpstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake upstream");
        let addr = listener.local_addr().expect("fake upstream addr");
        FakeUpstream { listener, addr }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A `postgres://` URL naming the fake (pgmemo's own user is irrelevant here).
    pub fn url(&self) -> String {
        format!("postgres://fake@{}/fake", self.addr)
    }

    /// Accepts the next connection and reads its startup packet; panics after 10 s.
    pub async fn accept(&self) -> FakeConn {
        self.try_accept(WAIT)
            .await
            .expect("the proxy did not connect to the fake upstream within 10 s")
    }

    /// Like `accept`, but `None` if no connection arrives within `wait`.
    pub async fn try_accept(&self, wait: Duration) -> Option<FakeConn> {
        let (mut stream, _) = tokio::time::timeout(wait, self.listener.accept())
            .await
            .ok()?
            .expect("accept on fake upstream");
        stream.set_nodelay(true).expect("set_nodelay");
        let mut saw_ssl_request = false;
        loop {
            let packet = read_startup_packet(&mut stream).await;
            match startup::parse(packet.clone()).expect("proxy sent an unparsable startup packet") {
                StartupPacket::SslRequest => {
                    saw_ssl_request = true;
                    stream.write_all(b"N").await.expect("answer SSLRequest");
                }
                StartupPacket::GssEncRequest => {
                    stream.write_all(b"N").await.expect("answer GSSENCRequest");
                }
                _ => {
                    return Some(FakeConn {
                        stream,
                        startup: packet,
                        saw_ssl_request,
                    });
                }
            }
        }
    }
}

async fn read_startup_packet(stream: &mut TcpStream) -> Bytes {
    let mut len = [0u8; 4];
    tokio::time::timeout(WAIT, stream.read_exact(&mut len))
        .await
        .expect("startup packet length within 10 s")
        .expect("read startup packet length");
    let total = startup::packet_len(&len)
        .expect("valid startup packet length")
        .expect("four bytes are there");
    let mut buf = BytesMut::with_capacity(total);
    buf.extend_from_slice(&len);
    buf.resize(total, 0);
    tokio::time::timeout(WAIT, stream.read_exact(&mut buf[4..]))
        .await
        .expect("startup packet body within 10 s")
        .expect("read startup packet body");
    buf.freeze()
}

impl FakeConn {
    /// Sends bytes as they are.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .await
            .expect("fake upstream send");
        self.stream.flush().await.expect("fake upstream flush");
    }

    /// Reads one tagged frame from the proxy (whole frame, tag included); `None` if the
    /// proxy closed the connection or nothing arrived within `wait`.
    pub async fn read_frame(&mut self, wait: Duration) -> Option<Bytes> {
        let read = async {
            let mut head = [0u8; 5];
            self.stream.read_exact(&mut head).await.ok()?;
            let h = pgmemo::protocol::header(&head, MAX_FRAME).expect("proxy sent a bad frame")?;
            let mut buf = BytesMut::with_capacity(h.total);
            buf.extend_from_slice(&head);
            buf.resize(h.total, 0);
            self.stream.read_exact(&mut buf[5..]).await.ok()?;
            Some(buf.freeze())
        };
        tokio::time::timeout(wait, read).await.ok().flatten()
    }

    /// Reads whatever arrives until the proxy closes the connection; `None` if it is still
    /// open after `wait` (or sent more than `max` bytes).
    pub async fn read_to_close(&mut self, wait: Duration, max: usize) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        let closed = tokio::time::timeout(wait, async {
            let mut buf = [0u8; 4096];
            while out.len() < max {
                match self.stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return true,
                    Ok(n) => out.extend_from_slice(&buf[..n]),
                }
            }
            false
        })
        .await
        .unwrap_or(false);
        closed.then_some(out)
    }
}

/// Messages a PostgreSQL server sends, encoded with pgmemo's frame helper.
pub mod msg {
    use super::*;

    pub fn auth_ok() -> Bytes {
        frame(b'R', &0i32.to_be_bytes())
    }

    /// AuthenticationRequest with `code` and no payload (e.g. 7 = GSSAPI).
    pub fn auth_request(code: i32) -> Bytes {
        frame(b'R', &code.to_be_bytes())
    }

    /// AuthenticationSASL offering `mechanisms`.
    pub fn auth_sasl(mechanisms: &[&str]) -> Bytes {
        let mut body = 10i32.to_be_bytes().to_vec();
        for m in mechanisms {
            body.extend_from_slice(m.as_bytes());
            body.push(0);
        }
        body.push(0);
        frame(b'R', &body)
    }

    pub fn parameter_status(name: &str, value: &str) -> Bytes {
        let mut body = Vec::new();
        for s in [name, value] {
            body.extend_from_slice(s.as_bytes());
            body.push(0);
        }
        frame(b'S', &body)
    }

    /// BackendKeyData with a secret of any length (4 bytes in 3.0, up to 256 in 3.2).
    pub fn backend_key_data(pid: i32, secret: &[u8]) -> Bytes {
        let mut body = pid.to_be_bytes().to_vec();
        body.extend_from_slice(secret);
        frame(b'K', &body)
    }

    /// NegotiateProtocolVersion: newest minor supported and the unrecognized options.
    pub fn negotiate_protocol_version(newest_minor: i32, unrecognized: &[&str]) -> Bytes {
        let mut body = newest_minor.to_be_bytes().to_vec();
        body.extend_from_slice(&(unrecognized.len() as i32).to_be_bytes());
        for o in unrecognized {
            body.extend_from_slice(o.as_bytes());
            body.push(0);
        }
        frame(b'v', &body)
    }

    pub fn ready_for_query(status: u8) -> Bytes {
        frame(b'Z', &[status])
    }

    pub fn notification(pid: i32, channel: &str, payload: &str) -> Bytes {
        let mut body = pid.to_be_bytes().to_vec();
        for s in [channel, payload] {
            body.extend_from_slice(s.as_bytes());
            body.push(0);
        }
        frame(b'A', &body)
    }

    /// The whole answer of a trusting server up to ReadyForQuery.
    pub fn trust_login(pid: i32, secret: &[u8]) -> Vec<u8> {
        [
            auth_ok(),
            parameter_status("server_version", "15.99 (fake)"),
            backend_key_data(pid, secret),
            ready_for_query(b'I'),
        ]
        .concat()
    }
}
