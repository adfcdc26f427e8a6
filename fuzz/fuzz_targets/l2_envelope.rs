//! The L2 envelope decoder (`cache::l2::envelope::open`), which reads what anyone able to
//! write to Redis may have put there. Three modes, chosen by the first input byte:
//! - raw: the bytes as read from Redis. Asserts no panic and no acceptance (the HMAC cannot
//!   verify without the key).
//! - signed: the bytes are an envelope body that this target signs with the deployment key
//!   (the documented tag: HMAC-SHA256 over the Redis key's length and bytes, then the body),
//!   so the decoder's header, length, codec and LZ4 paths are reached as if the key had
//!   leaked. Asserts no panic; an accepted result is within `max_frames` (the decompression
//!   allocates at most that much: bounded allocation), its fields are the header's, and it
//!   seals and opens back to itself.
//! - round trip: a structured entry sealed (`seal`) with a compression threshold from the
//!   input opens back to the same entry (decode(encode(x)) = x), and fails after any one byte
//!   is changed, or under another Redis key.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use pgmemo::cache::key::KeyCheck;
use pgmemo::cache::l2::envelope::{EnvelopeError, EnvelopeKey, Sealed, open, seal};
use sha2::Sha256;

const KEY: [u8; 32] = [7; 32];
const REDIS_KEY: &[u8] = b"pgmemo:v1:e:0123456789abcdef";
/// The entry size limit the fuzzed decoder runs under (the config's default is larger; a
/// smaller one keeps the allocation bound tight under `-malloc_limit_mb`).
const MAX_FRAMES: usize = 1 << 20;

fn tag(body: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&KEY).unwrap();
    mac.update(&(REDIS_KEY.len() as u32).to_be_bytes());
    mac.update(REDIS_KEY);
    mac.update(body);
    mac.finalize().into_bytes().into()
}

fn reseal(key: &EnvelopeKey, entry: &Sealed, compress_min: usize) {
    let sealed = seal(key, REDIS_KEY, entry, compress_min).expect("small frames seal");
    assert_eq!(sealed.raw_len, entry.frames.len());
    let opened = open(
        key,
        REDIS_KEY,
        &sealed.bytes,
        entry.created_unix_ms,
        MAX_FRAMES,
    );
    // Expiry saturates at u64::MAX ms: an entry created at the end of time has expired.
    let expiry = entry.created_unix_ms.saturating_add(entry.ttl_ms);
    if entry.ttl_ms != 0 && entry.created_unix_ms >= expiry {
        assert_eq!(opened, Err(EnvelopeError::Expired));
    } else {
        assert_eq!(opened.as_ref(), Ok(entry), "sealed then opened differs");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let key = EnvelopeKey::new(KEY);
    match mode % 3 {
        0 => {
            let now = 1_700_000_000_000;
            assert!(
                open(&key, REDIS_KEY, rest, now, MAX_FRAMES).is_err(),
                "an unsigned envelope opened"
            );
        }
        1 => {
            let mut bytes = rest.to_vec();
            bytes.extend_from_slice(&tag(rest));
            let now = rest
                .get(8..16)
                .map_or(0, |b| u64::from_be_bytes(b.try_into().unwrap()));
            match open(&key, REDIS_KEY, &bytes, now, MAX_FRAMES) {
                Ok(entry) => {
                    assert!(entry.frames.len() <= MAX_FRAMES);
                    assert_eq!(entry.created_unix_ms, now);
                    assert_eq!(&rest[..4], b"PGMC");
                    assert_eq!(
                        entry.check.0,
                        u64::from_be_bytes(rest[24..32].try_into().unwrap())
                    );
                    assert_eq!(
                        entry.frames.len(),
                        u32::from_be_bytes(rest[32..36].try_into().unwrap()) as usize
                    );
                    reseal(&key, &entry, 1 + usize::from(rest[6]));
                }
                Err(EnvelopeError::BadTag) => panic!("a correctly signed envelope failed its tag"),
                Err(_) => {}
            }
        }
        _ => {
            let mut u = Unstructured::new(rest);
            let Ok((check, created, ttl, compress_min, flip, frames)) =
                <(u64, u64, u64, u16, u16, Vec<u8>)>::arbitrary(&mut u)
            else {
                return;
            };
            // Compressible frames too: repeat what was given.
            let frames = if compress_min % 2 == 0 {
                frames.repeat(8)
            } else {
                frames
            };
            let entry = Sealed {
                check: KeyCheck(check),
                frames: Bytes::from(frames),
                created_unix_ms: created,
                ttl_ms: ttl,
            };
            reseal(&key, &entry, usize::from(compress_min));
            let sealed = seal(&key, REDIS_KEY, &entry, usize::from(compress_min))
                .unwrap()
                .bytes;
            let mut tampered = sealed.clone();
            let at = usize::from(flip) % tampered.len();
            tampered[at] ^= 1 + (flip >> 8) as u8 % 255;
            assert!(
                open(&key, REDIS_KEY, &tampered, created, MAX_FRAMES).is_err(),
                "a tampered envelope opened (byte {at})"
            );
            assert!(
                open(&key, b"another key", &sealed, created, MAX_FRAMES).is_err(),
                "opened under another Redis key"
            );
        }
    }
});
