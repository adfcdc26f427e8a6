//! The session's side of the shared tier (Redis): which counters a lookup keys on, and the
//! two waits a lookup may need before it can decide — reading the counters (`strict`, or a
//! `fast` mirror that does not hold the tags yet) and reading the L2 after an L1 miss. With
//! the L1 disabled there is nothing to try between the two, so the entry comes in the same
//! round trip as the counters. Each wait holds the frame (or extended group) back like a
//! fill wait does, and its result comes back as [`WaitResult::Shared`] for the frame's next
//! showing.
//!
//! Keys: the L1 key covers the local counters *and* the shared ones (a write through this
//! instance invalidates here even when Redis did not get its bump); the L2 key only the
//! shared ones, so every instance computes it. The L2 key (the entry's address) does not
//! depend on the counters and its check does: an entry found is used only when its check
//! is the one computed with the counters this lookup read.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::{CacheSession, WaitFuture, WaitResult};
use crate::cache::l2::envelope::{Sealed, now_unix_ms};
use crate::cache::l2::tier::{Consistency, SharedTier};
use crate::cache::l2::versions::SharedSnapshot;
use crate::cache::{CacheKey, Entry, KeyCheck, Tag, VersionSnapshot};

/// What a shared-tier wait found, for the held frame's next showing.
#[derive(Debug)]
pub struct SharedReady {
    /// The tags read (sorted), to check the frame still keys on the same ones.
    tags: Arc<[Tag]>,
    /// `None`: Redis could not be asked (down, slow, breaker open, unusable).
    counters: Option<SharedSnapshot>,
    /// After an L1 miss: what the L2 held under `key`.
    l2: Option<(CacheKey, Option<Sealed>)>,
    /// L2 reads were allowed when the counters were asked for: no bump of this instance was
    /// waiting for a retry. One that was may have landed since, but the counters read then
    /// do not show it, so an L2 entry under them could predate this instance's own write.
    l2_allowed: bool,
}

/// How a lookup uses the shared tier.
pub(super) enum SharedPlan {
    /// No tier: keys as before.
    Off,
    /// Counters known; `l2` says what to do with the L2 after an L1 miss.
    Keyed {
        counters: SharedSnapshot,
        l2: L2Step,
    },
    /// Do not use the cache for this statement (strict with Redis unreachable).
    Bypass,
    /// Wait for this first.
    Wait(WaitFuture),
}

pub(super) enum L2Step {
    /// Not now (mirror not live, this instance's bumps pending, breaker open).
    Skip,
    /// Ask it after an L1 miss.
    Ask,
    /// Asked: this is what it had under this key.
    Asked(CacheKey, Option<Sealed>),
}

impl CacheSession {
    /// The shared counters for a lookup under `snapshot` (the local one), or why not.
    /// `slot`: the lookup's L2 address when there is no L1, to fetch with the counters.
    pub(super) fn shared_plan(
        &mut self,
        snapshot: &VersionSnapshot,
        slot: Option<CacheKey>,
    ) -> SharedPlan {
        let ready = self.shared_ready.take();
        let Some(tier) = self.app.caching.shared.as_ref() else {
            return SharedPlan::Off;
        };
        let tags: Arc<[Tag]> = snapshot.versions().iter().map(|(t, _)| *t).collect();
        let reads_ok = tier.l2_reads_allowed();
        if let Some(r) = ready.filter(|r| r.tags == tags) {
            return match r.counters {
                None => SharedPlan::Bypass,
                Some(counters) => {
                    let dropped = matches!(r.l2, Some((_, Some(_))));
                    let l2 = l2_step(r.l2, r.l2_allowed, reads_ok);
                    if dropped && matches!(l2, L2Step::Skip) {
                        tier.count_l2_lookup(false);
                    }
                    SharedPlan::Keyed { counters, l2 }
                }
            };
        }
        if tier.consistency() == Consistency::Fast
            && let Some(m) = tier.mirrored(&tags)
            // Not live (the subscription is down): the mirror may miss bumps. While Redis
            // answers, read the counters instead; only without Redis does the mirror serve
            // (L1 only, each entry for at most its TTL).
            && (m.live || !tier.may_ask())
        {
            return SharedPlan::Keyed {
                counters: m.snapshot,
                l2: if m.live && reads_ok {
                    L2Step::Ask
                } else {
                    L2Step::Skip
                },
            };
        }
        if !tier.may_ask() {
            // Redis is away (the breaker is open): asking would not even be sent.
            return SharedPlan::Bypass;
        }
        let tier = Arc::clone(tier);
        // No L1 to try first: the entry comes with the counters (when L2 reads are allowed).
        let slot = slot.filter(|_| reads_ok);
        SharedPlan::Wait(Box::pin(async move {
            let (counters, l2) = match slot {
                Some(slot) => match tier.read_counters_and_entry(Arc::clone(&tags), slot).await {
                    Some((counters, entry)) => (Some(counters), Some((slot, entry))),
                    None => (None, None),
                },
                None => (tier.read_counters(Arc::clone(&tags)).await, None),
            };
            WaitResult::Shared(SharedReady {
                tags,
                counters,
                l2,
                l2_allowed: reads_ok,
            })
        }))
    }

    /// After an L1 miss: wait for the L2's answer under `key`.
    pub(super) fn l2_wait(
        &self,
        tags: &VersionSnapshot,
        counters: SharedSnapshot,
        key: CacheKey,
    ) -> Option<WaitFuture> {
        let tier = Arc::clone(self.app.caching.shared.as_ref()?);
        let tags: Arc<[Tag]> = tags.versions().iter().map(|(t, _)| *t).collect();
        Some(Box::pin(async move {
            let entry = tier.get(key).await;
            WaitResult::Shared(SharedReady {
                tags,
                counters: Some(counters),
                l2: Some((key, entry)),
                // Asked from an `L2Step::Ask`, which needed both.
                l2_allowed: true,
            })
        }))
    }

    /// The held frame's shared-tier wait ended: its result is for the next showing.
    pub(super) fn shared_done(&mut self, ready: SharedReady) {
        self.shared_ready = Some(ready);
    }
}

/// What to do with the L2 on a held frame's next showing, given what its wait brought and
/// whether L2 reads were allowed when the counters were read (`then`) and are now (`now`):
/// both, or an entry under those counters could predate this instance's own write whose
/// bump was waiting for a retry in between.
fn l2_step(l2: Option<(CacheKey, Option<Sealed>)>, then: bool, now: bool) -> L2Step {
    match l2 {
        Some((key, entry)) if then && now => L2Step::Asked(key, entry),
        None if then && now => L2Step::Ask,
        _ => L2Step::Skip,
    }
}

/// An L2 hit as an L1 entry: the L1 check, what is left of its TTL (none left: not usable).
pub(super) fn promoted(sealed: Sealed, check: KeyCheck, tags: &[Tag]) -> Option<Entry> {
    let ttl = if sealed.ttl_ms == 0 {
        Duration::ZERO
    } else {
        let age = now_unix_ms().saturating_sub(sealed.created_unix_ms);
        let left = sealed.ttl_ms.checked_sub(age).filter(|l| *l > 0)?;
        Duration::from_millis(left)
    };
    Some(Entry::new(check, sealed.frames, ttl, tags.into()))
}

/// A result to store in the L2 under the L2 key's check.
pub(super) fn sealed(check: KeyCheck, frames: Bytes, ttl: Duration) -> Sealed {
    Sealed {
        check,
        frames,
        created_unix_ms: now_unix_ms(),
        ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
    }
}

/// Stores a captured result in the L2 (queued; off the client's path).
pub(super) fn put(tier: &SharedTier, key: CacheKey, check: KeyCheck, frames: Bytes, ttl: Duration) {
    tier.put(key, &sealed(check, frames, ttl));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_l2_for_counters_read_while_an_own_bump_was_pending() {
        // Counters read while a bump of this instance waited for a retry do not show its
        // write, even if the retry has landed by the time the frame is shown again.
        assert!(matches!(l2_step(None, false, true), L2Step::Skip));
        assert!(matches!(l2_step(None, true, false), L2Step::Skip));
        assert!(matches!(
            l2_step(Some((CacheKey(1), None)), false, true),
            L2Step::Skip
        ));
        assert!(matches!(
            l2_step(Some((CacheKey(1), None)), true, false),
            L2Step::Skip
        ));
        assert!(matches!(l2_step(None, true, true), L2Step::Ask));
        assert!(matches!(
            l2_step(Some((CacheKey(1), None)), true, true),
            L2Step::Asked(CacheKey(1), None)
        ));
    }
}
