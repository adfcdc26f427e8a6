//! The client side of the startup phase: SSLRequest (answered with TLS or 'N'), PostgreSQL 17
//! direct TLS (ALPN `postgresql` required), GSSENCRequest (always 'N'), then either a
//! CancelRequest or the StartupMessage to relay.

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::context::ClientTls;
use crate::net::Stream;
use crate::protocol::startup::{self, StartupMessage, StartupPacket, TLS_HANDSHAKE_BYTE};

/// ALPN protocol id PostgreSQL 17 uses for direct TLS.
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

#[derive(Debug, thiserror::Error)]
pub enum NegotiateError {
    #[error("client connection: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Packet(#[from] startup::StartupError),
    #[error("TLS handshake with client failed: {0}")]
    Tls(std::io::Error),
    #[error("direct TLS connection without ALPN \"postgresql\"")]
    NoAlpn,
    #[error("client sent TLS but TLS is not configured")]
    TlsNotConfigured,
    #[error("client sent SSLRequest twice")]
    DuplicateSslRequest,
    #[error("client sent too many negotiation requests")]
    TooManyRequests,
}

pub enum Negotiated {
    Session {
        stream: Stream,
        startup: StartupMessage,
    },
    /// A CancelRequest. The connection is kept: PostgreSQL closes it only once the backend
    /// has been signalled, and clients wait for that close before their next statement.
    Cancel {
        packet: Bytes,
        key: Bytes,
        stream: Stream,
    },
}

/// Runs the negotiation on a fresh connection (the caller bounds it with a timeout).
pub async fn negotiate(
    tcp: TcpStream,
    tls: Option<&ClientTls>,
) -> Result<Negotiated, NegotiateError> {
    let mut first = [0u8; 1];
    let n = tcp.peek(&mut first).await?;
    let mut stream = if n == 1 && first[0] == TLS_HANDSHAKE_BYTE {
        let tls = tls.ok_or(NegotiateError::TlsNotConfigured)?;
        let s = accept_tls(tcp, tls).await?;
        if alpn(&s) != Some(ALPN_POSTGRESQL) {
            return Err(NegotiateError::NoAlpn);
        }
        s
    } else {
        Stream::Plain(tcp)
    };
    // SSLRequest, GSSENCRequest and the startup packet: at most one of each negotiation.
    for _ in 0..3 {
        let packet = read_packet(&mut stream).await?;
        match startup::parse(packet.clone())? {
            StartupPacket::SslRequest => {
                if stream.is_tls() {
                    return Err(NegotiateError::DuplicateSslRequest);
                }
                let Stream::Plain(mut tcp) = stream else {
                    return Err(NegotiateError::DuplicateSslRequest);
                };
                match tls {
                    Some(tls) => {
                        tcp.write_all(b"S").await?;
                        stream = accept_tls(tcp, tls).await?;
                    }
                    None => {
                        tcp.write_all(b"N").await?;
                        stream = Stream::Plain(tcp);
                    }
                }
            }
            StartupPacket::GssEncRequest => {
                // GSS encryption cannot be terminated here; the client falls back.
                stream.write_all(b"N").await?;
            }
            StartupPacket::Cancel { key } => {
                return Ok(Negotiated::Cancel {
                    packet,
                    key,
                    stream,
                });
            }
            StartupPacket::Startup(startup) => return Ok(Negotiated::Session { stream, startup }),
        }
    }
    Err(NegotiateError::TooManyRequests)
}

async fn accept_tls(tcp: TcpStream, tls: &ClientTls) -> Result<Stream, NegotiateError> {
    let s = tls
        .acceptor
        .accept(tcp)
        .await
        .map_err(NegotiateError::Tls)?;
    Ok(Stream::Tls(Box::new(tokio_rustls::TlsStream::Server(s))))
}

fn alpn(s: &Stream) -> Option<&[u8]> {
    match s {
        Stream::Tls(t) => t.get_ref().1.alpn_protocol(),
        Stream::Plain(_) | Stream::Unix(_) => None,
    }
}

/// Reads one untagged startup-phase packet, bounded by `MAX_STARTUP_PACKET`.
async fn read_packet(stream: &mut Stream) -> Result<Bytes, NegotiateError> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await?;
    let total = startup::packet_len(&len)?.unwrap_or(8);
    let mut buf = BytesMut::with_capacity(total);
    buf.extend_from_slice(&len);
    buf.resize(total, 0);
    if let Some(body) = buf.get_mut(4..) {
        stream.read_exact(body).await?;
    }
    Ok(buf.freeze())
}
