//! The hot-key file: round trip, authentication, versions, truncation and the size bound.

use super::*;

fn secret(byte: u8) -> KeySecret {
    KeySecret::from_bytes([byte; 16])
}

fn keys() -> Vec<HotKey> {
    vec![
        HotKey {
            database: "shop".into(),
            user: "app".into(),
            params: vec![
                ("user".into(), "app".into()),
                ("database".into(), "shop".into()),
                ("options".into(), "-c search_path=app,public".into()),
            ],
            fingerprint: "00112233445566778899aabbccddeeff".into(),
            request: HotRequest::Simple {
                sql: "SELECT * FROM products WHERE id = 1".into(),
            },
            hits: 900,
        },
        HotKey {
            database: "shop".into(),
            user: "reporting".into(),
            params: vec![],
            fingerprint: "ffeeddccbbaa99887766554433221100".into(),
            request: HotRequest::extended(
                "SELECT name FROM \"Users\" WHERE id = $1 -- é\n".into(),
                vec![23],
                &[0, 0, 0, 1, 0, 0, 0, 1, b'7', 0, 0],
            ),
            hits: 12,
        },
    ]
}

#[test]
fn round_trip() {
    let s = secret(1);
    let bytes = encode(&keys(), &s);
    assert!(bytes.starts_with(b"pgmemo-hot-keys v1\n"));
    let back = decode(&bytes, &s).unwrap();
    assert_eq!(back, keys());
    assert_eq!(
        back[1].request.bind_tail().unwrap(),
        [0, 0, 0, 1, 0, 0, 0, 1, b'7', 0, 0]
    );
    assert_eq!(back[1].request.sql(), keys()[1].request.sql());
    assert_eq!(back[0].request.bind_tail(), None);
}

#[test]
fn empty_list() {
    let s = secret(1);
    let bytes = encode(&[], &s);
    assert_eq!(decode(&bytes, &s).unwrap(), []);
}

#[test]
fn one_flipped_byte_anywhere_is_refused() {
    let s = secret(1);
    let bytes = encode(&keys(), &s);
    let body_start = bytes
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .nth(1)
        .map(|(i, _)| i + 1)
        .unwrap();
    for at in 0..bytes.len() {
        for flip in [0x01, 0x80] {
            let mut bad = bytes.clone();
            bad[at] ^= flip;
            let got = decode(&bad, &s);
            if at >= body_start {
                assert!(
                    matches!(got, Err(HotKeysError::BadTag)),
                    "byte {at} of the body: {got:?}"
                );
            } else {
                assert!(got.is_err(), "byte {at} of the header or tag line: {got:?}");
            }
        }
    }
}

#[test]
fn another_secret_is_refused() {
    let bytes = encode(&keys(), &secret(1));
    assert!(matches!(
        decode(&bytes, &secret(2)),
        Err(HotKeysError::BadTag)
    ));
    // The key is derived with a label of its own: not the envelope key itself.
    assert_ne!(secret(1).hot_keys_key(), secret(1).envelope_secret());
    assert_ne!(secret(1).hot_keys_key(), secret(2).hot_keys_key());
}

#[test]
fn other_versions_and_other_files_are_refused() {
    let s = secret(1);
    let bytes = encode(&keys(), &s);
    let mut v2 = b"pgmemo-hot-keys v2".to_vec();
    v2.extend_from_slice(&bytes[HEADER.len()..]);
    assert!(matches!(decode(&v2, &s), Err(HotKeysError::Version(v)) if v == "2"));
    assert!(matches!(
        decode(b"[server]\nlisten = 1\n", &s),
        Err(HotKeysError::NotHotKeys)
    ));
    assert!(matches!(decode(b"", &s), Err(HotKeysError::NotHotKeys)));
}

#[test]
fn truncated_files_are_refused() {
    let s = secret(1);
    let bytes = encode(&keys(), &s);
    for len in 1..bytes.len() {
        let got = decode(&bytes[..len], &s);
        assert!(got.is_err(), "{len} bytes: {got:?}");
    }
    // Cut anywhere after the tag line's length, or in the header: said so.
    for len in [
        5,
        HEADER.len(),
        HEADER.len() + 2,
        bytes.len() - 1,
        bytes.len() - 40,
    ] {
        let got = decode(&bytes[..len], &s);
        assert!(
            matches!(got, Err(HotKeysError::Truncated)),
            "{len} bytes: {got:?}"
        );
    }
    // Bytes added after the body are a change, not a truncation.
    let mut longer = bytes.clone();
    longer.push(b' ');
    assert!(matches!(decode(&longer, &s), Err(HotKeysError::BadTag)));
}

#[test]
fn the_size_bound() {
    let s = secret(1);
    let over = vec![b'x'; MAX_FILE_BYTES + 1];
    assert!(matches!(
        decode(&over, &s),
        Err(HotKeysError::TooLarge {
            max: MAX_FILE_BYTES
        })
    ));
    // Encoding keeps the hottest keys that fit.
    let big = HotKey {
        database: "d".into(),
        user: "u".into(),
        params: vec![],
        fingerprint: "00".repeat(16),
        request: HotRequest::Simple {
            sql: "x".repeat(1 << 20),
        },
        hits: 1,
    };
    let many = vec![big; 20];
    let bytes = encode(&many, &s);
    assert!(bytes.len() <= MAX_FILE_BYTES, "{}", bytes.len());
    let back = decode(&bytes, &s).unwrap();
    assert_eq!(back.len(), 15, "16 MiB holds 15 of the 1 MiB keys");
    assert_eq!(back[..], many[..15]);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hot");
    std::fs::write(&path, vec![b'x'; 101]).unwrap();
    assert!(matches!(
        read(&path, 100),
        Err(HotKeysError::TooLarge { max: 100 })
    ));
    assert_eq!(read(&path, 101).unwrap().len(), 101);
    assert!(matches!(
        read(&dir.path().join("absent"), 100),
        Err(HotKeysError::Io(e)) if e.kind() == io::ErrorKind::NotFound
    ));
}

#[test]
fn write_atomic_replaces_the_file_and_leaves_no_temporary() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hot-keys");
    let s = secret(3);
    write_atomic(&path, &encode(&keys()[..1], &s)).unwrap();
    write_atomic(&path, &encode(&keys(), &s)).unwrap();
    let bytes = read(&path, MAX_FILE_BYTES).unwrap();
    assert_eq!(decode(&bytes, &s).unwrap(), keys());
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["hot-keys"]);
    // Hot keys hold client requests: the file is pgmemo's user's only.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // A path that names no file.
    assert!(write_atomic(Path::new("/"), b"x").is_err());
}

#[test]
fn a_counted_result_goes_to_the_file_and_back_unchanged() {
    use bytes::Bytes;
    let login = LoginKey {
        database: "shop".into(),
        user: "app".into(),
        params: vec![
            ("user".into(), "app".into()),
            ("client_encoding".into(), "UTF8".into()),
        ],
    };
    let fp = [7u8; 16];
    let requests = [
        Request::Simple {
            sql: Bytes::from_static(b"SELECT 1"),
        },
        Request::Extended {
            sql: Bytes::from_static(b"SELECT $1::int"),
            param_types: Bytes::from_static(&[0, 0, 0, 23]),
            bind_tail: Bytes::from_static(&[0, 0, 0, 1, 0, 0, 0, 1, b'7', 0, 1, 0, 0]),
        },
        // No declared types (what libpq sends).
        Request::Extended {
            sql: Bytes::from_static(b"SELECT $1"),
            param_types: Bytes::new(),
            bind_tail: Bytes::from_static(&[0, 0, 0, 1, 255, 255, 255, 255, 0, 0]),
        },
    ];
    let s = secret(4);
    for request in requests {
        let key = HotKey::from_parts(&login, &fp, &request, 9).unwrap();
        assert_eq!(key.fingerprint, "07".repeat(16));
        let back = decode(&encode(std::slice::from_ref(&key), &s), &s).unwrap();
        assert_eq!(back[0].to_parts(), Some((login.clone(), request, fp)));
    }
    // SQL that is not UTF-8 cannot be a JSON string: not carried over.
    let latin1 = Request::Simple {
        sql: Bytes::from_static(b"SELECT '\xe9'"),
    };
    assert!(HotKey::from_parts(&login, &fp, &latin1, 1).is_none());
    // A fingerprint that is not 16 bytes of hex does not decode.
    let mut bad = HotKey::from_parts(
        &login,
        &fp,
        &Request::Simple {
            sql: "SELECT 1".into(),
        },
        1,
    )
    .unwrap();
    bad.fingerprint.pop();
    assert!(bad.to_parts().is_none());
}

#[test]
fn merging_adds_this_run_to_the_previous_halved_and_keeps_the_hottest() {
    let [a, b] = <[HotKey; 2]>::try_from(keys()).unwrap();
    let mut c = a.clone();
    c.fingerprint = "0f".repeat(16);
    c.hits = 5;
    // Previous: a 900, b 12; this run: a 100, c 5.
    let mut a_now = a.clone();
    a_now.hits = 100;
    let merged = merge(vec![a.clone(), b.clone()], vec![a_now, c.clone()], 10);
    let hits: Vec<(String, u64)> = merged
        .iter()
        .map(|k| (k.fingerprint.clone(), k.hits))
        .collect();
    assert_eq!(
        hits,
        vec![
            (a.fingerprint.clone(), 550),
            (b.fingerprint.clone(), 6),
            (c.fingerprint.clone(), 5)
        ],
        "the same result is counted once; another fingerprint is another key"
    );
    assert_eq!(merge(vec![a.clone(), b], vec![c], 1).len(), 1, "at most n");
    // A key nobody asks for again fades out.
    let mut old = vec![a];
    for _ in 0..20 {
        old = merge(old, Vec::new(), 10);
    }
    assert!(old.is_empty());
}
