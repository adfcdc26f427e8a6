//! The streaming-replication messages inside CopyData (`cdc::wire::decode_server`: XLogData
//! and primary keepalive) on arbitrary payloads, and the pgoutput decoder on the WAL data an
//! XLogData carries. Asserts: no panic; XLogData needs its 25-byte header and carries exactly
//! the rest as a slice of the payload; a keepalive needs 18 bytes; re-encoding a decoded
//! message gives the payload back (decode(encode(x)) = x from the wire side); unknown tags and
//! short payloads are errors; the LSN text form round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgmemo::cdc::pgoutput;
use pgmemo::cdc::wire::{Lsn, ServerMessage, WireError, decode_server, status_update};
use pgmemo_fuzz::within;

fuzz_target!(|payload: &[u8]| {
    match decode_server(payload) {
        Ok(ServerMessage::XLogData {
            start,
            wal_end,
            sent_at,
            data,
        }) => {
            assert_eq!(payload[0], b'w');
            assert!(within(payload, data));
            assert_eq!(data.len() + 25, payload.len());
            let mut again = vec![b'w'];
            again.extend_from_slice(&start.0.to_be_bytes());
            again.extend_from_slice(&wal_end.0.to_be_bytes());
            again.extend_from_slice(&sent_at.to_be_bytes());
            again.extend_from_slice(data);
            assert_eq!(again, payload);
            let _ = pgoutput::decode(data);
        }
        Ok(ServerMessage::Keepalive {
            wal_end,
            sent_at,
            reply_requested,
        }) => {
            assert_eq!(payload[0], b'k');
            assert!(payload.len() >= 18);
            let mut again = vec![b'k'];
            again.extend_from_slice(&wal_end.0.to_be_bytes());
            again.extend_from_slice(&sent_at.to_be_bytes());
            again.push(u8::from(reply_requested));
            assert_eq!(again[..17], payload[..17]);
            assert_eq!(reply_requested, payload[17] != 0);
        }
        Err(WireError::UnknownTag(t)) => {
            assert!(t != b'w' && t != b'k' && payload.first() == Some(&t))
        }
        Err(WireError::Truncated) => {
            let need = match payload.first() {
                Some(b'w') => 25,
                Some(b'k') => 18,
                _ => 1,
            };
            assert!(
                payload.len() < need,
                "a long enough payload was called truncated"
            );
        }
        Err(e) => panic!("decode_server gave {e}"),
    }
    // LSNs read from the payload: text form round-trips; a status update lays them out.
    if let Some(b) = payload.get(..8) {
        let lsn = Lsn(u64::from_be_bytes(b.try_into().unwrap()));
        assert_eq!(lsn.to_string().parse::<Lsn>(), Ok(lsn));
        let m = status_update(
            lsn,
            lsn,
            lsn,
            i64::from_be_bytes(b.try_into().unwrap()),
            true,
        );
        assert_eq!(m[1..9], b[..]);
    }
    if let Ok(text) = std::str::from_utf8(payload) {
        if let Ok(lsn) = text.parse::<Lsn>() {
            assert_eq!(lsn.to_string().parse::<Lsn>(), Ok(lsn));
        }
    }
});
