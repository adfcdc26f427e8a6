//! Relays authentication between client and upstream until the first ReadyForQuery: trust,
//! cleartext password (also LDAP/PAM/RADIUS), md5 and SCRAM-SHA-256 pass through byte for byte.
//! SCRAM-SHA-256-PLUS is offered to the client only when channel binding can verify end to end
//! (both legs TLS and pgmemo presents the very certificate the upstream does); GSSAPI, SSPI and
//! client-certificate authentication cannot be relayed and end with a clear FATAL.

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::ClientError;
use crate::net::Stream;
use crate::protocol::fields::Reader;
use crate::protocol::tags::{backend, frontend};
use crate::protocol::{self, FrameError, HEADER_LEN, response};

/// Largest frame accepted from either side before the session is established.
const MAX_AUTH_FRAME: usize = 64 * 1024;
const SCRAM_PLUS: &[u8] = b"SCRAM-SHA-256-PLUS";

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("client connection: {0}")]
    Client(std::io::Error),
    #[error("upstream connection: {0}")]
    Upstream(std::io::Error),
    #[error("client frame: {0}")]
    ClientFrame(FrameError),
    #[error("upstream frame: {0}")]
    UpstreamFrame(FrameError),
    #[error("client sent message type {0:?} during authentication")]
    UnexpectedClientMessage(char),
    /// The upstream refused the session; its ErrorResponse was relayed.
    #[error("upstream refused the session")]
    Refused,
    /// pgmemo cannot relay the method; the client was told.
    #[error("authentication method {0} cannot be relayed")]
    Unrelayable(&'static str),
    #[error("malformed authentication request from upstream")]
    Malformed,
    /// PostgreSQL accepted the login, but pgmemo refuses the session (the admin console and
    /// a role not listed for it); the client was told instead of being let in.
    #[error("login accepted by the server but refused by pgmemo")]
    RefusedAfterLogin,
}

/// What the relay learnt during startup.
pub struct Established {
    /// BackendKeyData body (pid followed by the secret), if the server sent one.
    pub cancel_key: Option<Bytes>,
}

/// Relays until ReadyForQuery (which is forwarded too). With `refuse`, a login the server
/// accepts gets that error instead of AuthenticationOk and what follows it: the client learns
/// it is refused only once it has proven who it is.
pub async fn relay(
    client: &mut Stream,
    upstream: &mut Stream,
    offer_scram_plus: bool,
    refuse: Option<&ClientError>,
) -> Result<Established, AuthError> {
    let mut out = BytesMut::new();
    let mut cancel_key = None;
    let mut authenticated = false;
    // Set when SCRAM-SHA-256-PLUS was removed from the upstream's offer.
    let mut stripped_plus = false;
    loop {
        let frame = read_frame(upstream, MAX_AUTH_FRAME)
            .await
            .map_err(|e| match e {
                ReadError::Io(e) => AuthError::Upstream(e),
                ReadError::Frame(e) => AuthError::UpstreamFrame(e),
            })?;
        let tag = frame.first().copied().unwrap_or_default();
        match tag {
            backend::AUTHENTICATION => {
                let mut r = Reader::body(&frame);
                let code = r.i32().ok_or(AuthError::Malformed)?;
                match code {
                    0 => {
                        authenticated = true;
                        out.extend_from_slice(&frame);
                    }
                    // Cleartext, MD5, SASL, SASLContinue: the client answers.
                    3 | 5 | 11 => {
                        out.extend_from_slice(&frame);
                        answer(client, upstream, &mut out).await?;
                    }
                    10 => {
                        let offer = sasl_offer(&frame, offer_scram_plus)?;
                        stripped_plus = offer != frame;
                        out.extend_from_slice(&offer);
                        answer(client, upstream, &mut out).await?;
                    }
                    12 => out.extend_from_slice(&frame),
                    other => {
                        let method = match other {
                            2 => "Kerberos V5",
                            6 => "SCM credentials",
                            7 | 8 => "GSSAPI",
                            9 => "SSPI",
                            _ => "unknown",
                        };
                        let err = ClientError::unrelayable_auth_method(method);
                        out.extend_from_slice(&err.encode());
                        let _ = client.write_all(&out).await;
                        return Err(AuthError::Unrelayable(method));
                    }
                }
            }
            backend::ERROR_RESPONSE => {
                let relayed = if !authenticated && mentions_client_certificate(&frame) {
                    ClientError::cert_auth_unrelayable(&error_message(&frame)).encode()
                } else if stripped_plus && error_message(&frame).contains("channel binding") {
                    // libpq on TLS, not offered PLUS, says "I could bind but you cannot", which a
                    // TLS upstream rejects as a downgrade; the proof covers that flag, so
                    // pgmemo cannot rewrite it. Say what to change instead of the bare refusal.
                    ClientError::channel_binding_unworkable(&error_message(&frame)).encode()
                } else {
                    frame
                };
                out.extend_from_slice(&relayed);
                let _ = client.write_all(&out).await;
                return Err(AuthError::Refused);
            }
            backend::BACKEND_KEY_DATA => {
                cancel_key = frame.get(HEADER_LEN..).map(Bytes::copy_from_slice);
                out.extend_from_slice(&frame);
            }
            backend::READY_FOR_QUERY => {
                if let Some(refusal) = refuse {
                    let _ = client.write_all(&refusal.encode()).await;
                    let _ = client.flush().await;
                    return Err(AuthError::RefusedAfterLogin);
                }
                out.extend_from_slice(&frame);
                client.write_all(&out).await.map_err(AuthError::Client)?;
                client.flush().await.map_err(AuthError::Client)?;
                return Ok(Established { cancel_key });
            }
            // ParameterStatus, NegotiateProtocolVersion, NoticeResponse and anything newer.
            _ => out.extend_from_slice(&frame),
        }
    }
}

/// Sends what is buffered to the client, then relays its one answer ('p') upstream.
async fn answer(
    client: &mut Stream,
    upstream: &mut Stream,
    out: &mut BytesMut,
) -> Result<(), AuthError> {
    client.write_all(out).await.map_err(AuthError::Client)?;
    client.flush().await.map_err(AuthError::Client)?;
    out.clear();
    let frame = read_frame(client, MAX_AUTH_FRAME)
        .await
        .map_err(|e| match e {
            ReadError::Io(e) => AuthError::Client(e),
            ReadError::Frame(e) => AuthError::ClientFrame(e),
        })?;
    let tag = frame.first().copied().unwrap_or_default();
    if tag != frontend::PASSWORD {
        return Err(AuthError::UnexpectedClientMessage(char::from(tag)));
    }
    upstream
        .write_all(&frame)
        .await
        .map_err(AuthError::Upstream)?;
    upstream.flush().await.map_err(AuthError::Upstream)?;
    Ok(())
}

/// AuthenticationSASL, with SCRAM-SHA-256-PLUS removed unless it can work end to end: the
/// client would bind to pgmemo's certificate and the upstream would check its own.
fn sasl_offer(frame: &Bytes, keep_plus: bool) -> Result<Bytes, AuthError> {
    let mut r = Reader::body(frame);
    r.i32().ok_or(AuthError::Malformed)?;
    let mut mechanisms: Vec<&[u8]> = Vec::new();
    loop {
        let m = r.cstr().ok_or(AuthError::Malformed)?;
        if m.is_empty() {
            break;
        }
        mechanisms.push(m);
    }
    if keep_plus || !mechanisms.contains(&SCRAM_PLUS) {
        return Ok(frame.clone());
    }
    mechanisms.retain(|m| *m != SCRAM_PLUS);
    Ok(response::auth_sasl(&mechanisms))
}

fn fields(frame: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    let mut r = Reader::body(frame);
    std::iter::from_fn(move || {
        let t = r.u8().filter(|&t| t != 0)?;
        Some((t, r.cstr()?))
    })
}

fn error_message(frame: &[u8]) -> String {
    fields(frame)
        .find(|(t, _)| *t == b'M')
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default()
}

/// PostgreSQL's refusals for `cert` authentication and `clientcert=` rules.
fn mentions_client_certificate(frame: &[u8]) -> bool {
    let msg = error_message(frame);
    msg.contains("client certificate") || msg.contains("certificate authentication")
}

#[derive(Debug)]
pub enum ReadError {
    Io(std::io::Error),
    Frame(FrameError),
}

/// Reads one tagged frame of at most `max` bytes.
pub async fn read_frame(s: &mut Stream, max: usize) -> Result<Bytes, ReadError> {
    let mut head = [0u8; HEADER_LEN];
    s.read_exact(&mut head).await.map_err(ReadError::Io)?;
    let h = protocol::header(&head, max)
        .map_err(ReadError::Frame)?
        .ok_or(ReadError::Io(std::io::ErrorKind::UnexpectedEof.into()))?;
    let mut buf = BytesMut::with_capacity(h.total);
    buf.extend_from_slice(&head);
    buf.resize(h.total, 0);
    if let Some(body) = buf.get_mut(HEADER_LEN..) {
        s.read_exact(body).await.map_err(ReadError::Io)?;
    }
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_plus_unless_end_to_end() {
        let offer = response::auth_sasl(&[b"SCRAM-SHA-256-PLUS", b"SCRAM-SHA-256"]);
        let stripped = sasl_offer(&offer, false).unwrap();
        assert_eq!(stripped, response::auth_sasl(&[b"SCRAM-SHA-256"]));
        assert_eq!(sasl_offer(&offer, true).unwrap(), offer);
        assert!(sasl_offer(&response::frame(b'R', &10i32.to_be_bytes()), false).is_err());
    }

    #[test]
    fn detects_cert_refusal() {
        let e = response::error_response(&response::ErrorFields {
            severity: "FATAL",
            code: "28000",
            message: "connection requires a valid client certificate",
            detail: None,
            hint: None,
        });
        assert!(mentions_client_certificate(&e));
        assert_eq!(
            error_message(&e),
            "connection requires a valid client certificate"
        );
    }
}
