//! `fast` consistency: a local mirror of the shared counters, kept current by the bump
//! announcements (pub/sub), so a lookup needs no Redis round trip.
//!
//! The mirror only ever answers for tags it holds; a tag it does not hold is read from Redis
//! once ([`Mirror::absorb`]) and then followed. Values only grow within a generation
//! (`max` of what was read and what was announced, in whatever order they arrive), and a
//! generation change empties the mirror, so it never answers with a value older than one it
//! has seen. It is not trusted while its subscription is down ([`Mirror::set_live`]): what
//! it holds is then still used for L1 keys (stale by at most the TTL, as documented), but
//! not for L2 reads, and reads from Redis are not absorbed (a missed announcement could be
//! older than the read). Every (re)subscription empties it: values are re-read on demand.
//!
//! Bounded: at most `max_tags` tags; past that it is emptied (tags are re-read on demand).

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use super::versions::{Bump, SharedSnapshot};
use crate::cache::Dep;

/// What the mirror answered for a lookup's tags.
#[derive(Debug, Clone)]
pub struct Mirrored {
    pub snapshot: SharedSnapshot,
    /// The subscription is up and the values were current as of its last announcement:
    /// usable for L2 reads.
    pub live: bool,
}

#[derive(Debug, Default)]
struct State {
    generation: Option<Arc<str>>,
    epoch: u64,
    tags: HashMap<Dep, u64>,
    /// Moves on every emptying: a read from Redis that began before is not absorbed.
    sync: u64,
    live: bool,
}

impl State {
    fn empty(&mut self, generation: Option<Arc<str>>) {
        self.generation = generation;
        self.epoch = 0;
        self.tags.clear();
        self.sync += 1;
    }
}

/// The local copy of the shared counters (one per instance).
#[derive(Debug)]
pub struct Mirror {
    state: RwLock<State>,
    max_tags: usize,
}

impl Mirror {
    pub fn new(max_tags: usize) -> Mirror {
        Mirror {
            state: RwLock::new(State::default()),
            max_tags: max_tags.max(1),
        }
    }

    /// The counters of `tags` (sorted, as a local snapshot holds them), if every one is held.
    pub fn snapshot(&self, tags: &[Dep]) -> Option<Mirrored> {
        let s = self.state.read().unwrap_or_else(PoisonError::into_inner);
        let generation = s.generation.clone()?;
        let versions = tags
            .iter()
            .map(|t| s.tags.get(t).copied())
            .collect::<Option<Vec<u64>>>()?;
        Some(Mirrored {
            snapshot: SharedSnapshot {
                generation,
                epoch: s.epoch,
                versions,
            },
            live: s.live,
        })
    }

    /// The token to pass to [`absorb`](Self::absorb) for a read from Redis starting now.
    pub fn sync_token(&self) -> u64 {
        self.state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .sync
    }

    /// Takes in counters read from Redis for `tags`, unless the mirror was emptied since the
    /// read began (`token`) or is not live.
    pub fn absorb(&self, token: u64, tags: &[Dep], read: &SharedSnapshot) {
        let mut s = self.state.write().unwrap_or_else(PoisonError::into_inner);
        if s.sync != token || !s.live || tags.len() != read.versions.len() {
            return;
        }
        match s.generation.as_deref() {
            None => s.generation = Some(Arc::clone(&read.generation)),
            Some(g) if g == &*read.generation => {}
            // Reads are not ordered with each other or with announcements: this one may be
            // from before a generation change the mirror already followed, or after one it
            // has not heard of. Neither is safe to keep; re-read.
            Some(_) => {
                s.empty(None);
                return;
            }
        }
        s.epoch = s.epoch.max(read.epoch);
        self.insert(
            &mut s,
            tags.iter().copied().zip(read.versions.iter().copied()),
        );
    }

    /// Applies an announcement. `ordered`: it came from the subscription, which delivers
    /// bumps in the order Redis applied them, so a new generation there is the newest;
    /// a writer's own result (not ordered with the subscription) only adds to the
    /// generation the mirror follows.
    pub fn apply(&self, bump: &Bump, ordered: bool) {
        let mut s = self.state.write().unwrap_or_else(PoisonError::into_inner);
        if s.generation.as_deref() != Some(&*bump.generation) {
            if !ordered {
                s.empty(None);
                return;
            }
            // A new generation: every counter is new. Only the announced ones are known.
            s.empty(Some(Arc::clone(&bump.generation)));
        }
        if let Some(e) = bump.epoch {
            s.epoch = s.epoch.max(e);
        }
        self.insert(&mut s, bump.deps.iter().copied());
    }

    fn insert(&self, s: &mut State, values: impl Iterator<Item = (Dep, u64)>) {
        for (tag, value) in values {
            if s.tags.len() >= self.max_tags && !s.tags.contains_key(&tag) {
                let generation = s.generation.clone();
                let epoch = s.epoch;
                s.empty(generation);
                // The epoch is one counter, always held: keep it.
                s.epoch = epoch;
            }
            let slot = s.tags.entry(tag).or_insert(value);
            *slot = (*slot).max(value);
        }
    }

    /// The subscription came up (`true`: emptied, values are re-read on demand) or went
    /// down (`false`: kept for L1 keys only).
    pub fn set_live(&self, live: bool) {
        let mut s = self.state.write().unwrap_or_else(PoisonError::into_inner);
        if live {
            s.empty(None);
        }
        s.live = live;
    }

    /// Whether the subscription is up.
    pub fn is_live(&self) -> bool {
        self.state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .live
    }

    /// Forgets everything (a generation error, a malformed announcement).
    pub fn reset(&self) {
        self.state
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .empty(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::cache::Tag;

    const T1: Dep = Dep::Table(Tag { db: 1, rel: 10 });
    const T2: Dep = Dep::Table(Tag { db: 1, rel: 11 });

    fn read(generation: &str, epoch: u64, versions: &[u64]) -> SharedSnapshot {
        SharedSnapshot {
            generation: generation.into(),
            epoch,
            versions: versions.to_vec(),
        }
    }

    fn bump(generation: &str, epoch: Option<u64>, tags: &[(Dep, u64)]) -> Bump {
        Bump {
            generation: generation.into(),
            epoch,
            deps: tags.to_vec(),
        }
    }

    #[test]
    fn answers_only_for_held_tags_and_never_goes_back() {
        let m = Mirror::new(1024);
        m.set_live(true);
        assert!(m.snapshot(&[T1]).is_none(), "nothing held yet");
        // The generation is learnt (a first announcement), then a read begins...
        m.apply(&bump("g", None, &[]), true);
        let token = m.sync_token();
        // An announcement overtakes the read that started before it.
        m.apply(&bump("g", None, &[(T1, 5)]), true);
        m.absorb(token, &[T1, T2], &read("g", 0, &[4, 2]));
        let got = m.snapshot(&[T1, T2]).expect("held");
        assert_eq!(
            got.snapshot.versions,
            vec![5, 2],
            "max of read and announced"
        );
        assert!(got.live);
        m.apply(&bump("g", Some(3), &[(T2, 3)]), false);
        let got = m.snapshot(&[T1, T2]).expect("held");
        assert_eq!((got.snapshot.epoch, got.snapshot.versions), (3, vec![5, 3]));
    }

    #[test]
    fn a_new_generation_or_resubscription_empties_it() {
        let m = Mirror::new(1024);
        m.set_live(true);
        m.absorb(m.sync_token(), &[T1, T2], &read("g", 1, &[4, 2]));
        // A writer's own result in another generation is not trusted to be the newest.
        m.apply(&bump("h", None, &[(T1, 1)]), false);
        assert!(m.snapshot(&[T1]).is_none(), "emptied, re-read");
        m.absorb(m.sync_token(), &[T1, T2], &read("g", 1, &[4, 2]));
        m.apply(&bump("h", None, &[(T1, 1)]), true);
        let got = m.snapshot(&[T1]).expect("announced in h");
        assert_eq!(&*got.snapshot.generation, "h");
        assert_eq!((got.snapshot.epoch, got.snapshot.versions), (0, vec![1]));
        assert!(m.snapshot(&[T2]).is_none(), "T2 of g is not a value of h");

        let token = m.sync_token();
        m.set_live(false);
        assert!(!m.snapshot(&[T1]).expect("kept").live, "not for L2 reads");
        m.absorb(token, &[T2], &read("h", 0, &[0]));
        assert!(m.snapshot(&[T2]).is_none(), "not absorbed while down");
        m.set_live(true);
        assert!(m.snapshot(&[T1]).is_none(), "emptied on resubscription");
        m.absorb(token, &[T1], &read("h", 0, &[1]));
        assert!(
            m.snapshot(&[T1]).is_none(),
            "a read begun before the resubscription is not absorbed"
        );
        m.absorb(m.sync_token(), &[T1], &read("h", 0, &[1]));
        m.absorb(m.sync_token(), &[T2], &read("g", 0, &[7]));
        assert!(
            m.snapshot(&[T1]).is_none(),
            "a read of another generation empties it"
        );
    }

    #[test]
    fn bounded() {
        let m = Mirror::new(4);
        m.set_live(true);
        m.apply(&bump("g", Some(2), &[]), true);
        for rel in 0..10 {
            m.apply(
                &bump("g", None, &[(Dep::Table(Tag { db: 1, rel }), 1)]),
                true,
            );
        }
        let held = (0..10)
            .filter(|rel| {
                m.snapshot(&[Dep::Table(Tag { db: 1, rel: *rel })])
                    .is_some()
            })
            .count();
        assert!(held <= 4, "{held}");
        assert_eq!(
            m.snapshot(&[Dep::Table(Tag { db: 1, rel: 9 })])
                .expect("last")
                .snapshot
                .epoch,
            2
        );
    }
}
