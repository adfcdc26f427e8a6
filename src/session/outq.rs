//! A bounded outbound queue of frames for one direction, written with vectored writes. The
//! relay stops reading from the source while the queue is above its high-water mark, which is
//! what gives end-to-end backpressure (large results are streamed, never buffered whole).

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::AsyncWrite;

/// Stop reading the source once this much is queued for its destination.
pub const HIGH_WATER: usize = 256 * 1024;
/// Most slices handed to one vectored write.
const MAX_IOV: usize = 64;

#[derive(Debug, Default)]
pub struct OutQueue {
    chunks: VecDeque<Bytes>,
    bytes: usize,
    needs_flush: bool,
}

impl OutQueue {
    pub fn push(&mut self, b: Bytes) {
        if !b.is_empty() {
            self.bytes += b.len();
            self.chunks.push_back(b);
        }
    }

    pub fn len(&self) -> usize {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// Below the high-water mark: the source may be read.
    pub fn has_room(&self) -> bool {
        self.bytes < HIGH_WATER
    }

    /// Everything written and flushed.
    pub fn is_settled(&self) -> bool {
        self.bytes == 0 && !self.needs_flush
    }

    /// Writes as much as the socket takes. `Ready(Ok(n))` with the bytes written this call
    /// (0 when there was nothing to do); `Pending` only when nothing could be written.
    pub fn poll_drain<W: AsyncWrite + Unpin>(
        &mut self,
        w: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        let mut written = 0;
        while self.bytes > 0 {
            let mut slices = [IoSlice::new(&[]); MAX_IOV];
            let mut n_slices = 0;
            for (slot, chunk) in slices.iter_mut().zip(self.chunks.iter()) {
                *slot = IoSlice::new(chunk);
                n_slices += 1;
            }
            let res = if n_slices == 1 || !w.is_write_vectored() {
                match self.chunks.front() {
                    Some(first) => Pin::new(&mut *w).poll_write(cx, first),
                    None => break,
                }
            } else {
                Pin::new(&mut *w)
                    .poll_write_vectored(cx, slices.get(..n_slices).unwrap_or_default())
            };
            match res {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "peer stopped accepting data",
                    )));
                }
                Poll::Ready(Ok(n)) => {
                    written += n;
                    self.advance(n);
                    self.needs_flush = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending if written > 0 => return Poll::Ready(Ok(written)),
                Poll::Pending => return Poll::Pending,
            }
        }
        if self.needs_flush {
            // TCP flush is a no-op; TLS flush pushes buffered records to the socket.
            match Pin::new(&mut *w).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.needs_flush = false,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending if written > 0 => return Poll::Ready(Ok(written)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(written))
    }

    fn advance(&mut self, mut n: usize) {
        self.bytes -= n.min(self.bytes);
        while n > 0 {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            if front.len() <= n {
                n -= front.len();
                self.chunks.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    /// A writer that accepts at most `cap` bytes per call.
    struct Trickle {
        out: Vec<u8>,
        cap: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.cap);
            self.out.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn drains_in_order_across_partial_writes() {
        let mut q = OutQueue::default();
        q.push(Bytes::from_static(b"hello "));
        q.push(Bytes::from_static(b""));
        q.push(Bytes::from_static(b"world"));
        assert_eq!(q.len(), 11);
        let mut w = Trickle {
            out: vec![],
            cap: 4,
        };
        let mut cx = Context::from_waker(Waker::noop());
        let r = q.poll_drain(&mut w, &mut cx);
        assert!(matches!(r, Poll::Ready(Ok(11))));
        assert_eq!(w.out, b"hello world");
        assert!(q.is_settled());
    }
}
