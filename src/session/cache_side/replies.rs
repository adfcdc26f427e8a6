//! Backend frames as the cache session sees them before they are relayed: the settings
//! probe's replies (read, not relayed), pgmemo's own Describe reply (captured for the entry),
//! a missed read's response (captured, stored at its ReadyForQuery), completions and errors
//! (write tracking), ParameterStatus (the fingerprint), and a held acknowledgement.

use super::capture::{Capture, Step};
use super::*;
use crate::refresh::recipes::Recipe;

impl CacheSession {
    /// A complete backend frame (or, for a streamed one, its header only: `whole = false`)
    /// before it is relayed. Returns `false` when the frame must not reach the client.
    pub fn on_backend_frame(
        &mut self,
        tag: u8,
        frame: &[u8],
        whole: bool,
        state: &mut SessionState,
    ) -> bool {
        if self.ack.take_released() {
            // Seen already, when its hold began.
            return true;
        }
        if self.through_running() {
            return self.on_through_frame(tag, frame, whole);
        }
        if let Some(reader) = self.probe.reader.as_mut() {
            if tag == backend::READY_FOR_QUERY {
                if !reader.on_ready() {
                    // The probe's own statement is being closed (its second Sync).
                    return false;
                }
                let reader = self.probe.reader.take().unwrap_or_default();
                let result = reader.finish();
                if let (Some(r), Some((key, epoch))) = (&result, self.probe.login_probe.take()) {
                    self.app
                        .services
                        .logins
                        .insert(key, r.clone(), epoch, self.probe.config);
                }
                self.on_probe_done(result);
            } else if whole {
                if tag == backend::ERROR_RESPONSE
                    && crate::protocol::fields::error_code(frame)
                        == Some(crate::error::sqlstate::QUERY_CANCELED.as_bytes())
                {
                    self.probe.cancelled = true;
                }
                reader.on_frame(tag, frame);
            } else {
                reader.fail();
            }
            return false;
        }
        if self.describe == resume::Describe::StripReply {
            match tag {
                backend::ROW_DESCRIPTION | backend::NO_DATA => {
                    // The reply to pgmemo's own Describe: kept for the entry, not relayed.
                    self.describe = resume::Describe::No;
                    self.capture_frame(tag, frame, whole);
                    return false;
                }
                backend::ERROR_RESPONSE | backend::READY_FOR_QUERY => {
                    self.describe = resume::Describe::No;
                }
                _ => {}
            }
        }
        self.capture_frame(tag, frame, whole);
        match tag {
            backend::COMMAND_COMPLETE
            | backend::EMPTY_QUERY_RESPONSE
            | backend::PORTAL_SUSPENDED => self.on_completion(frame, state),
            backend::READY_FOR_QUERY => {
                self.upstream_answered();
                let status = Reader::body(frame).u8().unwrap_or(b'I');
                self.fingerprint.on_ready_for_query();
                self.on_ready(status, state);
                let deps = std::mem::take(&mut self.through_deps);
                if self.start_write_through(&deps, frame, state) {
                    // Held until the re-runs end (`take_through_ready`); the protocol state
                    // sees it now, so the re-runs go out on an idle session.
                    state.on_backend(tag, frame);
                    return false;
                }
            }
            backend::PARAMETER_STATUS => {
                let mut r = Reader::body(frame);
                if let (Some(n), Some(v)) = (r.cstr(), r.cstr()) {
                    self.fingerprint.on_parameter_status(
                        &String::from_utf8_lossy(n),
                        &String::from_utf8_lossy(v),
                    );
                }
                self.probe.needed = true;
            }
            _ => {}
        }
        true
    }

    pub(super) fn capture_frame(&mut self, tag: u8, frame: &[u8], whole: bool) {
        let max_entry = self.app.services.cache.max_entry_size();
        let Some(cap) = self.capture.as_mut() else {
            return;
        };
        match cap.on_frame(tag, frame, whole, max_entry) {
            Step::More => {}
            Step::Abandon => self.capture = None,
            Step::Done => {
                if let Some(cap) = self.capture.take() {
                    self.store(cap, frame);
                }
            }
        }
    }

    /// A captured response ended with the ReadyForQuery `ready`: stored in both tiers if it
    /// is whole, the configuration did not move, and no transaction is open.
    fn store(&mut self, cap: Capture, ready: &[u8]) {
        self.metrics
            .upstream_seconds
            .record(cap.started.elapsed().as_secs_f64());
        let config_current = cap.config == self.app.services.invalidator.config_generation();
        // A cacheable read's functions are all IMMUTABLE (or STABLE under a rule): trusted
        // to leave the settings alone while it runs, so its rows belong to the key taken at
        // the lookup even if the session is re-probed after it.
        if cap.complete && config_current && Reader::body(ready).u8() == Some(b'I') {
            let frames = cap.frames.freeze();
            self.app.services.tiers().put_shared(
                cap.l2,
                &cap.snapshot,
                frames.clone(),
                cap.ttl,
                None,
            );
            let len = frames.len();
            let entry = Entry::new(cap.check, frames, cap.ttl, cap.tags);
            let outcome = self
                .app
                .services
                .cache
                .complete(cap.guard, &cap.snapshot, entry);
            if let Some(shape) = &cap.shape
                && outcome == crate::cache::StoreOutcome::Stored
            {
                shape.stored(len);
            }
            if let Some(seed) = cap.recipe {
                self.app.services.recipes.insert(Recipe {
                    database: Arc::clone(&self.database),
                    login: Arc::clone(&self.login),
                    fingerprint: seed.fingerprint,
                    request: seed.request,
                    plan: seed.plan,
                    deps: cap.snapshot.versions().iter().map(|(d, _)| *d).collect(),
                });
            }
        }
    }

    /// After [`CacheSession::on_backend_frame`] accepted a frame: the wait to finish before
    /// relaying it (the relay keeps the frame, polls the future, calls
    /// [`CacheSession::ack_done`], then shows the frame again).
    pub fn take_ack_hold(&mut self) -> Option<ack::AckFuture> {
        self.ack.take_due()
    }

    /// The held acknowledgement may go: the next frame shown is it.
    pub fn ack_done(&mut self) {
        self.ack = resume::AckHold::Released;
    }
}
