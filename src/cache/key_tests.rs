//! Tests of `key.rs` (kept apart so the module stays readable).

use super::*;
use crate::cache::versions::{Tag, Versions};

fn secret() -> KeySecret {
    KeySecret::from_bytes(*b"0123456789abcdef")
}

fn snap() -> VersionSnapshot {
    Versions::new(1024).snapshot(&[Tag { db: 1, rel: 10 }])
}

fn key(input: &KeyInput<'_, &[u8]>) -> CacheKey {
    input.compute(&secret()).0
}

#[test]
fn stable_within_a_process_and_across_secret_copies() {
    let s = snap();
    let input = KeyInput::<&[u8]>::new(b"fp", b"select 1", &s);
    let a = input.compute(&secret());
    let b = input.compute(&secret());
    let c = input.compute(&secret().clone());
    assert_eq!(a, b);
    assert_eq!(a, c);
}

#[test]
fn l2_keys_follow_the_shared_counters_only() {
    let tag = Tag { db: 1, rel: 10 };
    let (here, there) = (Versions::new(64), Versions::new(64));
    here.bump(&[tag]);
    here.bump_epoch(crate::cache::versions::EpochCause::Admin);
    let (a, b) = (here.snapshot(&[tag]), there.snapshot(&[tag]));
    let shared = SharedSnapshot {
        generation: "g1".into(),
        epoch: 3,
        versions: vec![7],
    };
    let ka = KeyInput::<&[u8]>::new(b"fp", b"q", &a).shared(&shared);
    let kb = KeyInput::<&[u8]>::new(b"fp", b"q", &b).shared(&shared);
    let secret = secret();
    let l2 = ka.compute_l2(&secret).expect("shared");
    assert_eq!(
        Some(l2),
        kb.compute_l2(&secret),
        "instances with other local counters share the L2 key"
    );
    assert_ne!(
        ka.compute(&secret),
        kb.compute(&secret),
        "L1 keys are local"
    );
    assert_ne!(ka.compute(&secret).0, l2.0);
    assert_eq!(
        KeyInput::<&[u8]>::new(b"fp", b"q", &a).compute_l2(&secret),
        None
    );
    assert_ne!(
        KeyInput::<&[u8]>::new(b"fp", b"q", &a).compute(&secret),
        ka.compute(&secret),
        "the shared counters are part of the L1 key"
    );
    for other in [
        SharedSnapshot {
            generation: "g2".into(),
            ..shared.clone()
        },
        SharedSnapshot {
            epoch: 4,
            ..shared.clone()
        },
        SharedSnapshot {
            versions: vec![8],
            ..shared.clone()
        },
    ] {
        let k = KeyInput::<&[u8]>::new(b"fp", b"q", &a).shared(&other);
        let (slot, check) = k.compute_l2(&secret).expect("shared");
        assert_eq!(slot, l2.0, "the address does not depend on the counters");
        assert_ne!(check, l2.1, "other counters fail the check: {other:?}");
        assert_ne!(k.compute(&secret), ka.compute(&secret), "{other:?}");
    }
    assert_eq!(
        KeyInput::<&[u8]>::new(b"fp", b"q", &b).compute_l2_slot(&secret),
        l2.0,
        "the address is known without counters"
    );
    let other_query = KeyInput::<&[u8]>::new(b"fp", b"q2", &a).shared(&shared);
    assert_ne!(other_query.compute_l2(&secret).map(|k| k.0), Some(l2.0));
}

#[test]
fn every_field_changes_the_key_and_the_check() {
    let s = snap();
    let versions = Versions::new(1024);
    let tag = Tag { db: 1, rel: 10 };
    versions.bump(&[tag]);
    let bumped = versions.snapshot(&[tag]);
    versions.bump_epoch(crate::cache::versions::EpochCause::Admin);
    let new_epoch = versions.snapshot(&[tag]);
    let other_tag = versions.snapshot(&[Tag { db: 1, rel: 11 }]);
    assert_eq!(
        bumped.versions(),
        new_epoch.versions(),
        "only the epoch differs"
    );

    let p1: [Option<&[u8]>; 1] = [Some(b"1")];
    let base = KeyInput::<&[u8]>::new(b"fp", b"select $1", &s)
        .params(&p1)
        .param_types(&[23])
        .param_formats(&[0])
        .result_formats(&[0]);
    let p2: [Option<&[u8]>; 1] = [Some(b"2")];
    let pnull: [Option<&[u8]>; 1] = [None];
    let pempty: [Option<&[u8]>; 1] = [Some(b"")];
    let variants = [
        base,
        KeyInput {
            fingerprint: b"fq",
            ..base
        },
        KeyInput {
            sql: b"select $2",
            ..base
        },
        base.params(&p2),
        base.params(&pnull),
        base.params(&pempty),
        base.params(&[]),
        base.param_types(&[20]),
        base.param_types(&[]),
        base.param_formats(&[1]),
        base.result_formats(&[1]),
        base.result_formats(&[0, 0]),
        base.extended(b"", b""),
        base.extended(b"\0\0\0\x17", b""),
        base.extended(b"", b"\0\0\0\0\0\0"),
        base.extended(b"\0\0\0\x17", b"\0\0\0\0\0\x01"),
        KeyInput {
            snapshot: &bumped,
            ..base
        },
        KeyInput {
            snapshot: &new_epoch,
            ..base
        },
        KeyInput {
            snapshot: &other_tag,
            ..base
        },
    ];
    let secret = secret();
    let computed: Vec<_> = variants.iter().map(|v| v.compute(&secret)).collect();
    for (i, a) in computed.iter().enumerate() {
        for (j, b) in computed.iter().enumerate().skip(i + 1) {
            assert_ne!(a.0, b.0, "variants {i} and {j} share a key");
            assert_ne!(a.1, b.1, "variants {i} and {j} share a check");
        }
    }
}

#[test]
fn field_boundaries_matter() {
    let s = snap();
    let a = key(&KeyInput::new(b"ab", b"c", &s));
    let b = key(&KeyInput::new(b"a", b"bc", &s));
    assert_ne!(a, b);

    let split: [Option<&[u8]>; 2] = [Some(b"ab"), Some(b"c")];
    let joined: [Option<&[u8]>; 2] = [Some(b"a"), Some(b"bc")];
    let one: [Option<&[u8]>; 1] = [Some(b"abc")];
    let k_split = key(&KeyInput::new(b"fp", b"q", &s).params(&split));
    let k_joined = key(&KeyInput::new(b"fp", b"q", &s).params(&joined));
    let k_one = key(&KeyInput::new(b"fp", b"q", &s).params(&one));
    assert_ne!(k_split, k_joined);
    assert_ne!(k_split, k_one);

    // A parameter cannot impersonate the fields after it, nor SQL bytes its neighbours.
    let p: [Option<&[u8]>; 1] = [Some(b"x")];
    let with_param = key(&KeyInput::new(b"fp", b"q", &s).params(&p));
    let in_sql = key(&KeyInput::new(b"fp", b"qx", &s));
    assert_ne!(with_param, in_sql);

    // Moving a format code from the parameter list to the result list changes the key.
    let left = key(&KeyInput::new(b"fp", b"q", &s).param_formats(&[1]));
    let right = key(&KeyInput::new(b"fp", b"q", &s).result_formats(&[1]));
    assert_ne!(left, right);
}

#[test]
fn different_secret_different_key() {
    let s = snap();
    let input = KeyInput::<&[u8]>::new(b"fp", b"select 1", &s);
    let a = input.compute(&secret());
    let b = input.compute(&KeySecret::from_bytes(*b"0123456789abcdeF"));
    assert_ne!(a.0, b.0);
    assert_ne!(a.1, b.1);
    let g1 = KeySecret::generate().unwrap();
    let g2 = KeySecret::generate().unwrap();
    assert_ne!(input.compute(&g1).0, input.compute(&g2).0);
}

#[test]
fn parameter_holder_type_does_not_change_the_key() {
    let s = snap();
    let as_slices: [Option<&[u8]>; 2] = [Some(b"42"), None];
    let as_bytes = [Some(bytes::Bytes::from_static(b"42")), None];
    let a = KeyInput::new(b"fp", b"q", &s)
        .params(&as_slices)
        .compute(&secret());
    let with_bytes = KeyInput::new(b"fp", b"q", &s).params(&as_bytes);
    let copy = with_bytes; // Copy even though `Bytes` is not
    assert_eq!(a, with_bytes.compute(&secret()));
    assert_eq!(a, copy.compute(&secret()));
}

#[test]
fn hex_secrets() {
    let hex = "000102030405060708090a0b0c0d0e0f";
    let from_hex = KeySecret::from_hex(hex).unwrap();
    let from_bytes = KeySecret::from_bytes(core::array::from_fn(|i| i as u8));
    let s = snap();
    let input = KeyInput::<&[u8]>::new(b"fp", b"q", &s);
    assert_eq!(input.compute(&from_hex), input.compute(&from_bytes));
    for bad in [
        "",
        "00",
        &hex[..31],
        &format!("{hex}00"),
        &hex.replace('0', "g"),
    ] {
        assert!(KeySecret::from_hex(bad).is_err(), "{bad:?}");
    }
    assert_eq!(format!("{from_hex:?}"), "KeySecret(<redacted>)");
}

#[test]
fn key_hasher_spreads_cache_keys() {
    let h = |k: CacheKey| KeyBuildHasher.hash_one(k);
    assert_ne!(h(CacheKey(1)), h(CacheKey(2)));
    assert_ne!(h(CacheKey(1 << 64)), h(CacheKey(2 << 64)));
    assert_ne!(
        KeyBuildHasher.hash_one(b"ab"),
        KeyBuildHasher.hash_one(b"ba")
    );
}
