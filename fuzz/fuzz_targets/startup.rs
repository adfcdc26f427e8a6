//! The startup-phase packet parser (`protocol::startup`: SSLRequest, GSSENCRequest,
//! CancelRequest, StartupMessage 3.x) on arbitrary bytes, the way `session::negotiate` reads
//! them: the 4-byte length first (`packet_len`), then the packet parsed from exactly that
//! many bytes. Asserts: no panic; an accepted length is within 8..=10 000; a cancel key is the
//! packet after its code and 8..=260 bytes; a StartupMessage keeps its raw bytes, its
//! protocol version is the code's halves, and (3.x) its parameter names are unique, non-empty
//! and NUL-free; `with_database` builds a packet that parses back to the same parameters with
//! only the database changed.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use pgmemo::protocol::startup::{
    self, MAX_CANCEL_KEY, MAX_STARTUP_PACKET, StartupMessage, StartupPacket,
};

fn check(raw: &[u8]) {
    let Ok(packet) = startup::parse(Bytes::copy_from_slice(raw)) else {
        return;
    };
    let code = i32::from_be_bytes(raw[4..8].try_into().unwrap());
    match packet {
        StartupPacket::SslRequest => assert_eq!(code, startup::SSL_REQUEST_CODE),
        StartupPacket::GssEncRequest => assert_eq!(code, startup::GSSENC_REQUEST_CODE),
        StartupPacket::Cancel { key } => {
            assert_eq!(code, startup::CANCEL_REQUEST_CODE);
            assert!((8..=4 + MAX_CANCEL_KEY).contains(&key.len()));
            assert_eq!(&key[..], &raw[8..]);
        }
        StartupPacket::Startup(m) => {
            assert_eq!(&m.raw[..], raw);
            assert_eq!(u32::from(m.major) << 16 | u32::from(m.minor), code as u32);
            if m.major != 3 {
                assert!(m.params.is_empty());
                return;
            }
            for (i, (k, v)) in m.params.iter().enumerate() {
                assert!(!k.is_empty() && !k.contains(&0) && !v.contains(&0));
                assert!(
                    m.params[..i].iter().all(|(other, _)| other != k),
                    "names are unique"
                );
            }
            let _ = (m.user(), m.database());
            rebuilt(&m, b"fuzzdb");
        }
    }
}

/// `with_database` keeps every other parameter and the version, and parses back.
fn rebuilt(m: &StartupMessage, db: &[u8]) {
    let login = m.with_database(db);
    let Ok(StartupPacket::Startup(again)) = startup::parse(login.raw.clone()) else {
        panic!(
            "with_database built a packet that does not parse: {:?}",
            login.raw
        );
    };
    // A packet grown past PostgreSQL's limit is refused by the server, which tells the
    // client: harmless, so only a packet within it must read back through `packet_len`.
    if login.raw.len() <= MAX_STARTUP_PACKET {
        assert_eq!(startup::packet_len(&login.raw), Ok(Some(login.raw.len())));
    }
    assert_eq!((again.major, again.minor), (m.major, m.minor));
    assert_eq!(again.param("database"), Some(db));
    let others = |p: &StartupMessage| {
        p.params
            .iter()
            .filter(|(k, _)| k.as_ref() != b"database")
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(others(&again), others(m));
    assert_eq!(again.params, login.params);
}

fuzz_target!(|data: &[u8]| {
    match startup::packet_len(data) {
        Ok(Some(len)) => {
            assert!((8..=MAX_STARTUP_PACKET).contains(&len));
            if let Some(raw) = data.get(..len) {
                check(raw);
            }
        }
        Ok(None) => assert!(data.len() < 4),
        Err(_) => {}
    }
    // The parser itself on whatever it is given (the caller's length check aside).
    if data.len() >= 8 {
        check(data);
    } else {
        assert!(startup::parse(Bytes::copy_from_slice(data)).is_err());
    }
});
