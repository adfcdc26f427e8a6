//! The `pgoutput` logical-decoding messages (protocol version 1, no streaming of in-progress
//! transactions), decoded only as far as invalidation needs: transaction boundaries with
//! their LSNs, relation descriptions (OID → schema and name, for logs), and which relation
//! each change touched. Row contents are never decoded. [`TxnCollector`] turns the message
//! stream into one [`CommittedTxn`] per commit, bounded in memory.

use std::collections::BTreeSet;

use super::wire::{Lsn, WireError};
use crate::protocol::fields::Reader;

/// Relations remembered per transaction; a transaction touching more is reported as
/// `overflowed` (the caller bumps the epoch instead).
pub const MAX_RELATIONS_PER_TXN: usize = 4_096;

/// One decoded pgoutput message.
#[derive(Debug, PartialEq, Eq)]
pub enum Message<'a> {
    Begin {
        final_lsn: Lsn,
        xid: u32,
    },
    Commit {
        commit_lsn: Lsn,
        end_lsn: Lsn,
        /// Commit time, microseconds since 2000-01-01 (the server's clock).
        committed_at: i64,
    },
    Relation {
        oid: u32,
        namespace: &'a [u8],
        name: &'a [u8],
    },
    /// INSERT, UPDATE or DELETE of a row of `rel`.
    Row {
        rel: u32,
    },
    /// TRUNCATE of the relations whose OIDs are packed (4 bytes each, big-endian) in `rels`.
    Truncate {
        rels: &'a [u8],
    },
    /// Origin, Type, logical Message and anything else that changes no relation.
    Other(u8),
}

impl Message<'_> {
    /// The OIDs a Truncate names.
    pub fn truncated(rels: &[u8]) -> impl Iterator<Item = u32> + '_ {
        rels.chunks_exact(4)
            .filter_map(|c| <[u8; 4]>::try_from(c).ok())
            .map(u32::from_be_bytes)
    }
}

/// Decodes one pgoutput message (the `data` of an XLogData).
pub fn decode(data: &[u8]) -> Result<Message<'_>, WireError> {
    let mut r = Reader::new(data);
    let tag = r.u8().ok_or(WireError::Truncated)?;
    let t = WireError::Truncated;
    Ok(match tag {
        b'B' => {
            let final_lsn = Lsn(u64_be(&mut r)?);
            let _commit_ts = u64_be(&mut r)?;
            let xid = u32_be(&mut r)?;
            Message::Begin { final_lsn, xid }
        }
        b'C' => {
            let _flags = r.u8().ok_or(t)?;
            let commit_lsn = Lsn(u64_be(&mut r)?);
            let end_lsn = Lsn(u64_be(&mut r)?);
            let committed_at = u64_be(&mut r)? as i64;
            Message::Commit {
                commit_lsn,
                end_lsn,
                committed_at,
            }
        }
        b'R' => {
            let oid = u32_be(&mut r)?;
            let namespace = r.cstr().ok_or(WireError::Truncated)?;
            let name = r.cstr().ok_or(WireError::Truncated)?;
            Message::Relation {
                oid,
                namespace,
                name,
            }
        }
        b'I' | b'U' | b'D' => Message::Row {
            rel: u32_be(&mut r)?,
        },
        b'T' => {
            let n = usize::try_from(u32_be(&mut r)?).map_err(|_| WireError::Truncated)?;
            let _options = r.u8().ok_or(WireError::Truncated)?;
            let rels = r
                .bytes(n.checked_mul(4).ok_or(WireError::Truncated)?)
                .ok_or(WireError::Truncated)?;
            Message::Truncate { rels }
        }
        other => Message::Other(other),
    })
}

fn u64_be(r: &mut Reader<'_>) -> Result<u64, WireError> {
    r.u64().ok_or(WireError::Truncated)
}

fn u32_be(r: &mut Reader<'_>) -> Result<u32, WireError> {
    r.u32().ok_or(WireError::Truncated)
}

/// A committed transaction as invalidation sees it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CommittedTxn {
    pub commit_lsn: Lsn,
    /// The position just past the commit: what the slot may be confirmed up to.
    pub end_lsn: Lsn,
    /// Commit time, microseconds since 2000-01-01 (the server's clock).
    pub committed_at: i64,
    /// Relation OIDs with a changed row or a truncation (sorted, unique).
    pub relations: BTreeSet<u32>,
    /// It touched more than [`MAX_RELATIONS_PER_TXN`] relations: treat as "everything".
    pub overflowed: bool,
}

/// Collects the relations each transaction changes, from Begin to Commit.
#[derive(Debug, Default)]
pub struct TxnCollector {
    open: Option<CommittedTxn>,
}

impl TxnCollector {
    /// A transaction's Begin has been seen and its Commit not yet.
    pub fn in_transaction(&self) -> bool {
        self.open.is_some()
    }

    /// Feeds one message; returns the transaction it committed, if it was a Commit. A change
    /// outside Begin/Commit (which pgoutput never sends) opens an implicit transaction, so
    /// nothing is lost.
    pub fn feed(&mut self, message: &Message<'_>) -> Option<CommittedTxn> {
        match message {
            Message::Begin { .. } => {
                self.open = Some(CommittedTxn::default());
                None
            }
            Message::Commit {
                commit_lsn,
                end_lsn,
                committed_at,
            } => {
                let mut txn = self.open.take().unwrap_or_default();
                txn.commit_lsn = *commit_lsn;
                txn.end_lsn = *end_lsn;
                txn.committed_at = *committed_at;
                Some(txn)
            }
            Message::Row { rel } => {
                self.add(std::iter::once(*rel));
                None
            }
            Message::Truncate { rels } => {
                self.add(Message::truncated(rels));
                None
            }
            Message::Relation { .. } | Message::Other(_) => None,
        }
    }

    fn add(&mut self, rels: impl Iterator<Item = u32>) {
        let txn = self.open.get_or_insert_with(CommittedTxn::default);
        for rel in rels {
            if txn.overflowed {
                return;
            }
            if txn.relations.len() >= MAX_RELATIONS_PER_TXN && !txn.relations.contains(&rel) {
                txn.overflowed = true;
                txn.relations.clear();
                return;
            }
            txn.relations.insert(rel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn begin(lsn: u64, xid: u32) -> Vec<u8> {
        let mut b = vec![b'B'];
        b.extend_from_slice(&lsn.to_be_bytes());
        b.extend_from_slice(&0u64.to_be_bytes());
        b.extend_from_slice(&xid.to_be_bytes());
        b
    }

    fn commit(lsn: u64, end: u64) -> Vec<u8> {
        let mut b = vec![b'C', 0];
        b.extend_from_slice(&lsn.to_be_bytes());
        b.extend_from_slice(&end.to_be_bytes());
        b.extend_from_slice(&0u64.to_be_bytes());
        b
    }

    fn row(tag: u8, rel: u32) -> Vec<u8> {
        let mut b = vec![tag];
        b.extend_from_slice(&rel.to_be_bytes());
        // Tuple data follows; never decoded.
        b.extend_from_slice(b"N\0\x01t\0\0\0\x011");
        b
    }

    fn truncate(rels: &[u32]) -> Vec<u8> {
        let mut b = vec![b'T'];
        b.extend_from_slice(&(rels.len() as u32).to_be_bytes());
        b.push(0);
        for r in rels {
            b.extend_from_slice(&r.to_be_bytes());
        }
        b
    }

    #[test]
    fn a_transaction_reports_every_relation_it_changed_at_commit() {
        let mut c = TxnCollector::default();
        let mut relation = vec![b'R'];
        relation.extend_from_slice(&16_384u32.to_be_bytes());
        relation.extend_from_slice(b"public\0accounts\0d\0\0");
        let stream = [
            begin(100, 7),
            relation,
            row(b'I', 16_384),
            row(b'U', 16_390),
            row(b'D', 16_384),
            truncate(&[16_400, 16_401]),
            b"Ytype".to_vec(),
        ];
        for m in &stream {
            assert_eq!(c.feed(&decode(m).unwrap()), None);
        }
        let txn = c.feed(&decode(&commit(100, 140)).unwrap()).unwrap();
        assert_eq!(txn.commit_lsn, Lsn(100));
        assert_eq!(txn.end_lsn, Lsn(140));
        assert_eq!(
            txn.relations.into_iter().collect::<Vec<_>>(),
            vec![16_384, 16_390, 16_400, 16_401]
        );
        assert!(!txn.overflowed);
        // The next transaction starts empty.
        c.feed(&decode(&begin(200, 8)).unwrap());
        let empty = c.feed(&decode(&commit(200, 210)).unwrap()).unwrap();
        assert!(empty.relations.is_empty());
    }

    #[test]
    fn huge_transactions_overflow_instead_of_growing() {
        let mut c = TxnCollector::default();
        c.feed(&decode(&begin(1, 1)).unwrap());
        for rel in 0..(MAX_RELATIONS_PER_TXN as u32 + 10) {
            c.feed(&Message::Row { rel });
        }
        let txn = c.feed(&decode(&commit(1, 2)).unwrap()).unwrap();
        assert!(txn.overflowed);
        assert!(txn.relations.is_empty());
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        for bad in [
            &b""[..],
            b"B\0\0",
            b"C\0",
            b"R\0\0\0\x01public",
            b"I\0\0",
            b"T\0\0\0\x02\0\0\0\0\x01",
            b"T\xff\xff\xff\xff\0",
        ] {
            assert!(decode(bad).is_err(), "{bad:?}");
        }
        assert_eq!(decode(b"Mx").unwrap(), Message::Other(b'M'));
    }
}
