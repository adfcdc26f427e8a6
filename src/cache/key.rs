//! Cache keys: a keyed 128-bit hash (SipHash-1-3 under a per-deployment secret) of everything
//! that decides a result, plus an independent 64-bit check stored in the entry so that a hit
//! can prove it is not a hash collision.
//!
//! Every field is length-prefixed (or fixed-width) in one fixed order, so no two different
//! inputs feed the same byte stream: `("ab", "c")` and `("a", "bc")` hash differently. The key
//! and the check use two sub-keys derived from the secret, so knowing one says nothing about
//! the other.

use std::fmt;
use std::hash::{BuildHasher, Hasher};

use siphasher::sip::SipHasher13 as Sip64;
use siphasher::sip128::{Hasher128, SipHasher13 as Sip128};

use super::l2::versions::SharedSnapshot;
use super::versions::{Dep, VersionSnapshot};

/// Domain separation for the derived sub-keys: changing the key layout means changing these,
/// so keys from an older layout (e.g. in a shared L2) can never be mistaken for new ones.
const KEY_DOMAIN: &[u8] = b"pgmemo/cache-key/v3";
const CHECK_DOMAIN: &[u8] = b"pgmemo/cache-check/v3";
/// The row-stripe sub-key (see [`super::rows`]).
const STRIPE_DOMAIN: &[u8] = b"pgmemo/row-stripe/v1";
/// The hot-key file's HMAC key (see [`KeySecret::hot_keys_key`]).
const HOT_KEYS_DOMAIN: &[u8] = b"pgmemo/hot-keys-file/v1";
/// The write-behind Redis queue's HMAC key (see [`KeySecret::behind_queue_key`]).
const BEHIND_QUEUE_DOMAIN: &[u8] = b"pgmemo/behind-queue/v1";

/// Marker bytes for a parameter: NULL has no length, a value is followed by its length.
const PARAM_NULL: u8 = 0;
const PARAM_VALUE: u8 = 1;

/// Why a secret could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The operating system's random source failed.
    #[error("could not read the OS random source for the cache secret: {0}")]
    Random(getrandom::Error),
    /// A configured secret is not exactly 32 hexadecimal digits.
    #[error("the cache secret must be 32 hexadecimal digits (128 bits)")]
    BadHex,
}

/// The per-deployment 128-bit secret. Instances that share an L2 must share it; a single
/// instance can [`generate`](Self::generate) one at start-up. Never printed.
#[derive(Clone)]
pub struct KeySecret {
    key: (u64, u64),
    check: (u64, u64),
    /// Key of the row-stripe hash (every instance sharing a tier must agree on stripes).
    stripe: (u64, u64),
    /// Key of the L2 envelopes' HMAC (see `envelope`).
    envelope: [u8; 32],
}

impl KeySecret {
    /// Derives the key and check sub-keys from 16 secret bytes (SipHash is a PRF, so hashing
    /// two domain labels under the secret yields two independent-looking sub-keys).
    pub fn from_bytes(secret: [u8; 16]) -> Self {
        let derive = |domain: &[u8]| Sip128::new_with_key(&secret).hash(domain).as_u64();
        let (a, b) = derive(b"pgmemo L2 envelope key, part 1");
        let (c, d) = derive(b"pgmemo L2 envelope key, part 2");
        let mut envelope = [0u8; 32];
        for (chunk, word) in envelope.chunks_exact_mut(8).zip([a, b, c, d]) {
            chunk.copy_from_slice(&word.to_le_bytes());
        }
        Self {
            key: derive(KEY_DOMAIN),
            check: derive(CHECK_DOMAIN),
            stripe: derive(STRIPE_DOMAIN),
            envelope,
        }
    }

    /// The stripe of row `key` of `tag` (see [`super::rows`]).
    pub fn stripe(&self, tag: super::Tag, key: &super::RowKey) -> super::Stripe {
        key.stripe(self.stripe, tag)
    }

    /// The stripe sub-key: what tells stripes hashed under another secret apart (a plan
    /// memoises its stripes with it).
    pub(crate) fn stripe_id(&self) -> (u64, u64) {
        self.stripe
    }

    /// Parses 32 hexadecimal digits (as a config file would carry the secret).
    pub fn from_hex(hex: &str) -> Result<Self, SecretError> {
        let hex = hex.trim().as_bytes();
        if hex.len() != 32 {
            return Err(SecretError::BadHex);
        }
        let mut secret = [0u8; 16];
        for (byte, pair) in secret.iter_mut().zip(hex.chunks_exact(2)) {
            let digits = std::str::from_utf8(pair).map_err(|_| SecretError::BadHex)?;
            *byte = u8::from_str_radix(digits, 16).map_err(|_| SecretError::BadHex)?;
        }
        Ok(Self::from_bytes(secret))
    }

    /// The secret behind this deployment's L2 envelope key (see `l2::envelope`, which
    /// derives the key from it: this module knows nothing of envelopes).
    pub fn envelope_secret(&self) -> [u8; 32] {
        self.envelope
    }

    /// Key of the hot-key file's HMAC (see `refresh::hotkeys`): HMAC-SHA256, under the
    /// envelope sub-key, of a label of its own, so the two keys are independent and neither
    /// reveals the secret. Changing the file's format means changing the label.
    pub fn hot_keys_key(&self) -> [u8; 32] {
        use hmac::{Hmac, Mac};
        // HMAC takes keys of any length; this cannot fail.
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&self.envelope)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(HOT_KEYS_DOMAIN);
        mac.finalize().into_bytes().into()
    }

    /// Key of the write-behind Redis queue's entry HMAC (see `behind::stream`): derived like
    /// [`KeySecret::hot_keys_key`] under a label of its own, so a cache envelope can never
    /// pass as a queued write nor the other way round.
    pub fn behind_queue_key(&self) -> [u8; 32] {
        use hmac::{Hmac, Mac};
        // HMAC takes keys of any length; this cannot fail.
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&self.envelope)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(BEHIND_QUEUE_DOMAIN);
        mac.finalize().into_bytes().into()
    }

    /// A fresh random secret from the OS (for a deployment without a configured one).
    pub fn generate() -> Result<Self, SecretError> {
        let mut secret = [0u8; 16];
        getrandom::fill(&mut secret).map_err(SecretError::Random)?;
        Ok(Self::from_bytes(secret))
    }
}

impl fmt::Debug for KeySecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeySecret(<redacted>)")
    }
}

/// The 128-bit cache key. Already a keyed hash, so maps keyed by it use [`KeyBuildHasher`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey(pub u128);

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheKey({:032x})", self.0)
    }
}

/// An independent 64-bit hash of the same input, stored in the entry: a hit whose check
/// differs is a 128-bit key collision and is treated as a miss.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyCheck(pub u64);

impl fmt::Debug for KeyCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyCheck({:016x})", self.0)
    }
}

/// Everything a cached result depends on. Built with [`KeyInput::new`] and the setters, then
/// [`KeyInput::compute`]. `B` is whatever the caller holds parameter values in (`Bytes` from a
/// decoded Bind, `&[u8]`, `Vec<u8>`), so no copy is needed to build a key.
///
/// Format codes are hashed as given: `[]` and `[0]` (both "all text") produce different keys.
/// That only costs a hit, never correctness; callers may normalise first.
#[derive(Debug)]
pub struct KeyInput<'a, B: AsRef<[u8]> = bytes::Bytes> {
    fingerprint: &'a [u8],
    sql: &'a [u8],
    params: &'a [Option<B>],
    param_types: &'a [u32],
    param_formats: &'a [i16],
    result_formats: &'a [i16],
    /// Extended protocol: the Parse's parameter type OIDs and the Bind's formats, values and
    /// result formats, as raw wire bytes.
    extended: Option<(&'a [u8], &'a [u8])>,
    snapshot: &'a VersionSnapshot,
    /// The shared counters of the same tags (in the snapshot's order), with a Redis tier.
    shared: Option<&'a SharedSnapshot>,
}

/// Which level a key is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tier {
    /// In-process: the local versions and epoch, and the shared counters when there are.
    L1,
    /// Redis: the key (the entry's address there) covers the statement and its tags but no
    /// counters, so it is known before the counters are and one round trip can fetch both;
    /// the check covers the shared counters too (never this process's), so every instance
    /// computes the same pair and an entry stored under other counters fails the check.
    L2,
}

// By hand: derived impls would demand `B: Copy`, but only references to `B` are held.
impl<B: AsRef<[u8]>> Clone for KeyInput<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<B: AsRef<[u8]>> Copy for KeyInput<'_, B> {}

impl<'a, B: AsRef<[u8]>> KeyInput<'a, B> {
    /// A key input for a statement without parameters (simple protocol): the session
    /// fingerprint bytes, the normalised SQL bytes and the version snapshot taken before the
    /// statement was forwarded (I1).
    pub fn new(fingerprint: &'a [u8], sql: &'a [u8], snapshot: &'a VersionSnapshot) -> Self {
        Self {
            fingerprint,
            sql,
            params: &[],
            param_types: &[],
            param_formats: &[],
            result_formats: &[],
            extended: None,
            snapshot,
            shared: None,
        }
    }

    /// The shared counters of the snapshot's tags (read from Redis or its mirror): the L1
    /// key then covers them too, and [`compute_l2`](Self::compute_l2) is possible.
    pub fn shared(mut self, shared: &'a SharedSnapshot) -> Self {
        self.shared = Some(shared);
        self
    }

    /// An extended-protocol execution: `param_types` as the Parse sent them (4 bytes each),
    /// `bind_tail` the Bind after its portal and statement names (parameter formats, values,
    /// result formats). Both are self-delimiting wire encodings, hashed without decoding; the
    /// same statement run through the simple protocol gets another key.
    pub fn extended(mut self, param_types: &'a [u8], bind_tail: &'a [u8]) -> Self {
        self.extended = Some((param_types, bind_tail));
        self
    }

    /// Parameter values from Bind; `None` is SQL NULL.
    pub fn params(mut self, params: &'a [Option<B>]) -> Self {
        self.params = params;
        self
    }

    /// Parameter type OIDs from Parse (0 where the client left the type to the server).
    pub fn param_types(mut self, oids: &'a [u32]) -> Self {
        self.param_types = oids;
        self
    }

    /// Parameter format codes from Bind.
    pub fn param_formats(mut self, codes: &'a [i16]) -> Self {
        self.param_formats = codes;
        self
    }

    /// Result column format codes from Bind.
    pub fn result_formats(mut self, codes: &'a [i16]) -> Self {
        self.result_formats = codes;
        self
    }

    /// The key and its check under `secret`. Pure: the same input and secret always give the
    /// same pair, in this process and any other.
    pub fn compute(&self, secret: &KeySecret) -> (CacheKey, KeyCheck) {
        self.compute_tier(secret, Tier::L1)
    }

    /// The key and check on the shared level: the same for every instance with the same
    /// secret, since only the shared counters (not this process's) go in. The key is the
    /// entry's address and does not depend on the counters ([`compute_l2_slot`]
    /// (Self::compute_l2_slot) gives it without them); the check does, so an entry found
    /// there is only used when its check matches. `None` without [`shared`](Self::shared)
    /// counters.
    pub fn compute_l2(&self, secret: &KeySecret) -> Option<(CacheKey, KeyCheck)> {
        self.shared?;
        Some(self.compute_tier(secret, Tier::L2))
    }

    /// The shared level's key alone, which needs no counters: what to fetch in the same
    /// round trip as the counters.
    pub fn compute_l2_slot(&self, secret: &KeySecret) -> CacheKey {
        self.compute_tier(secret, Tier::L2).0
    }

    fn compute_tier(&self, secret: &KeySecret, tier: Tier) -> (CacheKey, KeyCheck) {
        SCRATCH
            .try_with(|scratch| match scratch.try_borrow_mut() {
                Ok(mut buf) => {
                    let out = self.compute_in(&mut buf, secret, tier);
                    if buf.capacity() > MAX_SCRATCH {
                        *buf = Vec::new();
                    }
                    out
                }
                // Re-entered (cannot happen today) or borrowed: a buffer of its own.
                Err(_) => self.compute_in(&mut Vec::new(), secret, tier),
            })
            .unwrap_or_else(|_| self.compute_in(&mut Vec::new(), secret, tier))
    }

    /// The key's byte stream, serialised into `buf` and hashed once by each hasher: many
    /// small writes cost SipHash more than the bytes themselves.
    fn compute_in(
        &self,
        buf: &mut Vec<u8>,
        secret: &KeySecret,
        tier: Tier,
    ) -> (CacheKey, KeyCheck) {
        buf.clear();
        let mut feed = Feed { buf };
        if tier == Tier::L2 {
            // Never the same stream as an L1 key's (which starts with a length).
            feed.raw(b"L2");
        }
        feed.bytes(self.fingerprint);
        feed.bytes(self.sql);
        feed.len(self.params.len());
        for param in self.params {
            match param {
                None => feed.raw(&[PARAM_NULL]),
                Some(value) => {
                    feed.raw(&[PARAM_VALUE]);
                    feed.bytes(value.as_ref());
                }
            }
        }
        feed.len(self.param_types.len());
        for oid in self.param_types {
            feed.raw(&oid.to_le_bytes());
        }
        feed.len(self.param_formats.len());
        for code in self.param_formats {
            feed.raw(&code.to_le_bytes());
        }
        feed.len(self.result_formats.len());
        for code in self.result_formats {
            feed.raw(&code.to_le_bytes());
        }
        match self.extended {
            None => feed.raw(&[0]),
            Some((types, tail)) => {
                feed.raw(&[1]);
                feed.bytes(types);
                feed.bytes(tail);
            }
        }
        let versions = self.snapshot.versions();
        feed.len(versions.len());
        // The L2 key is hashed over the stream up to here; its check over all of it.
        let mut key_end = None;
        match tier {
            Tier::L2 => {
                for (dep, _) in versions {
                    feed.dep(*dep);
                }
                key_end = Some(feed.buf.len());
                if let Some(shared) = self.shared {
                    // The tags' shared versions in order (a missing one reads as u64::MAX,
                    // which no counter reaches, rather than panic on a caller's mistake).
                    for i in 0..versions.len() {
                        let v = shared.versions.get(i).copied().unwrap_or(u64::MAX);
                        feed.raw(&v.to_le_bytes());
                    }
                    feed.raw(&shared.epoch.to_le_bytes());
                    feed.bytes(shared.generation.as_bytes());
                }
            }
            Tier::L1 => {
                for (dep, version) in versions {
                    feed.dep(*dep);
                    feed.raw(&version.to_le_bytes());
                }
                feed.raw(&self.snapshot.epoch().to_le_bytes());
                match self.shared {
                    None => feed.raw(&[0]),
                    Some(shared) => {
                        feed.raw(&[1]);
                        feed.bytes(shared.generation.as_bytes());
                        feed.raw(&shared.epoch.to_le_bytes());
                        feed.len(shared.versions.len());
                        for v in &shared.versions {
                            feed.raw(&v.to_le_bytes());
                        }
                    }
                }
            }
        }
        let stream: &[u8] = feed.buf;
        let mut key = Sip128::new_with_keys(secret.key.0, secret.key.1);
        key.write(key_end.and_then(|end| stream.get(..end)).unwrap_or(stream));
        let mut check = Sip64::new_with_keys(secret.check.0, secret.check.1);
        check.write(stream);
        (
            CacheKey(key.finish128().as_u128()),
            KeyCheck(check.finish()),
        )
    }
}

thread_local! {
    /// Scratch space for key streams, per thread (no allocation per key).
    static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(512));
}
/// A scratch buffer grown past this by a huge statement is let go afterwards.
const MAX_SCRATCH: usize = 64 * 1024;

/// The byte stream both hashers read.
struct Feed<'a> {
    buf: &'a mut Vec<u8>,
}

impl Feed<'_> {
    fn raw(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    fn len(&mut self, len: usize) {
        // u64 whatever the platform, so keys do not depend on the build target.
        self.raw(&(len as u64).to_le_bytes());
    }

    fn bytes(&mut self, bytes: &[u8]) {
        self.len(bytes.len());
        self.raw(bytes);
    }

    /// A dependency: its kind, then its relation or stripe (fixed width).
    fn dep(&mut self, dep: Dep) {
        match dep {
            Dep::Table(tag) | Dep::Wide(tag) => {
                self.raw(&[if matches!(dep, Dep::Table(_)) { 0 } else { 1 }]);
                self.raw(&tag.db.to_le_bytes());
                self.raw(&tag.rel.to_le_bytes());
            }
            Dep::Row(stripe) => {
                self.raw(&[2]);
                self.raw(&stripe.to_le_bytes());
                self.raw(&[0; 4]);
            }
        }
    }
}

/// `BuildHasher` for maps keyed by [`CacheKey`]: the key is already a keyed uniform hash, so
/// folding its halves is as good as hashing it again and saves a SipHash per lookup.
#[derive(Clone, Copy, Debug, Default)]
pub struct KeyBuildHasher;

impl BuildHasher for KeyBuildHasher {
    type Hasher = KeyHasher;

    fn build_hasher(&self) -> KeyHasher {
        KeyHasher(0)
    }
}

/// The hasher of [`KeyBuildHasher`]. `write_u128` is the path `CacheKey` takes; `write` is a
/// correct (FNV-1a) fallback should anything else ever be hashed with it.
#[derive(Clone, Copy, Debug)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
        const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
        let mut h = self.0 ^ FNV_OFFSET;
        for b in bytes {
            h = (h ^ u64::from(*b)).wrapping_mul(FNV_PRIME);
        }
        self.0 = h;
    }

    fn write_u64(&mut self, value: u64) {
        // For maps keyed by a hash already computed (the plan memo's).
        self.0 ^= value;
    }

    fn write_u128(&mut self, value: u128) {
        // Truncation is the point: both halves are uniformly distributed.
        self.0 ^= (value as u64) ^ ((value >> 64) as u64);
    }
}

#[cfg(test)]
#[path = "key_tests.rs"]
mod tests;
