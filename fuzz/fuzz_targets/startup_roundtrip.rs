//! decode(encode(x)) = x for the startup packets pgmemo builds (`encode_startup`,
//! `encode_cancel`, `StartupMessage::with_database`), from structured input: any protocol
//! version and parameter list (NUL-free), any cancel key. A 3.x StartupMessage reads back
//! its version and its parameters as PostgreSQL reads them (a repeated name: its first
//! position, its last value); another major keeps none; the codes of the special requests
//! read as those requests.
#![no_main]

use arbitrary::Arbitrary;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use pgmemo::protocol::startup::{self, MAX_CANCEL_KEY, StartupPacket};

#[derive(Debug, Arbitrary)]
struct Input {
    major: u16,
    minor: u16,
    /// Small names, so repeats are common.
    params: Vec<(u8, String)>,
    key: Vec<u8>,
    database: String,
}

fn clean(s: &str) -> String {
    s.replace('\0', "")
}

fuzz_target!(|input: Input| {
    let names = [
        "user",
        "database",
        "options",
        "application_name",
        "_pq_.x",
        "replication",
    ];
    let params: Vec<(String, String)> = input
        .params
        .iter()
        .take(32)
        .map(|(n, v)| (names[usize::from(*n) % names.len()].to_owned(), clean(v)))
        .collect();
    let pairs: Vec<(&str, &str)> = params
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let raw = startup::encode_startup(input.major, input.minor, &pairs);
    assert_eq!(
        i32::from_be_bytes(raw[..4].try_into().unwrap()) as usize,
        raw.len()
    );
    let code = (i32::from(input.major) << 16) | i32::from(input.minor);
    let parsed = startup::parse(raw.clone());
    match code {
        startup::SSL_REQUEST_CODE => assert_eq!(parsed, Ok(StartupPacket::SslRequest)),
        startup::GSSENC_REQUEST_CODE => assert_eq!(parsed, Ok(StartupPacket::GssEncRequest)),
        startup::CANCEL_REQUEST_CODE => {} // the parameters read as a key: not a startup
        _ => {
            let Ok(StartupPacket::Startup(m)) = parsed else {
                panic!("an encoded startup does not parse: {parsed:?}");
            };
            assert_eq!((m.major, m.minor), (input.major, input.minor));
            assert_eq!(m.raw, raw);
            if input.major == 3 {
                // PostgreSQL's reading: first position, last value.
                let mut want: Vec<(Bytes, Bytes)> = Vec::new();
                for (k, v) in &params {
                    let v = Bytes::copy_from_slice(v.as_bytes());
                    match want.iter_mut().find(|(n, _)| n.as_ref() == k.as_bytes()) {
                        Some((_, old)) => *old = v,
                        None => want.push((Bytes::copy_from_slice(k.as_bytes()), v)),
                    }
                }
                assert_eq!(m.params, want);
                let db = clean(&input.database);
                let login = m.with_database(db.as_bytes());
                let Ok(StartupPacket::Startup(again)) = startup::parse(login.raw.clone()) else {
                    panic!("with_database does not parse back");
                };
                assert_eq!(again, login);
                assert_eq!(again.param("database"), Some(db.as_bytes()));
            } else {
                assert!(m.params.is_empty());
            }
        }
    }
    // Cancel: pid + secret; 3.0 keys are 8 bytes, 3.2 up to 4 + 256.
    let key = &input.key[..input.key.len().min(4 + MAX_CANCEL_KEY + 4)];
    let parsed = startup::parse(startup::encode_cancel(key));
    if (8..=4 + MAX_CANCEL_KEY).contains(&key.len()) {
        assert_eq!(
            parsed,
            Ok(StartupPacket::Cancel {
                key: Bytes::copy_from_slice(key)
            })
        );
    } else {
        assert!(
            parsed.is_err(),
            "a cancel key of {} bytes was accepted",
            key.len()
        );
    }
});
