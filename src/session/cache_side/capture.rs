//! The response of a missed read, captured as it is relayed (DESIGN §2): RowDescription,
//! DataRows and CommandComplete are kept up to the cache's entry size; anything else in the
//! response (an error, a notice, a notification, a settings report, COPY, a frame too large
//! to hold) ends the capture, and the response is relayed but never stored. At its
//! ReadyForQuery the captured bytes are stored under the key of the snapshot taken at the
//! lookup, so a write that bumped one of its tags meanwhile leaves them unreachable.

use std::time::{Duration, Instant};

use bytes::BytesMut;

use crate::cache::{CacheKey, FillGuard, KeyCheck, Tag, VersionSnapshot};
use crate::protocol::tags::backend;

/// A missed read whose response is being captured.
pub(super) struct Capture {
    pub guard: FillGuard,
    pub snapshot: VersionSnapshot,
    pub check: KeyCheck,
    pub ttl: Duration,
    pub tags: Box<[Tag]>,
    /// The L2 key and check to store the result under too (with a shared tier).
    pub l2: Option<(CacheKey, KeyCheck)>,
    pub frames: BytesMut,
    /// The last frame captured was a CommandComplete.
    pub complete: bool,
    pub started: Instant,
    /// The server configuration generation the lookup ran under: a reload seen since makes
    /// the session's fingerprint suspect, so the result is not stored.
    pub config: u64,
    /// A read of a write-through table: what re-running it takes, filed when it is stored.
    pub recipe: Option<Box<RecipeSeed>>,
    /// The statement shape's statistics (bytes stored are counted there).
    pub shape: Option<std::sync::Arc<crate::planner::stats::ShapeStats>>,
}

/// The parts of a recipe known at the lookup (its dependencies come with the store).
pub(super) struct RecipeSeed {
    pub request: crate::refresh::recipes::Request,
    pub plan: std::sync::Arc<crate::planner::plan::Plan>,
    pub fingerprint: [u8; 16],
}

/// What one backend frame does to a capture.
pub(super) enum Step {
    /// Kept (or, for the group's ParseComplete and BindComplete, relayed and not stored).
    More,
    /// The response cannot be stored: the capture ends.
    Abandon,
    /// The response is over (ReadyForQuery): store it if it is whole.
    Done,
}

impl Capture {
    /// A backend frame of the response (`whole = false`: only its header was seen, the
    /// frame is streamed); `max_entry`: the most bytes an entry may hold.
    pub fn on_frame(&mut self, tag: u8, frame: &[u8], whole: bool, max_entry: usize) -> Step {
        match tag {
            backend::ROW_DESCRIPTION | backend::DATA_ROW | backend::COMMAND_COMPLETE if whole => {
                if self.frames.len() + frame.len() > max_entry {
                    // Too large to store (waiters run their own query).
                    return Step::Abandon;
                }
                self.frames.extend_from_slice(frame);
                self.complete = tag == backend::COMMAND_COMPLETE;
                Step::More
            }
            // Replies to the Parse and Bind of an extended group: relayed, not stored.
            backend::PARSE_COMPLETE | backend::BIND_COMPLETE => Step::More,
            backend::READY_FOR_QUERY => Step::Done,
            _ => Step::Abandon,
        }
    }
}
