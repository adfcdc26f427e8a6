//! Criterion bench of the cache's share of a hit (issue 4: "measure with a criterion bench of
//! the hit path"): everything a simple-protocol hit does between the Query frame's SQL and
//! the bytes it replays, minus the sockets. Run with `cargo bench --bench hit_path`.
//!
//! - `one_key`: the same key again and again (the worker's front answers).
//! - `hot_set_10k`: 10,000 keys in turn, like pgbench's point workload (still the front, but
//!   cold in the CPU caches).
//! - `l1_miss_then_front`: a key stored moments ago, read for the first time on this thread
//!   (through moka), then again (front).
//! - `extended_bind_10k`: an extended-protocol hit of a prepared statement (`pgbench -M
//!   prepared`): recognising the Bind/Describe/Execute/Sync group in the client's bytes,
//!   checking its parameters for clock words, the key over the parameter types and the Bind's
//!   tail, the lookup, and the entry's bytes; 10,000 parameter values in turn.

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use pgmemo::cache::{Cache, CacheLimits, Entry, KeyInput, KeySecret, Lookup, Tag};
use pgmemo::session::cache_side::group::{Scan, params_may_read_clock, scan};

const FINGERPRINT: [u8; 16] = *b"fingerprint-0001";
const TAGS: [Tag; 1] = [Tag { db: 5, rel: 16_384 }];

/// RowDescription + DataRow + CommandComplete of `SELECT abalance ...` (one int4 row).
fn frames() -> Bytes {
    let mut f = Vec::new();
    f.extend_from_slice(
        b"T\0\0\0\x21\0\x01abalance\0\0\0\0\0\0\0\0\0\0\x17\0\x04\xff\xff\xff\xff\0\0",
    );
    f.extend_from_slice(b"D\0\0\0\x0b\0\x01\0\0\0\x010");
    f.extend_from_slice(b"C\0\0\0\x0dSELECT 1\0");
    Bytes::from(f)
}

fn sql(aid: u32) -> Vec<u8> {
    format!("SELECT abalance FROM pgbench_accounts WHERE aid = {aid}").into_bytes()
}

/// A cache holding the results of `keys` texts.
fn filled(keys: u32) -> (Cache, Vec<Vec<u8>>) {
    let cache = Cache::new(CacheLimits::with_secret(KeySecret::from_bytes(
        *b"0123456789abcdef",
    )));
    let texts: Vec<Vec<u8>> = (1..=keys).map(sql).collect();
    for text in &texts {
        let snapshot = cache.versions().snapshot(&TAGS);
        let (key, check) = cache.key(&KeyInput::<Bytes>::new(&FINGERPRINT, text, &snapshot));
        let Lookup::Miss(guard) = cache.lookup(key, check) else {
            panic!("a new key must miss");
        };
        let entry = Entry::new(check, frames(), Duration::from_secs(60), Box::new(TAGS));
        cache.complete(guard, &snapshot, entry);
    }
    cache.run_pending_tasks();
    (cache, texts)
}

/// What a hit does: snapshot the versions (I1), compute the key, look it up, take the bytes.
fn hit(cache: &Cache, text: &[u8]) -> Bytes {
    let snapshot = cache.versions().snapshot(&TAGS);
    let (key, check) = cache.key(&KeyInput::<Bytes>::new(&FINGERPRINT, text, &snapshot));
    match cache.lookup(key, check) {
        Lookup::Hit(entry) => entry.frames.clone(),
        _ => panic!("expected a hit"),
    }
}

const PREPARED: &[u8] = b"SELECT abalance FROM pgbench_accounts WHERE aid = $1";

/// The group libpq sends for `PQexecPrepared` with one text parameter.
fn bind_group(aid: u32) -> Vec<u8> {
    let value = aid.to_string();
    let mut body = b"\0P_0\0\0\0\0\x01".to_vec();
    body.extend_from_slice(&(value.len() as i32).to_be_bytes());
    body.extend_from_slice(value.as_bytes());
    body.extend_from_slice(b"\0\0");
    let mut out = vec![b'B'];
    out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(&body);
    out.extend_from_slice(b"D\0\0\0\x06P\0E\0\0\0\x09\0\0\0\0\0S\0\0\0\x04");
    out
}

/// What an extended hit does with the client's bytes (the plan and registry lookups aside).
fn extended_hit(cache: &Cache, bytes: &[u8]) -> Bytes {
    let Scan::Group(g) = scan(bytes, 1 << 20) else {
        panic!("not a group");
    };
    assert!(!params_may_read_clock(g.bind_tail));
    let snapshot = cache.versions().snapshot(&TAGS);
    let input =
        KeyInput::<Bytes>::new(&FINGERPRINT, PREPARED, &snapshot).extended(b"", g.bind_tail);
    let (key, check) = cache.key(&input);
    match cache.lookup(key, check) {
        Lookup::Hit(entry) => entry.frames.clone(),
        _ => panic!("expected a hit"),
    }
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("hit");
    let (cache, texts) = filled(1);
    group.bench_function("one_key", |b| b.iter(|| black_box(hit(&cache, &texts[0]))));

    let (cache, texts) = filled(10_000);
    let mut i = 0;
    group.bench_function("hot_set_10k", |b| {
        b.iter(|| {
            i = (i + 7_919) % texts.len();
            black_box(hit(&cache, &texts[i]))
        })
    });

    // Each iteration stores a fresh key from another thread, then reads it twice here.
    let (cache, _) = filled(1);
    let mut n = 20_000;
    group.bench_function("l1_miss_then_front", |b| {
        b.iter_batched(
            || {
                n += 1;
                let text = sql(n);
                std::thread::scope(|s| {
                    s.spawn(|| {
                        let snapshot = cache.versions().snapshot(&TAGS);
                        let (key, check) =
                            cache.key(&KeyInput::<Bytes>::new(&FINGERPRINT, &text, &snapshot));
                        if let Lookup::Miss(guard) = cache.lookup(key, check) {
                            let entry = Entry::new(
                                check,
                                frames(),
                                Duration::from_secs(60),
                                Box::new(TAGS),
                            );
                            cache.complete(guard, &snapshot, entry);
                        }
                    });
                });
                text
            },
            |text| {
                black_box(hit(&cache, &text));
                black_box(hit(&cache, &text))
            },
            criterion::BatchSize::SmallInput,
        )
    });

    let cache = Cache::new(CacheLimits::with_secret(KeySecret::from_bytes(
        *b"0123456789abcdef",
    )));
    let groups: Vec<Vec<u8>> = (1..=10_000).map(bind_group).collect();
    for bytes in &groups {
        let Scan::Group(g) = scan(bytes, 1 << 20) else {
            panic!("not a group");
        };
        let snapshot = cache.versions().snapshot(&TAGS);
        let input =
            KeyInput::<Bytes>::new(&FINGERPRINT, PREPARED, &snapshot).extended(b"", g.bind_tail);
        let (key, check) = cache.key(&input);
        let Lookup::Miss(guard) = cache.lookup(key, check) else {
            panic!("a new key must miss");
        };
        let entry = Entry::new(check, frames(), Duration::from_secs(60), Box::new(TAGS));
        cache.complete(guard, &snapshot, entry);
    }
    cache.run_pending_tasks();
    let mut i = 0;
    group.bench_function("extended_bind_10k", |b| {
        b.iter(|| {
            i = (i + 7_919) % groups.len();
            black_box(extended_hit(&cache, &groups[i]))
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
