//! One lookup over the cache's tiers: the L1 (this process) and, with `cache.redis`, the
//! shared tier (Redis: its version counters and the L2 of results). The session asks once
//! and acts on a closed answer ([`TierLookup`]); which tiers were tried, in which order,
//! and what an L2 hit becomes in the L1 stay here.
//!
//! Order: the shared counters first (from the fast mode's live mirror, or read from Redis:
//! then the answer is [`TierLookup::Read`] and the lookup runs again with what it read),
//! then the L1; after an L1 miss the L2 (another [`TierLookup::Read`]); an L2 entry found
//! under the counters just read is promoted into the L1. With the L1 disabled there is
//! nothing to try between the two, so the entry comes in the same round trip as the
//! counters.
//!
//! Keys: the L1 key covers the local counters *and* the shared ones (a write through this
//! instance invalidates here even when Redis did not get its bump); the L2 key only the
//! shared ones, so every instance computes it. The L2 key (the entry's address) does not
//! depend on the counters and its check does: an entry found is used only when its check
//! is the one computed with the counters this lookup read.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::VersionSnapshot;
use super::l2::envelope::{Sealed, now_unix_ms};
use super::l2::tier::{Consistency, SharedTier};
use super::l2::versions::SharedSnapshot;
use super::{Cache, CacheKey, Dep, Entry, FillGuard, FillWaiter, KeyCheck, KeyInput, Lookup, Tag};
use crate::tasks::InFlight;

/// The answer of one lookup over the tiers.
pub enum TierLookup {
    /// A usable entry (from the L1, or an L2 entry just promoted into it).
    Hit(Arc<Entry>),
    /// Nothing usable: the caller leads the fill under `guard`, and stores what it captures
    /// under `check` (and in the L2 under `l2`, with a shared tier).
    Miss {
        guard: FillGuard,
        check: KeyCheck,
        l2: Option<(CacheKey, KeyCheck)>,
    },
    /// Another session is filling this key: wait for it.
    Wait(FillWaiter),
    /// The shared tier must answer first: await this, then look up again with its answer.
    Read(SharedRead),
    /// The cache may not be used now (strict consistency with Redis unreachable).
    Bypass(&'static str),
}

/// A read of the shared tier a lookup waits for.
pub type SharedRead = Pin<Box<dyn Future<Output = SharedReady> + Send>>;

/// What a shared-tier read found, for the next lookup of the same statement.
#[derive(Debug)]
pub struct SharedReady {
    /// The tags read (sorted), to check the lookup still keys on the same ones.
    tags: Arc<[Dep]>,
    /// `None`: Redis could not be asked (down, slow, breaker open, unusable).
    counters: Option<SharedSnapshot>,
    /// After an L1 miss: what the L2 held under `key`.
    l2: Option<(CacheKey, Option<Sealed>)>,
    /// L2 reads were allowed when the counters were asked for: no bump of this instance was
    /// waiting for a retry. One that was may have landed since, but the counters read then
    /// do not show it, so an L2 entry under them could predate this instance's own write.
    l2_allowed: bool,
}

/// The cache and its shared tier, for one lookup.
pub struct Tiers<'a> {
    pub cache: &'a Cache,
    pub shared: Option<&'a Arc<SharedTier>>,
}

/// What to do with the L2 after an L1 miss.
enum L2Step {
    /// Not now (mirror not live, this instance's bumps pending, breaker open).
    Skip,
    /// Ask it after an L1 miss.
    Ask,
    /// Asked: this is what it had under this key.
    Asked(CacheKey, Option<Sealed>),
}

/// How a lookup uses the shared tier.
enum SharedPlan {
    /// No tier: keys as before.
    Off,
    /// Counters known; `l2` says what to do with the L2 after an L1 miss.
    Keyed {
        counters: SharedSnapshot,
        l2: L2Step,
    },
    /// Do not use the cache for this statement (strict with Redis unreachable).
    Bypass,
    /// Read this first.
    Read(SharedRead),
}

impl Tiers<'_> {
    /// Looks `bare` up (keyed on the local `snapshot`); `ready`: what the shared-tier read
    /// this statement waited for found.
    pub fn lookup(
        &self,
        snapshot: &VersionSnapshot,
        bare: KeyInput<'_, Bytes>,
        ready: Option<SharedReady>,
    ) -> TierLookup {
        let cache = self.cache;
        // With no L1 to try first, the L2 entry is fetched with the counters: its address.
        let slot = (ready.is_none() && self.shared.is_some() && !cache.l1_enabled())
            .then(|| cache.key_l2_slot(&bare));
        let (counters, l2_step) = match self.shared_plan(snapshot, slot, ready) {
            SharedPlan::Off => (None, L2Step::Skip),
            SharedPlan::Keyed { counters, l2 } => (Some(counters), l2),
            SharedPlan::Bypass => return TierLookup::Bypass("redis_unavailable"),
            SharedPlan::Read(read) => return TierLookup::Read(read),
        };
        let input = match &counters {
            Some(c) => bare.shared(c),
            None => bare,
        };
        let (key, check) = cache.key(&input);
        // The L2 key costs a second hash: only when the L2 is asked or a miss is captured.
        let l2_key = || cache.key_l2(&input);
        let looked = match (l2_step, counters.as_ref()) {
            (L2Step::Ask, Some(counters)) => match cache.peek(key, check) {
                Some(entry) => Lookup::Hit(entry),
                None => match l2_key()
                    .and_then(|(l2, _)| self.l2_read(snapshot, counters.clone(), l2))
                {
                    Some(read) => return TierLookup::Read(read),
                    None => cache.lookup(key, check),
                },
            },
            (L2Step::Asked(asked, Some(sealed)), _) => {
                // Found at this address: used only if stored under the counters just read.
                let current = l2_key()
                    .filter(|(l2, l2_check)| asked == *l2 && sealed.check == *l2_check)
                    .and_then(|_| promoted(sealed, check, snapshot));
                if let Some(tier) = self.shared {
                    tier.count_l2_lookup(current.is_some());
                }
                match current {
                    Some(entry) => Lookup::Hit(cache.promote(key, snapshot, entry)),
                    None => cache.lookup(key, check),
                }
            }
            _ => cache.lookup(key, check),
        };
        match looked {
            Lookup::Hit(entry) => TierLookup::Hit(entry),
            Lookup::Wait(waiter) => TierLookup::Wait(waiter),
            Lookup::Miss(guard) => TierLookup::Miss {
                guard,
                check,
                l2: l2_key(),
            },
        }
    }

    /// Stores a captured result in the L2 (queued; off the client's path), when the
    /// snapshot it was looked up under is still current. `done` (a refresh's token) is
    /// held until Redis answered the write, or dropped at once when there is none.
    pub fn put_shared(
        &self,
        l2: Option<(CacheKey, KeyCheck)>,
        snapshot: &VersionSnapshot,
        frames: Bytes,
        ttl: Duration,
        done: Option<InFlight>,
    ) {
        if let (Some(tier), Some((key, check))) = (self.shared, l2)
            && snapshot.is_current(self.cache.versions())
        {
            tier.put(key, &sealed(check, frames, ttl), done);
        }
    }

    /// The shared counters for a lookup under `snapshot` (the local one), or why not.
    /// `slot`: the lookup's L2 address when there is no L1, to fetch with the counters.
    fn shared_plan(
        &self,
        snapshot: &VersionSnapshot,
        slot: Option<CacheKey>,
        ready: Option<SharedReady>,
    ) -> SharedPlan {
        let Some(tier) = self.shared else {
            return SharedPlan::Off;
        };
        let tags: Arc<[Dep]> = snapshot.versions().iter().map(|(d, _)| *d).collect();
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
        SharedPlan::Read(Box::pin(async move {
            let (counters, l2) = match slot {
                Some(slot) => match tier.read_counters_and_entry(Arc::clone(&tags), slot).await {
                    Some((counters, entry)) => (Some(counters), Some((slot, entry))),
                    None => (None, None),
                },
                None => (tier.read_counters(Arc::clone(&tags)).await, None),
            };
            SharedReady {
                tags,
                counters,
                l2,
                l2_allowed: reads_ok,
            }
        }))
    }

    /// After an L1 miss: the read of the L2 under `key`.
    fn l2_read(
        &self,
        snapshot: &VersionSnapshot,
        counters: SharedSnapshot,
        key: CacheKey,
    ) -> Option<SharedRead> {
        let tier = Arc::clone(self.shared?);
        let tags: Arc<[Dep]> = snapshot.versions().iter().map(|(d, _)| *d).collect();
        Some(Box::pin(async move {
            let entry = tier.get(key).await;
            SharedReady {
                tags,
                counters: Some(counters),
                l2: Some((key, entry)),
                // Asked from an `L2Step::Ask`, which needed both.
                l2_allowed: true,
            }
        }))
    }
}

/// What to do with the L2 on the next lookup, given what the read brought and whether L2
/// reads were allowed when the counters were read (`then`) and are now (`now`): both, or an
/// entry under those counters could predate this instance's own write whose bump was
/// waiting for a retry in between.
fn l2_step(l2: Option<(CacheKey, Option<Sealed>)>, then: bool, now: bool) -> L2Step {
    match l2 {
        Some((key, entry)) if then && now => L2Step::Asked(key, entry),
        None if then && now => L2Step::Ask,
        _ => L2Step::Skip,
    }
}

/// An L2 hit as an L1 entry: the L1 check, what is left of its TTL (none left: not usable).
fn promoted(sealed: Sealed, check: KeyCheck, snapshot: &VersionSnapshot) -> Option<Entry> {
    let ttl = if sealed.ttl_ms == 0 {
        Duration::ZERO
    } else {
        let age = now_unix_ms().saturating_sub(sealed.created_unix_ms);
        let left = sealed.ttl_ms.checked_sub(age).filter(|l| *l > 0)?;
        Duration::from_millis(left)
    };
    let tags: Box<[Tag]> = snapshot.tags().into();
    Some(Entry::new(check, sealed.frames, ttl, tags))
}

/// A result to store in the L2 under the L2 key's check.
fn sealed(check: KeyCheck, frames: Bytes, ttl: Duration) -> Sealed {
    Sealed {
        check,
        frames,
        created_unix_ms: now_unix_ms(),
        ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_l2_for_counters_read_while_an_own_bump_was_pending() {
        // Counters read while a bump of this instance waited for a retry do not show its
        // write, even if the retry has landed by the time the statement is looked up again.
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
