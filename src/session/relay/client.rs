//! The client side of the relay loop: client bytes split into frames, shown to the cache
//! (answered, held, or passed on) and to the session state, and queued upstream as one chunk.

use super::*;

impl Relay<'_> {
    /// Splits client bytes into frames, lets the state see the ones it inspects, and queues
    /// them upstream as one chunk.
    pub(super) fn process_client(&mut self) {
        if !self.cbuf.is_empty() {
            self.cache_side.client_spoke();
        }
        let mut pos = 0;
        loop {
            if self.c_stream_left > 0 {
                let n = self.c_stream_left.min(self.cbuf.len() - pos);
                pos += n;
                self.c_stream_left -= n;
                if self.c_stream_left > 0 {
                    break;
                }
                continue;
            }
            let rest = self.cbuf.get(pos..).unwrap_or_default();
            let h = match protocol::header(rest, self.max_message) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(e) => {
                    self.client_protocol_error(pos, e);
                    return;
                }
            };
            if rest.len() >= h.total {
                match self.client_frame(pos, &h) {
                    Next::Go(next) => pos = next,
                    Next::Stop(at) => {
                        pos = at;
                        break;
                    }
                }
            } else if SessionState::inspects_frontend(h.tag) {
                // Wait for the whole frame (bounded by max_message).
                self.cbuf.reserve(h.total - rest.len());
                break;
            } else {
                // CopyData and other opaque frames: stream them through.
                self.c_stream_left = h.total - rest.len();
                pos = self.cbuf.len();
                break;
            }
        }
        if pos > 0 {
            self.to_upstream.push(self.cbuf.split_to(pos).freeze());
        }
        if self.ending.is_some() {
            self.cbuf.clear();
        }
        shrink_if_idle(&mut self.cbuf);
    }

    /// A hit was queued to the client: what preceded it in the buffer (`pos` bytes) goes
    /// upstream, the `len` bytes it answered are dropped, and ReadyForQuery ends the answer.
    fn answered(&mut self, pos: usize, len: usize) {
        if pos > 0 {
            self.to_upstream.push(self.cbuf.split_to(pos).freeze());
        }
        let _ = self.cbuf.split_to(len);
        self.to_client
            .push(bytes::Bytes::from_static(response::READY_IDLE));
    }

    /// Client processing stops at the frame at the head of the buffer until the plan is
    /// computed or the wait for another session's fill ends.
    /// One whole client frame at `pos` (everything before `pos` is still to be forwarded):
    /// answered, held, or passed on. Returns where the next frame starts, or where
    /// processing stops (the frame at that point is held back, or the session ended).
    fn client_frame(&mut self, mut pos: usize, h: &protocol::Header) -> Next {
        if self.client_blocked() {
            self.client_paused = true;
            return Next::Stop(pos);
        }
        if (h.tag == frontend::PARSE || h.tag == frontend::BIND) && self.state.is_idle() {
            let rest = self.cbuf.get(pos..).unwrap_or_default();
            match self.cache_side.on_group(rest, self.state, self.max_message) {
                GroupAction::Frames => {}
                GroupAction::Incomplete => return Next::Stop(pos),
                GroupAction::Answer {
                    head,
                    body,
                    tail,
                    len,
                    replay,
                } => {
                    self.counters.extended.add(1);
                    self.to_client.push(bytes::Bytes::from_static(head));
                    self.to_client.push(body);
                    if !tail.is_empty() {
                        self.to_client.push(bytes::Bytes::from_static(tail));
                    }
                    self.answered(pos, len);
                    if let Some(replay) = replay {
                        self.to_upstream.push(replay);
                    }
                    return Next::Go(0);
                }
                GroupAction::Hold(hold) => {
                    self.hold(hold);
                    return Next::Stop(pos);
                }
            }
        }
        if SessionState::inspects_frontend(h.tag) {
            let rest = self.cbuf.get(pos..).unwrap_or_default();
            let frame = rest.get(..h.total).unwrap_or_default();
            let mut then = None;
            let mut planned = None;
            match self.cache_side.on_client_frame(h.tag, frame, self.state) {
                FrameAction::Forward => {}
                FrameAction::ForwardParse(plan) => planned = Some(plan),
                FrameAction::ForwardThen(extra) => then = Some(extra),
                FrameAction::Answer(answer) => {
                    self.counters.simple.add(1);
                    self.to_client.push(answer);
                    self.answered(pos, h.total);
                    return Next::Go(0);
                }
                FrameAction::Hold(hold) => {
                    self.hold(hold);
                    return Next::Stop(pos);
                }
            }
            // A statement only pgmemo holds is parsed upstream before the frame that names
            // it (the state expects the replay's reply first).
            let replay = self.state.replay_for(h.tag, frame);
            self.state.on_frontend(h.tag, frame, planned);
            if let Some(replay) = replay {
                if pos > 0 {
                    self.to_upstream.push(self.cbuf.split_to(pos).freeze());
                }
                pos = 0;
                self.to_upstream.push(replay);
            }
            if let Some(extra) = then {
                // pgmemo's own message right behind this frame.
                let upto = pos + h.total;
                self.to_upstream.push(self.cbuf.split_to(upto).freeze());
                self.to_upstream.push(extra);
                self.count_frontend(h.tag);
                return Next::Go(0);
            }
        }
        self.count_frontend(h.tag);
        pos += h.total;
        if h.tag == frontend::TERMINATE {
            // Forward it, then stop reading: the session is over.
            self.client_eof = true;
            self.ending = Some(RelayEnd::Terminated);
            return Next::Stop(pos);
        }
        Next::Go(pos)
    }

    fn hold(&mut self, hold: Hold) {
        match hold {
            Hold::Plan(sql) => self.pending_plan = Some(self.cache_side.plan_future(sql)),
            Hold::Wait(wait) => self.pending_wait = Some(wait),
        }
        self.client_paused = true;
    }

    fn count_frontend(&self, tag: u8) {
        match tag {
            frontend::QUERY => self.counters.simple.add(1),
            frontend::EXECUTE => self.counters.extended.add(1),
            frontend::FUNCTION_CALL => self.counters.function_call.add(1),
            _ => {}
        }
    }

    /// The client broke framing: forward what came before, tell it why, and end the session.
    fn client_protocol_error(&mut self, pos: usize, e: FrameError) {
        metrics::counter!(names::CLIENT_PROTOCOL_ERRORS).increment(1);
        if pos > 0 {
            self.to_upstream.push(self.cbuf.split_to(pos).freeze());
        }
        self.cbuf.clear();
        self.to_client
            .push(ClientError::protocol_violation(e.to_string()).encode());
        self.to_upstream.push(response::terminate());
        self.client_eof = true;
        self.ending = Some(RelayEnd::ClientProtocol(e));
    }
}

/// Where [`Relay::process_client`] goes on after one frame.
enum Next {
    /// Read the next frame from this position.
    Go(usize),
    /// Stop here; what comes before this position is forwarded.
    Stop(usize),
}
