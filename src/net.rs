//! The socket type both legs of a session use: plain TCP, TLS over TCP (rustls), or a Unix
//! socket (upstream only, when PostgreSQL runs on the same host), behind one
//! `AsyncRead + AsyncWrite` enum so the relay loop is written once.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>),
    Unix(UnixStream),
}

/// A [`Stream`] detached from its runtime's reactor, to be registered with another's (a
/// session moving between workers). TLS streams are never detached.
pub enum Detached {
    Plain(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

impl Detached {
    /// Registers the socket with the current runtime.
    pub fn attach(self) -> io::Result<Stream> {
        Ok(match self {
            Detached::Plain(s) => Stream::Plain(TcpStream::from_std(s)?),
            Detached::Unix(s) => Stream::Unix(UnixStream::from_std(s)?),
        })
    }
}

impl Stream {
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    /// Whether [`Stream::detach`] can move this stream (not TLS: rustls state stays put).
    pub fn detachable(&self) -> bool {
        !self.is_tls()
    }

    /// Deregisters the socket from this runtime (buffered kernel data stays in the socket).
    pub fn detach(self) -> io::Result<Detached> {
        match self {
            Stream::Plain(s) => s.into_std().map(Detached::Plain),
            Stream::Unix(s) => s.into_std().map(Detached::Unix),
            Stream::Tls(_) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "a TLS stream cannot move between runtimes",
            )),
        }
    }

    /// The CPU the kernel last received this TCP socket's packets on (`SO_INCOMING_CPU`):
    /// for a client on the same host, the CPU its thread was running on when it sent.
    pub fn incoming_cpu(&self) -> Option<usize> {
        match self {
            #[cfg(target_os = "linux")]
            Stream::Plain(s) => socket2::SockRef::from(s).cpu_affinity().ok(),
            _ => None,
        }
    }

    /// DER of the certificate the far end presented (client-side TLS only).
    pub fn peer_certificate(&self) -> Option<Vec<u8>> {
        match self {
            Stream::Tls(t) => match t.as_ref() {
                tokio_rustls::TlsStream::Client(c) => c
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|certs| certs.first())
                    .map(|c| c.as_ref().to_vec()),
                tokio_rustls::TlsStream::Server(_) => None,
            },
            Stream::Plain(_) | Stream::Unix(_) => None,
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Stream::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
            Stream::Unix(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
