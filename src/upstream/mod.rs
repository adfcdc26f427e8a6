//! Connections to the real PostgreSQL server: the per-session passthrough socket (TCP, then
//! TLS per `sslmode`) and forwarding of CancelRequests to the backend they name.

pub mod auth;
pub mod login;
pub mod tls;

use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use crate::config::{SslMode, UpstreamTarget};
use crate::net::Stream;
use crate::protocol::startup::SSL_REQUEST_CODE;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("could not connect to upstream {addr}: {source}")]
    Tcp {
        addr: String,
        source: std::io::Error,
    },
    #[error("connecting to upstream {addr} timed out after {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
    #[error("upstream {addr} does not support SSL, but sslmode={mode:?} requires it")]
    SslRefused { addr: String, mode: SslMode },
    #[error("upstream {addr} answered the SSL request with unexpected byte {byte:#04x}")]
    SslAnswer { addr: String, byte: u8 },
    #[error("TLS handshake with upstream {addr} failed: {source}")]
    Tls {
        addr: String,
        source: std::io::Error,
    },
    #[error("upstream host {0:?} is not a valid TLS server name")]
    ServerName(String),
}

impl ConnectError {
    /// Short label for the connect-error metric.
    pub fn kind(&self) -> &'static str {
        match self {
            ConnectError::Tcp { .. } => "tcp",
            ConnectError::Timeout { .. } => "timeout",
            _ => "tls",
        }
    }
}

/// Where client sessions are relayed, and how to reach it.
#[derive(Clone)]
pub struct Upstream {
    target: UpstreamTarget,
    tls: Option<Arc<ClientConfig>>,
    addr: String,
}

// By hand: the TLS configuration has no Debug, and the target holds the password.
impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("addr", &self.addr)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Upstream {
    pub fn new(target: UpstreamTarget) -> Result<Self, tls::TlsSetupError> {
        let tls = tls::client_config(&target)?;
        let addr = target.host_port();
        Ok(Self { target, tls, addr })
    }

    pub fn target(&self) -> &UpstreamTarget {
        &self.target
    }

    /// "host:port", for messages and metrics.
    pub fn address(&self) -> &str {
        &self.addr
    }

    /// A fresh passthrough connection, TLS-wrapped per `sslmode`.
    pub async fn connect(&self, timeout: Duration) -> Result<Stream, ConnectError> {
        match tokio::time::timeout(timeout, self.connect_inner()).await {
            Ok(r) => r,
            Err(_) => Err(ConnectError::Timeout {
                addr: self.addr.clone(),
                timeout,
            }),
        }
    }

    async fn connect_inner(&self) -> Result<Stream, ConnectError> {
        if self.target.is_unix_socket() {
            // As libpq: no TLS over a Unix socket (the kernel already keeps it local).
            return Ok(Stream::Unix(self.unix().await?));
        }
        let tcp = self.tcp().await?;
        let Some(tls) = &self.tls else {
            return Ok(Stream::Plain(tcp));
        };
        let mut tcp = tcp;
        let [a, b, c, d] = 8i32.to_be_bytes();
        let [e, f, g, h] = SSL_REQUEST_CODE.to_be_bytes();
        let req = [a, b, c, d, e, f, g, h];
        let io_err = |source| ConnectError::Tcp {
            addr: self.addr.clone(),
            source,
        };
        tcp.write_all(&req).await.map_err(io_err)?;
        let answer = tcp.read_u8().await.map_err(io_err)?;
        match answer {
            b'S' => {
                let name = ServerName::try_from(self.target.host.clone())
                    .map_err(|_| ConnectError::ServerName(self.target.host.clone()))?;
                let stream = tokio_rustls::TlsConnector::from(tls.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|source| ConnectError::Tls {
                        addr: self.addr.clone(),
                        source,
                    })?;
                Ok(Stream::Tls(Box::new(tokio_rustls::TlsStream::Client(
                    stream,
                ))))
            }
            b'N' if matches!(self.target.sslmode, SslMode::Prefer | SslMode::Allow) => {
                Ok(Stream::Plain(tcp))
            }
            b'N' => Err(ConnectError::SslRefused {
                addr: self.addr.clone(),
                mode: self.target.sslmode,
            }),
            byte => Err(ConnectError::SslAnswer {
                addr: self.addr.clone(),
                byte,
            }),
        }
    }

    async fn unix(&self) -> Result<UnixStream, ConnectError> {
        UnixStream::connect(&self.addr)
            .await
            .map_err(|source| ConnectError::Tcp {
                addr: self.addr.clone(),
                source,
            })
    }

    async fn tcp(&self) -> Result<TcpStream, ConnectError> {
        let tcp = TcpStream::connect((self.target.host.as_str(), self.target.port))
            .await
            .map_err(|source| ConnectError::Tcp {
                addr: self.addr.clone(),
                source,
            })?;
        // Protocol messages are small and latency-bound; never wait for Nagle.
        let _ = tcp.set_nodelay(true);
        Ok(tcp)
    }

    /// Forwards a CancelRequest packet as received. PostgreSQL reads cancel requests before
    /// TLS and pg_hba, so a plain connection always works; the server closes it afterwards.
    pub async fn forward_cancel(
        &self,
        packet: &[u8],
        timeout: Duration,
    ) -> Result<(), ConnectError> {
        let send = async {
            let mut sock = if self.target.is_unix_socket() {
                Stream::Unix(self.unix().await?)
            } else {
                Stream::Plain(self.tcp().await?)
            };
            sock.write_all(packet)
                .await
                .map_err(|source| ConnectError::Tcp {
                    addr: self.addr.clone(),
                    source,
                })?;
            // Wait for the server to close so the cancel is processed before we report done.
            let mut sink = [0u8; 16];
            let _ = sock.read(&mut sink).await;
            Ok(())
        };
        tokio::time::timeout(timeout, send)
            .await
            .unwrap_or_else(|_| {
                Err(ConnectError::Timeout {
                    addr: self.addr.clone(),
                    timeout,
                })
            })
    }
}
