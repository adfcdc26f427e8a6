//! A cached result: the pre-encoded response frames (replayed with one write), the key check
//! that proves a hit is not a collision, its TTL, and its size for the byte-weighed cache.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::key::KeyCheck;
use super::versions::Tag;

/// Approximate per-entry bookkeeping outside the entry itself (moka's node, key, deque and
/// timer-wheel links, the `Arc`): counted so that many tiny results cannot exceed
/// `max_memory` by far. An estimate; only its order of magnitude matters.
const OVERHEAD_BYTES: usize = 160;

/// One cached result.
#[derive(Debug)]
pub struct Entry {
    /// Check of the key the entry was stored under; compared on every hit.
    pub check: KeyCheck,
    /// The response frames exactly as the client receives them: RowDescription, DataRows,
    /// CommandComplete (the session adds ReadyForQuery, and for the extended protocol
    /// ParseComplete and BindComplete, and leaves the RowDescription out when the client did
    /// not Describe the portal).
    pub frames: Bytes,
    /// Length of the leading RowDescription in `frames` (0 if there is none).
    row_description_len: usize,
    /// When the result was captured.
    pub created: Instant,
    /// Time to live from `created`; [`Duration::ZERO`] means "until invalidated".
    pub ttl: Duration,
    /// The tags the result was read from (for metrics and debugging; the key already covers
    /// their versions).
    pub tags: Box<[Tag]>,
    /// Set when the L1 evicts, expires or replaces the entry: per-thread fronts drop it then.
    evicted: AtomicBool,
    /// Whether a read stored it or a refresh did (and which), and for refresh-ahead the
    /// point of its own next refresh.
    origin: Origin,
    /// A refresh-ahead of this entry was started: at most one per entry.
    refreshing: AtomicBool,
    /// A client read it since it was stored (kept for refreshed entries only: a refresh
    /// nobody read again was wasted).
    read: AtomicBool,
}

/// What stored an entry (issue 19: refreshes are counted as wasted when nobody reads what
/// they stored).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Origin {
    /// A client's read (a miss, a waiter's own run, a shared-tier promotion, warming).
    Read,
    /// A write-through refresh after a write.
    Write,
    /// A refresh-ahead; its own next refresh starts at this fraction of its TTL.
    Ahead { point: f32 },
}

impl Origin {
    /// The metric label of a refresh's cause, `None` for a read.
    pub fn refresh_label(self) -> Option<&'static str> {
        match self {
            Self::Read => None,
            Self::Write => Some("write"),
            Self::Ahead { .. } => Some("ahead"),
        }
    }
}

impl Entry {
    /// A result captured now.
    pub fn new(check: KeyCheck, frames: Bytes, ttl: Duration, tags: Box<[Tag]>) -> Self {
        Self {
            check,
            row_description_len: row_description_len(&frames),
            frames,
            created: Instant::now(),
            ttl,
            tags,
            evicted: AtomicBool::new(false),
            origin: Origin::Read,
            refreshing: AtomicBool::new(false),
            read: AtomicBool::new(false),
        }
    }

    /// The entry as a refresh of `origin` stored it.
    pub fn refreshed(mut self, origin: Origin) -> Self {
        self.origin = origin;
        self
    }

    /// What stored it.
    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// A client read it: remembered for refreshed entries (one relaxed load once it is
    /// known, so the hit path of a hot entry does not write to a shared cache line).
    pub fn note_read(&self) {
        if self.origin != Origin::Read && !self.read.load(Ordering::Relaxed) {
            self.read.store(true, Ordering::Relaxed);
        }
    }

    /// Whether a refresh stored it and no client read it (asked when it leaves the cache).
    pub fn wasted(&self) -> bool {
        self.origin != Origin::Read && !self.read.load(Ordering::Relaxed)
    }

    /// Whether its one refresh-ahead was claimed already.
    pub fn refresh_claimed(&self) -> bool {
        self.refreshing.load(Ordering::Relaxed)
    }

    /// Claims the entry's one refresh-ahead: true for the first caller only.
    pub fn claim_refresh(&self) -> bool {
        !self.refreshing.load(Ordering::Relaxed) && !self.refreshing.swap(true, Ordering::AcqRel)
    }

    /// Whether refresh-ahead at fraction `point` of its TTL is due at its age (never without
    /// a TTL; `point` 0 is off).
    pub fn refresh_due(&self, point: f32) -> bool {
        point > 0.0
            && !self.ttl.is_zero()
            && self.age().as_secs_f32() >= self.ttl.as_secs_f32() * point
    }

    /// The frames without the RowDescription: the answer to an Execute whose portal the
    /// client did not Describe (shares the bytes, no copy).
    pub fn rows(&self) -> Bytes {
        self.frames.slice(self.row_description_len..)
    }

    /// The answer to an Execute limited to `max_rows` (> 0) rows, as PostgreSQL gives it:
    /// `None` when the result has fewer rows (the whole result is the answer), else the
    /// RowDescription (if `described`) and the first `max_rows` DataRows, after which the
    /// portal is suspended (PostgreSQL suspends it even when exactly `max_rows` rows exist).
    pub fn first_rows(&self, max_rows: u32, described: bool) -> Option<Bytes> {
        let mut at = self.row_description_len;
        let mut left = max_rows;
        while left > 0 {
            let header = self.frames.get(at..at + 5)?;
            if header.first() != Some(&b'D') {
                return None;
            }
            let len = i32::from_be_bytes(header.get(1..5)?.try_into().ok()?);
            at = at.checked_add(usize::try_from(len).ok()?.checked_add(1)?)?;
            left -= 1;
        }
        let start = if described {
            0
        } else {
            self.row_description_len
        };
        (at <= self.frames.len()).then(|| self.frames.slice(start..at))
    }

    /// The L1 no longer holds the entry.
    pub fn mark_evicted(&self) {
        self.evicted.store(true, Ordering::Relaxed);
    }

    /// Whether the L1 let the entry go (see [`Entry::mark_evicted`]).
    pub fn is_evicted(&self) -> bool {
        self.evicted.load(Ordering::Relaxed)
    }

    /// Whether its TTL has run out at `now` (never, with no TTL).
    pub fn is_expired(&self, now: Instant) -> bool {
        !self.ttl.is_zero() && now.saturating_duration_since(self.created) >= self.ttl
    }

    /// Bytes the entry accounts for in the cache: frames, tags, the entry and its bookkeeping.
    pub fn size_bytes(&self) -> usize {
        self.frames.len()
            + std::mem::size_of_val::<[Tag]>(&self.tags)
            + std::mem::size_of::<Self>()
            + OVERHEAD_BYTES
    }

    /// The TTL the cache should apply, `None` when the entry lives until invalidated (or
    /// evicted for space).
    pub fn expiry(&self) -> Option<Duration> {
        (!self.ttl.is_zero()).then_some(self.ttl)
    }

    /// How long ago the result was captured (for refresh-ahead and debugging).
    pub fn age(&self) -> Duration {
        self.created.elapsed()
    }
}

/// The length of the RowDescription frame at the head of `frames`, 0 if none is there.
fn row_description_len(frames: &[u8]) -> usize {
    match frames.get(..5) {
        Some(&[b'T', a, b, c, d]) => usize::try_from(i32::from_be_bytes([a, b, c, d]))
            .ok()
            .map_or(0, |len| len + 1)
            .min(frames.len()),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_rows_stop_where_a_limited_execute_stops() {
        let frames = Bytes::from_static(b"T\0\0\0\x06\0\0D\0\0\0\x05aD\0\0\0\x05bC\0\0\0\x05\0");
        let e = Entry::new(KeyCheck(1), frames.clone(), Duration::ZERO, Box::new([]));
        assert_eq!(e.first_rows(1, true).as_deref(), Some(&frames[..13]));
        assert_eq!(e.first_rows(1, false).as_deref(), Some(&frames[7..13]));
        assert_eq!(e.first_rows(2, false).as_deref(), Some(&frames[7..19]));
        assert_eq!(e.first_rows(3, false), None);
        let truncated = Entry::new(
            KeyCheck(1),
            frames.slice(..10),
            Duration::ZERO,
            Box::new([]),
        );
        assert_eq!(truncated.first_rows(1, false), None);
    }

    #[test]
    fn rows_leave_out_the_row_description() {
        let frames = Bytes::from_static(b"T\0\0\0\x06\0\0D\0\0\0\x06\0\0C\0\0\0\x05\0");
        let e = Entry::new(KeyCheck(1), frames.clone(), Duration::ZERO, Box::new([]));
        assert_eq!(&e.rows()[..], &frames[7..]);
        let no_rd = Entry::new(KeyCheck(1), frames.slice(7..), Duration::ZERO, Box::new([]));
        assert_eq!(no_rd.rows(), frames.slice(7..));
        // A RowDescription claiming more than there is cannot make a panic.
        let bad = Bytes::from_static(b"T\0\0\x10\0\0");
        assert!(
            Entry::new(KeyCheck(1), bad, Duration::ZERO, Box::new([]))
                .rows()
                .is_empty()
        );
    }

    #[test]
    fn size_counts_frames_tags_and_overhead() {
        let small = Entry::new(KeyCheck(1), Bytes::new(), Duration::ZERO, Box::new([]));
        let big = Entry::new(
            KeyCheck(1),
            Bytes::from(vec![0u8; 1000]),
            Duration::ZERO,
            vec![Tag { db: 1, rel: 2 }; 3].into_boxed_slice(),
        );
        assert!(small.size_bytes() >= OVERHEAD_BYTES);
        assert_eq!(big.size_bytes() - small.size_bytes(), 1000 + 3 * 8);
    }

    #[test]
    fn zero_ttl_means_no_expiry() {
        let forever = Entry::new(KeyCheck(1), Bytes::new(), Duration::ZERO, Box::new([]));
        let minute = Entry::new(
            KeyCheck(1),
            Bytes::new(),
            Duration::from_secs(60),
            Box::new([]),
        );
        assert_eq!(forever.expiry(), None);
        assert_eq!(minute.expiry(), Some(Duration::from_secs(60)));
        assert!(minute.age() < Duration::from_secs(60));
    }

    #[test]
    fn one_refresh_per_entry_and_unread_refreshes_are_wasted() {
        let read = Entry::new(KeyCheck(1), Bytes::new(), Duration::ZERO, Box::new([]));
        assert!(!read.refresh_due(0.5), "no TTL: never due");
        assert!(!read.wasted(), "a client's read is never a wasted refresh");
        let e = Entry::new(
            KeyCheck(1),
            Bytes::new(),
            Duration::from_nanos(1),
            Box::new([]),
        )
        .refreshed(Origin::Ahead { point: 0.5 });
        std::thread::sleep(Duration::from_millis(1));
        assert!(e.refresh_due(0.5));
        assert!(!e.refresh_due(0.0), "0 is off");
        assert!(e.claim_refresh());
        assert!(!e.claim_refresh(), "claimed once");
        assert!(e.wasted());
        e.note_read();
        assert!(!e.wasted());
        assert_eq!(e.origin().refresh_label(), Some("ahead"));
    }
}
