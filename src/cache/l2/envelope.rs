//! The binary envelope a cached result is stored in on the shared second level (Redis, issue
//! 6). Versioned and authenticated: whoever can write to Redis cannot make pgmemo serve a
//! result it did not compute, because every envelope carries an HMAC-SHA256 under a key
//! derived from the deployment secret (`cache.secret`), over the Redis key and every byte
//! before the tag. Nothing is decompressed or trusted before the tag verifies.
//!
//! Layout (all integers big-endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `PGMC` |
//! | 4 | 1 | format version, 1 |
//! | 5 | 1 | codec: 0 = stored as is, 1 = LZ4 block |
//! | 6 | 2 | flags, 0 (reserved) |
//! | 8 | 8 | creation time, Unix milliseconds |
//! | 16 | 8 | TTL in milliseconds, 0 = until invalidated |
//! | 24 | 8 | key check (the 64-bit check of the cache key, compared on every hit) |
//! | 32 | 4 | length of the response frames, uncompressed |
//! | 36 | 4 | length of the payload that follows |
//! | 40 | n | payload: the response frames, per the codec |
//! | 40 + n | 32 | HMAC-SHA256(key, redis key ‖ bytes 0 .. 40 + n) |
//!
//! The frames are compressed only when they are at least `compress_min` bytes and LZ4 makes
//! them smaller; small results are stored as they are (compressing them costs more CPU than
//! the bytes it saves).

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::cache::key::KeyCheck;

const MAGIC: &[u8; 4] = b"PGMC";
/// The format written by this version.
pub const FORMAT_VERSION: u8 = 1;
const CODEC_NONE: u8 = 0;
const CODEC_LZ4: u8 = 1;
const HEADER_LEN: usize = 40;
const TAG_LEN: usize = 32;

type HmacSha256 = Hmac<Sha256>;

/// Why an envelope read from the L2 was refused (each is a miss, never a client error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("envelope shorter than its header and tag")]
    Truncated,
    #[error("not a pgmemo envelope")]
    BadMagic,
    #[error("envelope format version {0} is not supported")]
    Version(u8),
    #[error("unknown codec {0}")]
    Codec(u8),
    #[error("authentication tag does not verify (another secret, or tampered with)")]
    BadTag,
    #[error("lengths in the header do not match the envelope")]
    Length,
    #[error("result of {0} bytes is above the entry size limit")]
    TooLarge(usize),
    #[error("payload does not decompress to the stated length")]
    Corrupt,
    #[error("expired")]
    Expired,
}

/// A result as stored on the L2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub check: KeyCheck,
    pub frames: Bytes,
    pub created_unix_ms: u64,
    /// 0: until invalidated.
    pub ttl_ms: u64,
}

/// What sealing produced, for the compression metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedBytes {
    pub bytes: Vec<u8>,
    /// Frames before compression.
    pub raw_len: usize,
    /// Payload as stored.
    pub stored_len: usize,
}

/// The wall clock envelopes count creation and expiry in (ms since the Unix epoch; every
/// instance must agree on it, so it is the system clock, not a monotonic one).
pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The envelope key, derived from the deployment secret (see `KeySecret::envelope_key`).
#[derive(Clone)]
pub struct EnvelopeKey([u8; 32]);

impl EnvelopeKey {
    /// The envelope key of the deployment whose cache secret is `secret`.
    pub fn for_secret(secret: &crate::cache::key::KeySecret) -> Self {
        EnvelopeKey::new(secret.envelope_secret())
    }

    pub fn new(bytes: [u8; 32]) -> EnvelopeKey {
        EnvelopeKey(bytes)
    }

    fn mac(&self, redis_key: &[u8]) -> HmacSha256 {
        // HMAC takes keys of any length; this cannot fail.
        let mut mac = <HmacSha256 as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(
            &u32::try_from(redis_key.len())
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        mac.update(redis_key);
        mac
    }
}

impl std::fmt::Debug for EnvelopeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EnvelopeKey(<redacted>)")
    }
}

/// Seals `entry` for storage under `redis_key`. `None` when the frames are too large for
/// the format (4 GiB).
pub fn seal(
    key: &EnvelopeKey,
    redis_key: &[u8],
    entry: &Sealed,
    compress_min: usize,
) -> Option<SealedBytes> {
    let raw_len = u32::try_from(entry.frames.len()).ok()?;
    let compressed = (entry.frames.len() >= compress_min)
        .then(|| lz4_flex::block::compress(&entry.frames))
        .filter(|c| c.len() < entry.frames.len());
    let (codec, payload): (u8, &[u8]) = match &compressed {
        Some(c) => (CODEC_LZ4, c),
        None => (CODEC_NONE, &entry.frames),
    };
    let payload_len = u32::try_from(payload.len()).ok()?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len() + TAG_LEN);
    out.extend_from_slice(MAGIC);
    out.push(FORMAT_VERSION);
    out.push(codec);
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&entry.created_unix_ms.to_be_bytes());
    out.extend_from_slice(&entry.ttl_ms.to_be_bytes());
    out.extend_from_slice(&entry.check.0.to_be_bytes());
    out.extend_from_slice(&raw_len.to_be_bytes());
    out.extend_from_slice(&payload_len.to_be_bytes());
    out.extend_from_slice(payload);
    let mut mac = key.mac(redis_key);
    mac.update(&out);
    out.extend_from_slice(&mac.finalize().into_bytes());
    Some(SealedBytes {
        raw_len: entry.frames.len(),
        stored_len: payload.len(),
        bytes: out,
    })
}

/// Verifies and opens an envelope read from `redis_key`: the tag first (constant time),
/// then the header, then the payload (decompressed into at most `max_frames` bytes). An
/// envelope whose TTL has passed at `now_unix_ms` is refused too.
pub fn open(
    key: &EnvelopeKey,
    redis_key: &[u8],
    bytes: &[u8],
    now_unix_ms: u64,
    max_frames: usize,
) -> Result<Sealed, EnvelopeError> {
    if bytes.len() < HEADER_LEN + TAG_LEN {
        return Err(EnvelopeError::Truncated);
    }
    let (body, tag) = bytes.split_at(bytes.len() - TAG_LEN);
    if body.get(..4) != Some(MAGIC.as_slice()) {
        return Err(EnvelopeError::BadMagic);
    }
    let mut mac = key.mac(redis_key);
    mac.update(body);
    mac.verify_slice(tag).map_err(|_| EnvelopeError::BadTag)?;
    let field = |at: usize, n: usize| body.get(at..at + n).ok_or(EnvelopeError::Truncated);
    let u64_at = |at: usize| -> Result<u64, EnvelopeError> {
        let b: [u8; 8] = field(at, 8)?
            .try_into()
            .map_err(|_| EnvelopeError::Truncated)?;
        Ok(u64::from_be_bytes(b))
    };
    let u32_at = |at: usize| -> Result<usize, EnvelopeError> {
        let b: [u8; 4] = field(at, 4)?
            .try_into()
            .map_err(|_| EnvelopeError::Truncated)?;
        Ok(u32::from_be_bytes(b) as usize)
    };
    let version = *body.get(4).ok_or(EnvelopeError::Truncated)?;
    if version != FORMAT_VERSION {
        return Err(EnvelopeError::Version(version));
    }
    let codec = *body.get(5).ok_or(EnvelopeError::Truncated)?;
    let created_unix_ms = u64_at(8)?;
    let ttl_ms = u64_at(16)?;
    let check = KeyCheck(u64_at(24)?);
    let raw_len = u32_at(32)?;
    let payload_len = u32_at(36)?;
    let payload = body.get(HEADER_LEN..).ok_or(EnvelopeError::Truncated)?;
    if payload.len() != payload_len {
        return Err(EnvelopeError::Length);
    }
    if raw_len > max_frames {
        return Err(EnvelopeError::TooLarge(raw_len));
    }
    if ttl_ms != 0 && now_unix_ms >= created_unix_ms.saturating_add(ttl_ms) {
        return Err(EnvelopeError::Expired);
    }
    let frames = match codec {
        CODEC_NONE if payload_len == raw_len => Bytes::copy_from_slice(payload),
        CODEC_NONE => return Err(EnvelopeError::Length),
        CODEC_LZ4 => {
            let mut out = vec![0u8; raw_len];
            let n = lz4_flex::block::decompress_into(payload, &mut out)
                .map_err(|_| EnvelopeError::Corrupt)?;
            if n != raw_len {
                return Err(EnvelopeError::Corrupt);
            }
            Bytes::from(out)
        }
        other => return Err(EnvelopeError::Codec(other)),
    };
    Ok(Sealed {
        check,
        frames,
        created_unix_ms,
        ttl_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> EnvelopeKey {
        EnvelopeKey::new([b; 32])
    }

    fn entry(frames: &[u8]) -> Sealed {
        Sealed {
            check: KeyCheck(0xdead_beef_0123_4567),
            frames: Bytes::copy_from_slice(frames),
            created_unix_ms: 1_700_000_000_000,
            ttl_ms: 60_000,
        }
    }

    const NOW: u64 = 1_700_000_001_000;

    #[test]
    fn small_results_round_trip_uncompressed_and_large_ones_compressed() {
        let small = entry(b"T\0\0\0\x06\0\0C\0\0\0\x0dSELECT 1\0");
        let sealed = seal(&key(1), b"pgmemo:k1", &small, 256).unwrap_or_else(|| unreachable!());
        assert_eq!(sealed.stored_len, sealed.raw_len);
        assert_eq!(
            open(&key(1), b"pgmemo:k1", &sealed.bytes, NOW, 1 << 20),
            Ok(small)
        );
        let rows: Vec<u8> = (0..2000)
            .flat_map(|i: u32| format!("D\0\0\0\x14\0\x01\0\0\0\x0a{i:010}").into_bytes())
            .collect();
        let large = entry(&rows);
        let sealed = seal(&key(1), b"pgmemo:k2", &large, 256).unwrap_or_else(|| unreachable!());
        assert!(sealed.stored_len * 2 < sealed.raw_len, "{sealed:?}");
        assert_eq!(
            open(&key(1), b"pgmemo:k2", &sealed.bytes, NOW, 1 << 20),
            Ok(large)
        );
    }

    #[test]
    fn nothing_but_the_same_secret_and_key_opens_it() {
        let e = entry(&[7u8; 1000]);
        let sealed = seal(&key(1), b"pgmemo:a", &e, 100).unwrap_or_else(|| unreachable!());
        assert_eq!(
            open(&key(2), b"pgmemo:a", &sealed.bytes, NOW, 1 << 20),
            Err(EnvelopeError::BadTag),
            "another deployment's secret"
        );
        assert_eq!(
            open(&key(1), b"pgmemo:b", &sealed.bytes, NOW, 1 << 20),
            Err(EnvelopeError::BadTag),
            "moved to another key"
        );
        // Every single flipped bit is caught.
        for i in 0..sealed.bytes.len() {
            let mut bad = sealed.bytes.clone();
            if let Some(b) = bad.get_mut(i) {
                *b ^= 0x10;
            }
            assert!(
                open(&key(1), b"pgmemo:a", &bad, NOW, 1 << 20).is_err(),
                "byte {i}"
            );
        }
    }

    #[test]
    fn expired_oversized_truncated_and_garbage_envelopes_are_refused() {
        let e = entry(&[1u8; 500]);
        let sealed = seal(&key(1), b"k", &e, 10_000).unwrap_or_else(|| unreachable!());
        assert_eq!(
            open(
                &key(1),
                b"k",
                &sealed.bytes,
                e.created_unix_ms + 60_000,
                1 << 20
            ),
            Err(EnvelopeError::Expired)
        );
        assert_eq!(
            open(&key(1), b"k", &sealed.bytes, NOW, 100),
            Err(EnvelopeError::TooLarge(500))
        );
        for n in 0..sealed.bytes.len() {
            assert!(
                open(
                    &key(1),
                    b"k",
                    sealed.bytes.get(..n).unwrap_or_default(),
                    NOW,
                    1 << 20
                )
                .is_err()
            );
        }
        assert_eq!(
            open(&key(1), b"k", &[0u8; 100], NOW, 1 << 20),
            Err(EnvelopeError::BadMagic)
        );
        let forever = Sealed { ttl_ms: 0, ..e };
        let sealed = seal(&key(1), b"k", &forever, 10_000).unwrap_or_else(|| unreachable!());
        assert!(open(&key(1), b"k", &sealed.bytes, u64::MAX, 1 << 20).is_ok());
    }
}

#[cfg(test)]
mod secret_tests {
    use super::*;
    use crate::cache::key::KeySecret;

    #[test]
    fn the_envelope_key_follows_the_deployment_secret() {
        let a = KeySecret::from_hex("00112233445566778899aabbccddeeff")
            .unwrap_or_else(|_| unreachable!());
        let a2 = KeySecret::from_hex("00112233445566778899aabbccddeeff")
            .unwrap_or_else(|_| unreachable!());
        let b = KeySecret::from_hex("00112233445566778899aabbccddeef0")
            .unwrap_or_else(|_| unreachable!());
        let e = Sealed {
            check: KeyCheck(1),
            frames: Bytes::from_static(b"C\0\0\0\x0dSELECT 1\0"),
            created_unix_ms: 0,
            ttl_ms: 0,
        };
        let sealed =
            seal(&EnvelopeKey::for_secret(&a), b"k", &e, 1 << 20).unwrap_or_else(|| unreachable!());
        assert_eq!(
            open(
                &EnvelopeKey::for_secret(&a2),
                b"k",
                &sealed.bytes,
                0,
                1 << 20
            ),
            Ok(e)
        );
        assert_eq!(
            open(
                &EnvelopeKey::for_secret(&b),
                b"k",
                &sealed.bytes,
                0,
                1 << 20
            ),
            Err(EnvelopeError::BadTag)
        );
    }
}
