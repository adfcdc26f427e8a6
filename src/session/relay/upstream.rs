//! The upstream side of the relay loop: backend bytes split into frames, control frames
//! inspected in place, everything else streamed to the client; pgmemo's own replies (the
//! settings probe, an injected Describe) dropped, a held acknowledgement kept back.

use super::*;

impl Relay<'_> {
    /// Splits upstream bytes into frames; inspects control frames in place; DataRows and other
    /// bulk frames are never decoded and are streamed when larger than what was read.
    pub(super) fn process_upstream(&mut self) {
        let mut pos = 0;
        loop {
            if self.u_stream_left > 0 {
                let n = self.u_stream_left.min(self.ubuf.len() - pos);
                if self.u_stream_drop {
                    self.swallow_upstream(&mut pos, n);
                } else {
                    pos += n;
                }
                self.u_stream_left -= n;
                if self.u_stream_left > 0 {
                    break;
                }
                self.u_stream_drop = false;
                continue;
            }
            let rest = self.ubuf.get(pos..).unwrap_or_default();
            let h = match protocol::header(rest, usize::MAX) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(_) => {
                    // A server that breaks framing cannot be relayed further; pass the bytes
                    // on unchanged and let the client judge them.
                    pos = self.ubuf.len();
                    break;
                }
            };
            let inspect = SessionState::inspects_backend(h.tag)
                || CacheSession::inspects_backend(h.tag)
                || self.cache_side.inspects_all_backend();
            if rest.len() >= h.total {
                let frame = rest.get(..h.total).unwrap_or_default();
                if inspect && self.state.injected_reply(h.tag) {
                    // The reply to a Parse (or Sync) pgmemo sent on its own.
                    self.state.on_backend(h.tag, frame);
                    self.swallow_upstream(&mut pos, h.total);
                    continue;
                }
                if inspect {
                    // Bumps happen here, before the frame is relayed (I2).
                    if !self
                        .cache_side
                        .on_backend_frame(h.tag, frame, true, self.state)
                    {
                        self.swallow_upstream(&mut pos, h.total);
                        if let Some(ready) = self.cache_side.take_through_ready() {
                            // A write-through ended: the writer's held ReadyForQuery goes.
                            self.to_client.push(ready);
                        }
                        continue;
                    }
                    if let Some(ack) = self.cache_side.take_ack_hold() {
                        // A commit's acknowledgement waits for the change stream: relay
                        // what precedes it, keep it at the head of `ubuf`.
                        if pos > 0 {
                            self.to_client.push(self.ubuf.split_to(pos).freeze());
                            pos = 0;
                        }
                        self.pending_ack = Some(ack);
                        break;
                    }
                    if h.tag == backend::ERROR_RESPONSE && is_fatal(frame) {
                        self.fatal_relayed = true;
                    }
                    self.state.on_backend(h.tag, frame);
                }
                pos += h.total;
            } else if inspect && h.total <= MAX_INSPECT_BACKEND {
                self.ubuf.reserve(h.total - rest.len());
                break;
            } else {
                if inspect {
                    // Huge frame: the state only needs the tag.
                    let header = rest.get(..protocol::HEADER_LEN).unwrap_or_default();
                    if self
                        .cache_side
                        .on_backend_frame(h.tag, header, false, self.state)
                    {
                        // Acknowledgements are small frames; a hold here is not kept (its
                        // fallback, an epoch bump, runs on drop).
                        drop(self.cache_side.take_ack_hold());
                        self.state.on_backend(h.tag, header);
                    } else {
                        self.u_stream_drop = true;
                    }
                }
                self.u_stream_left = h.total - rest.len();
                let n = rest.len();
                if self.u_stream_drop {
                    self.swallow_upstream(&mut pos, n);
                } else {
                    pos = self.ubuf.len();
                }
                break;
            }
        }
        if pos > 0 {
            self.to_client.push(self.ubuf.split_to(pos).freeze());
        }
        shrink_if_idle(&mut self.ubuf);
    }
    /// Drops `n` upstream bytes at `*pos` (a frame of pgmemo's own probe): what precedes
    /// them is relayed first, so the order of everything else is kept.
    fn swallow_upstream(&mut self, pos: &mut usize, n: usize) {
        if *pos > 0 {
            self.to_client.push(self.ubuf.split_to(*pos).freeze());
        }
        let _ = self.ubuf.split_to(n.min(self.ubuf.len()));
        *pos = 0;
    }
}

/// Severity FATAL or PANIC in an ErrorResponse frame.
pub fn is_fatal(frame: &[u8]) -> bool {
    let mut r = protocol::fields::Reader::body(frame);
    while let Some(t) = r.u8() {
        if t == 0 {
            break;
        }
        let Some(v) = r.cstr() else { break };
        if t == b'V' || t == b'S' {
            return v == b"FATAL" || v == b"PANIC";
        }
    }
    false
}
