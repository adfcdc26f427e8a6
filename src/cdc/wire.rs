//! The streaming-replication sub-protocol inside CopyBoth (PostgreSQL "Streaming Replication
//! Protocol"), as far as change data capture needs it: the server's XLogData and primary
//! keepalive messages, and the client's standby status update. Pure and bounds-checked:
//! nothing the server sends can panic the process.

use crate::protocol::fields::Reader;

/// Microseconds from the Unix epoch to PostgreSQL's epoch (2000-01-01 UTC).
pub const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// Microseconds since the Unix epoch now (what [`status_update`] takes).
pub fn now_unix_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// A log sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct Lsn(pub u64);

impl std::fmt::Display for Lsn {
    /// PostgreSQL's notation, `16/B374D848`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl std::str::FromStr for Lsn {
    type Err = WireError;

    fn from_str(s: &str) -> Result<Lsn, WireError> {
        let (hi, lo) = s.split_once('/').ok_or(WireError::BadLsn)?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| WireError::BadLsn)?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| WireError::BadLsn)?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("replication message truncated")]
    Truncated,
    #[error("unknown replication message tag {0:#04x}")]
    UnknownTag(u8),
    #[error("malformed LSN")]
    BadLsn,
    /// A pgoutput message whose shape pgmemo does not know (a column kind, a missing tuple,
    /// trailing bytes): never half-read.
    #[error("malformed pgoutput message")]
    Malformed,
}

/// A message the server sends inside CopyData during replication.
#[derive(Debug, PartialEq, Eq)]
pub enum ServerMessage<'a> {
    /// WAL data (for logical replication: one output-plugin message).
    XLogData {
        /// Where this data starts in the WAL.
        start: Lsn,
        /// The server's current end of WAL.
        wal_end: Lsn,
        /// Server clock, microseconds since 2000-01-01.
        sent_at: i64,
        data: &'a [u8],
    },
    /// Keepalive: the server's end of WAL, and whether it wants a status update at once
    /// (it disconnects after `wal_sender_timeout` without one).
    Keepalive {
        wal_end: Lsn,
        sent_at: i64,
        reply_requested: bool,
    },
}

/// Decodes the payload of one CopyData message from the server.
pub fn decode_server(payload: &[u8]) -> Result<ServerMessage<'_>, WireError> {
    let mut r = Reader::new(payload);
    let tag = r.u8().ok_or(WireError::Truncated)?;
    match tag {
        b'w' => {
            let start = lsn(&mut r)?;
            let wal_end = lsn(&mut r)?;
            let sent_at = i64(&mut r)?;
            Ok(ServerMessage::XLogData {
                start,
                wal_end,
                sent_at,
                data: r.remaining(),
            })
        }
        b'k' => {
            let wal_end = lsn(&mut r)?;
            let sent_at = i64(&mut r)?;
            let reply_requested = r.u8().ok_or(WireError::Truncated)? != 0;
            Ok(ServerMessage::Keepalive {
                wal_end,
                sent_at,
                reply_requested,
            })
        }
        other => Err(WireError::UnknownTag(other)),
    }
}

/// The payload of a standby status update (send it inside CopyData): WAL up to `written`
/// was received, up to `flushed` may be recycled by the server (for a logical slot: its
/// confirmed flush position), up to `applied` was applied.
pub fn status_update(
    written: Lsn,
    flushed: Lsn,
    applied: Lsn,
    now_unix_micros: i64,
    reply_requested: bool,
) -> [u8; 34] {
    let mut out = [0u8; 34];
    out[0] = b'r';
    out[1..9].copy_from_slice(&written.0.to_be_bytes());
    out[9..17].copy_from_slice(&flushed.0.to_be_bytes());
    out[17..25].copy_from_slice(&applied.0.to_be_bytes());
    let pg_micros = now_unix_micros.saturating_sub(PG_EPOCH_OFFSET_MICROS);
    out[25..33].copy_from_slice(&pg_micros.to_be_bytes());
    out[33] = u8::from(reply_requested);
    out
}

fn lsn(r: &mut Reader<'_>) -> Result<Lsn, WireError> {
    r.u64().map(Lsn).ok_or(WireError::Truncated)
}

fn i64(r: &mut Reader<'_>) -> Result<i64, WireError> {
    // The same eight bytes, read as signed.
    r.u64().map(|v| v as i64).ok_or(WireError::Truncated)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_text_round_trips() {
        let l: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(l, Lsn(0x16_B374_D848));
        assert_eq!(l.to_string(), "16/B374D848");
        assert_eq!("0/0".parse::<Lsn>().unwrap(), Lsn(0));
        for bad in ["", "16", "x/1", "1/", "100000000/0"] {
            assert_eq!(bad.parse::<Lsn>(), Err(WireError::BadLsn), "{bad}");
        }
    }

    #[test]
    fn xlogdata_and_keepalive_decode() {
        let mut w = vec![b'w'];
        w.extend_from_slice(&10u64.to_be_bytes());
        w.extend_from_slice(&20u64.to_be_bytes());
        w.extend_from_slice(&7i64.to_be_bytes());
        w.extend_from_slice(b"Bpayload");
        assert_eq!(
            decode_server(&w),
            Ok(ServerMessage::XLogData {
                start: Lsn(10),
                wal_end: Lsn(20),
                sent_at: 7,
                data: b"Bpayload",
            })
        );
        let mut k = vec![b'k'];
        k.extend_from_slice(&99u64.to_be_bytes());
        k.extend_from_slice(&5i64.to_be_bytes());
        k.push(1);
        assert_eq!(
            decode_server(&k),
            Ok(ServerMessage::Keepalive {
                wal_end: Lsn(99),
                sent_at: 5,
                reply_requested: true,
            })
        );
    }

    #[test]
    fn truncated_and_unknown_messages_are_errors() {
        assert_eq!(decode_server(b""), Err(WireError::Truncated));
        assert_eq!(decode_server(b"w\0\0"), Err(WireError::Truncated));
        assert_eq!(
            decode_server(b"k\0\0\0\0\0\0\0\x01"),
            Err(WireError::Truncated)
        );
        assert_eq!(decode_server(b"z"), Err(WireError::UnknownTag(b'z')));
        // Every prefix of a valid keepalive fails cleanly.
        let mut k = vec![b'k'];
        k.extend_from_slice(&[0; 17]);
        for cut in 0..k.len() {
            assert!(decode_server(&k[..cut]).is_err());
        }
    }

    #[test]
    fn status_update_layout() {
        let unix = PG_EPOCH_OFFSET_MICROS + 1_000;
        let m = status_update(Lsn(1), Lsn(2), Lsn(3), unix, true);
        assert_eq!(m[0], b'r');
        assert_eq!(&m[1..9], &1u64.to_be_bytes());
        assert_eq!(&m[9..17], &2u64.to_be_bytes());
        assert_eq!(&m[17..25], &3u64.to_be_bytes());
        assert_eq!(&m[25..33], &1_000i64.to_be_bytes());
        assert_eq!(m[33], 1);
    }
}
