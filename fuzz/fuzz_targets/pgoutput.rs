//! The pgoutput decoder (`cdc::pgoutput::decode`) and the transaction collector fed by it
//! (`TxnCollector`), on a sequence of arbitrary messages (each preceded by a big-endian u16
//! length in the input; see `pgmemo_fuzz::messages_u16`). Asserts: no panic; what a message
//! decodes to is consistent with its bytes (column and tuple counts match their iterators,
//! which stop at their counts; a Truncate's list is whole OIDs; names are slices of the
//! message); and every committed transaction respects the collector's bounds: at most
//! `MAX_RELATIONS_PER_TXN` relations, nothing kept when it overflowed, row keys only for its
//! own relations, at most `MAX_ROWS_PER_RELATION` row versions per relation, each with one
//! value per key column, and at most `MAX_ROW_BYTES_PER_TXN` bytes of values in all.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgmemo::cdc::pgoutput::{
    CommittedTxn, MAX_COLUMNS, MAX_RELATIONS_PER_TXN, MAX_ROW_BYTES_PER_TXN, MAX_ROWS_PER_RELATION,
    Message, TxnCollector, decode,
};
use pgmemo_fuzz::{messages_u16, within};

fn check_message(data: &[u8], m: &Message<'_>) {
    match m {
        Message::Relation {
            namespace,
            name,
            columns,
            ..
        } => {
            assert!(within(data, namespace) && within(data, name));
            assert!(columns.len() <= MAX_COLUMNS);
            assert_eq!(columns.iter().count(), columns.len());
            assert!(columns.iter().all(|c| within(data, c.name)));
        }
        Message::Row {
            key, old, new, cut, ..
        } => {
            if *cut {
                assert!(key.is_none() && old.is_none() && new.is_none());
            }
            for t in [key, old, new].into_iter().flatten() {
                assert!(t.len() <= MAX_COLUMNS);
                assert_eq!(t.iter().count(), t.len());
            }
        }
        Message::Truncate { rels } => {
            assert_eq!(rels.len() % 4, 0);
            assert_eq!(Message::truncated(rels).count(), rels.len() / 4);
        }
        Message::Begin { .. } | Message::Commit { .. } | Message::Other(_) => {}
    }
}

fn check_txn(txn: &CommittedTxn) {
    assert!(txn.relations.len() <= MAX_RELATIONS_PER_TXN);
    if txn.overflowed {
        assert!(txn.relations.is_empty() && txn.rows.is_empty());
    }
    let mut bytes = 0usize;
    for (rel, rows) in &txn.rows {
        assert!(
            txn.relations.contains(rel),
            "rows kept for a relation not in the set"
        );
        if let Some(rows) = rows {
            assert!(rows.values.len() <= MAX_ROWS_PER_RELATION);
            for version in &rows.values {
                assert_eq!(version.len(), rows.key.len());
                bytes += version.iter().map(|v| v.len()).sum::<usize>();
            }
        }
    }
    assert!(bytes <= MAX_ROW_BYTES_PER_TXN);
}

fuzz_target!(|data: &[u8]| {
    let mut collector = TxnCollector::default();
    for msg in messages_u16(data) {
        let Ok(m) = decode(msg) else {
            continue;
        };
        check_message(msg, &m);
        if let Some(txn) = collector.feed(&m) {
            check_txn(&txn);
            assert!(!collector.in_transaction());
        }
    }
    // Every single message on its own, too (the seeds are whole XLogData payloads).
    if let Ok(m) = decode(data) {
        check_message(data, &m);
    }
});
