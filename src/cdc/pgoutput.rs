//! The `pgoutput` logical-decoding messages (protocol version 1, no streaming of in-progress
//! transactions), decoded only as far as invalidation needs: transaction boundaries with
//! their LSNs, relation descriptions (OID → schema and name for logs, replica identity and
//! columns for row keys), which relation each change touched and the tuples it carried, as
//! slices of the message (nothing is copied to decode). [`TxnCollector`] turns the message
//! stream into one [`CommittedTxn`] per commit, bounded in memory: the relations changed,
//! and per relation the key values of the changed rows when they are exactly known.
//!
//! The bounds on kept rows ([`MAX_ROWS_PER_RELATION`], [`MAX_ROW_BYTES_PER_TXN`]) are shared
//! with [`super::test_decoding`], so both plugins give the cache the same precision.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::test_decoding::MAX_NAME_BYTES;
use super::wire::{Lsn, WireError};
use crate::protocol::fields::Reader;

/// Relations remembered per transaction; a transaction touching more is reported as
/// `overflowed` (the caller bumps the epoch instead).
pub const MAX_RELATIONS_PER_TXN: usize = 4_096;
/// Row versions (an UPDATE that changes the key has two) kept per relation per transaction;
/// past it the relation's rows are unknown and it is invalidated as a whole, which costs a
/// bulk write little and keeps a transaction's report small.
pub const MAX_ROWS_PER_RELATION: usize = 64;
/// Bytes of row data kept per transaction, all relations together; once spent, a relation
/// whose rows would grow has its rows unknown instead (the bytes already kept are not given
/// back, so the budget is a plain upper bound).
pub const MAX_ROW_BYTES_PER_TXN: usize = 256 * 1024;
/// Most columns a table may have (`MaxHeapAttributeNumber`): a Relation or a tuple that
/// claims more is malformed.
pub const MAX_COLUMNS: usize = 1_600;
/// Most columns an index, so a primary key, may have (`INDEX_MAX_KEYS`): a longer key is not
/// one pgmemo can use.
pub const MAX_KEY_COLUMNS: usize = 32;
/// Bytes of relation descriptions remembered across transactions (they are sent once per
/// connection, so they outlive transactions); past it they are all forgotten.
const MAX_DESCRIPTION_BYTES: usize = 1024 * 1024;

/// What a row change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Insert,
    Update,
    Delete,
}

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
        /// `relreplident`: `d` (default: the primary key), `n` (nothing), `f` (full row) or
        /// `i` (an index).
        identity: u8,
        columns: RelColumns<'a>,
    },
    /// INSERT, UPDATE or DELETE of a row of `rel`, with the tuples the message carried.
    Row {
        kind: ChangeKind,
        rel: u32,
        /// `K`: the old key (UPDATE that changed it, DELETE), identity not FULL.
        key: Option<Tuple<'a>>,
        /// `O`: the whole old row (identity FULL).
        old: Option<Tuple<'a>>,
        /// `N`: the new row (INSERT, UPDATE).
        new: Option<Tuple<'a>>,
        /// The message ends inside its tuples: the frame was longer than the replication
        /// connection keeps (`conn::KEEP_BYTES`), so only the relation is known (the tuples
        /// are all `None`).
        cut: bool,
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

/// A Relation message's columns, checked when decoded and read again only on demand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelColumns<'a> {
    count: usize,
    data: &'a [u8],
}

/// One column of a Relation message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelColumn<'a> {
    /// Flag bit 1: the column is part of the replica identity key.
    pub key: bool,
    pub name: &'a [u8],
    pub type_oid: u32,
    pub typmod: i32,
}

impl<'a> RelColumns<'a> {
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = RelColumn<'a>> + 'a {
        let mut r = Reader::new(self.data);
        std::iter::from_fn(move || rel_column(&mut r))
    }
}

/// One TupleData, checked when decoded and read again only on demand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuple<'a> {
    count: usize,
    data: &'a [u8],
}

/// One column's value in a TupleData.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datum<'a> {
    Null,
    /// An unchanged TOASTed value, not sent.
    Unchanged,
    /// The type's text output.
    Text(&'a [u8]),
    /// The type's binary send format (only with the `binary` option, which pgmemo never asks).
    Binary(&'a [u8]),
}

impl<'a> Tuple<'a> {
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = Datum<'a>> + 'a {
        let mut r = Reader::new(self.data);
        std::iter::from_fn(move || datum(&mut r).ok())
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
        b'R' => relation(&mut r)?,
        b'I' => row(ChangeKind::Insert, &mut r)?,
        b'U' => row(ChangeKind::Update, &mut r)?,
        b'D' => row(ChangeKind::Delete, &mut r)?,
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

/// After `R`: OID, namespace, name, replica identity, columns.
fn relation<'a>(r: &mut Reader<'a>) -> Result<Message<'a>, WireError> {
    let oid = u32_be(r)?;
    let namespace = r.cstr().ok_or(WireError::Truncated)?;
    let name = r.cstr().ok_or(WireError::Truncated)?;
    let identity = r.u8().ok_or(WireError::Truncated)?;
    let count = column_count(r)?;
    let start = r.remaining();
    for _ in 0..count {
        rel_column(r).ok_or(WireError::Truncated)?;
    }
    Ok(Message::Relation {
        oid,
        namespace,
        name,
        identity,
        columns: RelColumns {
            count,
            data: consumed(start, r),
        },
    })
}

fn rel_column<'a>(r: &mut Reader<'a>) -> Option<RelColumn<'a>> {
    let flags = r.u8()?;
    let name = r.cstr()?;
    let type_oid = r.u32()?;
    let typmod = r.i32()?;
    Some(RelColumn {
        key: flags & 1 != 0,
        name,
        type_oid,
        typmod,
    })
}

/// After `I`, `U` or `D`: the relation, then its tuples. A message that ends inside them is
/// a long frame's kept head: still a change of the relation, with its rows unknown.
fn row<'a>(kind: ChangeKind, r: &mut Reader<'a>) -> Result<Message<'a>, WireError> {
    let rel = u32_be(r)?;
    let ((key, old, new), cut) = match row_tuples(kind, r) {
        Ok(tuples) => (tuples, false),
        Err(WireError::Truncated) => ((None, None, None), true),
        Err(e) => return Err(e),
    };
    Ok(Message::Row {
        kind,
        rel,
        key,
        old,
        new,
        cut,
    })
}

/// A Row's `K`, `O` and `N` tuples.
type RowTuples<'a> = (Option<Tuple<'a>>, Option<Tuple<'a>>, Option<Tuple<'a>>);

/// `[K|O tuple]` (UPDATE: optional, DELETE: required), then `N tuple` (INSERT, UPDATE).
/// Anything else, trailing bytes included, is malformed: a change that is not exactly
/// understood must not be half-read.
fn row_tuples<'a>(kind: ChangeKind, r: &mut Reader<'a>) -> Result<RowTuples<'a>, WireError> {
    let (mut key, mut old) = (None, None);
    if kind != ChangeKind::Insert {
        match r.remaining().first() {
            Some(b'K') => key = Some(tagged_tuple(r)?),
            Some(b'O') => old = Some(tagged_tuple(r)?),
            Some(_) if kind == ChangeKind::Delete => return Err(WireError::Malformed),
            None if kind == ChangeKind::Delete => return Err(WireError::Truncated),
            _ => {}
        }
    }
    let new = match kind {
        ChangeKind::Delete => None,
        ChangeKind::Insert | ChangeKind::Update => match r.remaining().first() {
            Some(b'N') => Some(tagged_tuple(r)?),
            Some(_) => return Err(WireError::Malformed),
            None => return Err(WireError::Truncated),
        },
    };
    if !r.remaining().is_empty() {
        return Err(WireError::Malformed);
    }
    Ok((key, old, new))
}

/// A sub-message tag (`K`, `O`, `N`), then TupleData.
fn tagged_tuple<'a>(r: &mut Reader<'a>) -> Result<Tuple<'a>, WireError> {
    r.u8().ok_or(WireError::Truncated)?;
    let count = column_count(r)?;
    let start = r.remaining();
    for _ in 0..count {
        datum(r)?;
    }
    Ok(Tuple {
        count,
        data: consumed(start, r),
    })
}

fn datum<'a>(r: &mut Reader<'a>) -> Result<Datum<'a>, WireError> {
    Ok(match r.u8().ok_or(WireError::Truncated)? {
        b'n' => Datum::Null,
        b'u' => Datum::Unchanged,
        b't' => Datum::Text(sized(r)?),
        b'b' => Datum::Binary(sized(r)?),
        _ => return Err(WireError::Malformed),
    })
}

/// Int32 length, then that many bytes.
fn sized<'a>(r: &mut Reader<'a>) -> Result<&'a [u8], WireError> {
    let len = r.i32().ok_or(WireError::Truncated)?;
    let len = usize::try_from(len).map_err(|_| WireError::Malformed)?;
    r.bytes(len).ok_or(WireError::Truncated)
}

/// Int16 column count, at most [`MAX_COLUMNS`].
fn column_count(r: &mut Reader<'_>) -> Result<usize, WireError> {
    let n = r.i16().ok_or(WireError::Truncated)?;
    match usize::try_from(n) {
        Ok(n) if n <= MAX_COLUMNS => Ok(n),
        _ => Err(WireError::Malformed),
    }
}

/// What `r` has read since it was at `start`.
fn consumed<'a>(start: &'a [u8], r: &Reader<'a>) -> &'a [u8] {
    let read = start.len().saturating_sub(r.remaining().len());
    start.get(..read).unwrap_or_default()
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
    /// Per relation of `relations` with a changed row or a truncation: the keys of its
    /// changed rows, or `None` when they are not exactly known (truncated, replica identity
    /// not DEFAULT, description unknown, a key value null, unchanged or binary, a bound
    /// reached): then the relation is invalidated as a whole.
    pub rows: BTreeMap<u32, Option<RelRows>>,
    /// It touched more than [`MAX_RELATIONS_PER_TXN`] relations: treat as "everything".
    pub overflowed: bool,
}

/// The keys of one relation's changed rows in one transaction.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RelRows {
    /// The replica identity key's columns (name, type OID), in column order: the caller
    /// checks they are the primary key it knows.
    pub key: Vec<(String, u32)>,
    /// One entry per row version (an old key, a new row), each the text output of every
    /// column of `key`, in that order.
    pub values: Vec<Vec<Box<[u8]>>>,
}

/// What a relation's description says about taking keys from its tuples.
#[derive(Debug)]
struct Described {
    /// Columns its tuples carry.
    columns: usize,
    /// `None`: its rows' keys cannot be taken (identity not DEFAULT, no key, an odd name).
    key: Option<KeyColumns>,
}

#[derive(Debug)]
struct KeyColumns {
    /// Positions of the key columns in the tuples, ascending.
    indexes: Box<[usize]>,
    columns: Vec<(String, u32)>,
}

impl Described {
    fn from_message(identity: u8, columns: &RelColumns<'_>) -> Self {
        Self {
            columns: columns.len(),
            key: key_columns(identity, columns),
        }
    }

    /// Bytes it holds, roughly: what the description bound counts.
    fn bytes(&self) -> usize {
        let key = self.key.as_ref().map_or(0, |k| {
            k.indexes.len() * std::mem::size_of::<usize>() + key_bytes(&k.columns)
        });
        std::mem::size_of::<(u32, Self)>() + key
    }
}

/// The key-flagged columns, when the identity is DEFAULT (the primary key) and they are a
/// key pgmemo can use. Other identities are refused: FULL flags every column, INDEX a unique
/// index that need not be the primary key, NOTHING none.
fn key_columns(identity: u8, columns: &RelColumns<'_>) -> Option<KeyColumns> {
    if identity != b'd' {
        return None;
    }
    let mut indexes = Vec::new();
    let mut key = Vec::new();
    for (at, column) in columns.iter().enumerate() {
        if !column.key {
            continue;
        }
        if key.len() >= MAX_KEY_COLUMNS || column.name.len() > MAX_NAME_BYTES {
            return None;
        }
        let name = std::str::from_utf8(column.name).ok()?;
        indexes.push(at);
        key.push((name.to_owned(), column.type_oid));
    }
    (!key.is_empty()).then(|| KeyColumns {
        indexes: indexes.into_boxed_slice(),
        columns: key,
    })
}

fn key_bytes(key: &[(String, u32)]) -> usize {
    key.iter()
        .map(|(name, _)| name.len() + std::mem::size_of::<(String, u32)>())
        .sum()
}

/// Relation descriptions by OID, bounded in count and bytes.
#[derive(Debug, Default)]
struct Descriptions {
    by_oid: HashMap<u32, Described>,
    bytes: usize,
}

impl Descriptions {
    /// Remembers (or replaces) a description. When full, all are forgotten: a relation then
    /// changed without a new Relation message has its rows unknown, never guessed.
    fn insert(&mut self, oid: u32, described: Described) {
        if let Some(old) = self.by_oid.remove(&oid) {
            self.bytes = self.bytes.saturating_sub(old.bytes());
        }
        let bytes = described.bytes();
        if self.by_oid.len() >= MAX_RELATIONS_PER_TXN
            || self.bytes.saturating_add(bytes) > MAX_DESCRIPTION_BYTES
        {
            self.by_oid.clear();
            self.bytes = 0;
        }
        self.by_oid.insert(oid, described);
        self.bytes = self.bytes.saturating_add(bytes);
    }
}

/// Collects the relations each transaction changes, from Begin to Commit, with the keys of
/// the rows it changed.
#[derive(Debug, Default)]
pub struct TxnCollector {
    open: Option<CommittedTxn>,
    /// Row bytes the open transaction has kept (see [`MAX_ROW_BYTES_PER_TXN`]).
    kept: usize,
    described: Descriptions,
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
                self.kept = 0;
                None
            }
            Message::Commit {
                commit_lsn,
                end_lsn,
                committed_at,
            } => {
                let mut txn = self.open.take().unwrap_or_default();
                self.kept = 0;
                txn.commit_lsn = *commit_lsn;
                txn.end_lsn = *end_lsn;
                txn.committed_at = *committed_at;
                Some(txn)
            }
            Message::Relation {
                oid,
                identity,
                columns,
                ..
            } => {
                self.described
                    .insert(*oid, Described::from_message(*identity, columns));
                None
            }
            Message::Row {
                kind,
                rel,
                key,
                old,
                new,
                cut,
            } => {
                self.add(std::iter::once(*rel), false);
                self.add_row(*rel, *kind, [*key, *old, *new], *cut);
                None
            }
            Message::Truncate { rels } => {
                self.add(Message::truncated(rels), true);
                None
            }
            Message::Other(_) => None,
        }
    }

    /// Adds relations to the open transaction; `truncated` ones have their rows unknown.
    fn add(&mut self, rels: impl Iterator<Item = u32>, truncated: bool) {
        let txn = self.open.get_or_insert_with(CommittedTxn::default);
        for rel in rels {
            if txn.overflowed {
                return;
            }
            if txn.relations.len() >= MAX_RELATIONS_PER_TXN && !txn.relations.contains(&rel) {
                txn.overflowed = true;
                txn.relations.clear();
                txn.rows.clear();
                return;
            }
            txn.relations.insert(rel);
            if truncated {
                txn.rows.insert(rel, None);
            }
        }
    }

    /// Records the key values of a changed row of `rel` (its relation already added), or
    /// makes its rows unknown. `tuples` are the message's `K`, `O` and `N`.
    fn add_row(&mut self, rel: u32, kind: ChangeKind, tuples: [Option<Tuple<'_>>; 3], cut: bool) {
        let Some(txn) = self.open.as_mut() else {
            return;
        };
        if txn.overflowed {
            return;
        }
        let slot = txn
            .rows
            .entry(rel)
            .or_insert_with(|| Some(RelRows::default()));
        let Some(rows) = slot.as_mut() else {
            return;
        };
        let kept = (!cut)
            .then(|| self.described.by_oid.get(&rel))
            .flatten()
            .and_then(|d| Some((d.columns, d.key.as_ref()?)))
            .and_then(|(columns, key)| {
                let versions = row_keys(kind, tuples, columns, &key.indexes)?;
                admit(rows, &key.columns, versions, &mut self.kept)
            });
        if kept.is_none() {
            *slot = None;
        }
    }
}

/// The key values of each row version a change names: the old key (`K`) when sent, and the
/// new row for INSERT and UPDATE. A whole old row (`O`) means the identity is FULL, which the
/// description did not say: not understood.
fn row_keys(
    kind: ChangeKind,
    [key, old, new]: [Option<Tuple<'_>>; 3],
    columns: usize,
    indexes: &[usize],
) -> Option<Vec<Vec<Box<[u8]>>>> {
    if old.is_some() || (kind == ChangeKind::Delete && key.is_none()) {
        return None;
    }
    [key, new]
        .into_iter()
        .flatten()
        .map(|tuple| tuple_key(&tuple, columns, indexes))
        .collect()
}

/// The text values at `indexes` (ascending) of a tuple of `columns` columns; `None` when the
/// tuple has another shape or a key value is null, unchanged or binary.
fn tuple_key(tuple: &Tuple<'_>, columns: usize, indexes: &[usize]) -> Option<Vec<Box<[u8]>>> {
    if tuple.len() != columns {
        return None;
    }
    let mut wanted = indexes.iter().peekable();
    let mut values = Vec::with_capacity(indexes.len());
    for (at, datum) in tuple.iter().enumerate() {
        if wanted.peek() != Some(&&at) {
            continue;
        }
        wanted.next();
        match datum {
            Datum::Text(text) => values.push(Box::from(text)),
            Datum::Null | Datum::Unchanged | Datum::Binary(_) => return None,
        }
    }
    (values.len() == indexes.len()).then_some(values)
}

/// Adds `versions` to `rows` within the bounds, charging `kept`; `None` when a bound would be
/// passed or the key is not the one the relation's earlier rows had (its description changed
/// inside the transaction).
fn admit(
    rows: &mut RelRows,
    key: &[(String, u32)],
    versions: Vec<Vec<Box<[u8]>>>,
    kept: &mut usize,
) -> Option<()> {
    let mut cost = 0;
    if rows.values.is_empty() && rows.key.is_empty() {
        rows.key = key.to_vec();
        cost += key_bytes(key);
    } else if rows.key != key {
        return None;
    }
    if rows.values.len().saturating_add(versions.len()) > MAX_ROWS_PER_RELATION {
        return None;
    }
    cost += versions.iter().map(|v| version_bytes(v)).sum::<usize>();
    let total = kept.saturating_add(cost);
    if total > MAX_ROW_BYTES_PER_TXN {
        return None;
    }
    *kept = total;
    rows.values.extend(versions);
    Some(())
}

/// Bytes one row version's key values hold, with their containers.
fn version_bytes(values: &[Box<[u8]>]) -> usize {
    std::mem::size_of::<Vec<Box<[u8]>>>()
        + values
            .iter()
            .map(|v| v.len() + std::mem::size_of::<Box<[u8]>>())
            .sum::<usize>()
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
        if tag != b'I' {
            b.extend_from_slice(b"K\0\x01t\0\0\0\x011");
        }
        if tag != b'D' {
            b.extend_from_slice(b"N\0\x01t\0\0\0\x011");
        }
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
            c.feed(&decode(&row(b'I', rel)).unwrap());
        }
        let txn = c.feed(&decode(&commit(1, 2)).unwrap()).unwrap();
        assert!(txn.overflowed);
        assert!(txn.relations.is_empty());
        assert!(txn.rows.is_empty());
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

    /// A Relation message: columns are (key flag, name, type OID).
    fn relation(oid: u32, identity: u8, columns: &[(bool, &str, u32)]) -> Vec<u8> {
        let mut b = vec![b'R'];
        b.extend_from_slice(&oid.to_be_bytes());
        b.extend_from_slice(b"public\0t\0");
        b.push(identity);
        b.extend_from_slice(&(columns.len() as i16).to_be_bytes());
        for (key, name, type_oid) in columns {
            b.push(u8::from(*key));
            b.extend_from_slice(name.as_bytes());
            b.push(0);
            b.extend_from_slice(&type_oid.to_be_bytes());
            b.extend_from_slice(&(-1i32).to_be_bytes());
        }
        b
    }

    /// TupleData after its tag: `n` null, `u` unchanged, `t:<text>`, `b:<bytes>`.
    fn tuple(tag: u8, columns: &[&str]) -> Vec<u8> {
        let mut b = vec![tag];
        b.extend_from_slice(&(columns.len() as i16).to_be_bytes());
        for c in columns {
            match c.split_once(':') {
                Some((kind, value)) => {
                    b.push(kind.as_bytes().first().copied().unwrap());
                    b.extend_from_slice(&(value.len() as i32).to_be_bytes());
                    b.extend_from_slice(value.as_bytes());
                }
                None => b.push(c.as_bytes().first().copied().unwrap()),
            }
        }
        b
    }

    fn change(tag: u8, rel: u32, tuples: &[Vec<u8>]) -> Vec<u8> {
        let mut b = vec![tag];
        b.extend_from_slice(&rel.to_be_bytes());
        for t in tuples {
            b.extend_from_slice(t);
        }
        b
    }

    /// Feeds `messages` as one transaction.
    fn commit_of(c: &mut TxnCollector, messages: &[Vec<u8>]) -> CommittedTxn {
        c.feed(&decode(&begin(1, 1)).unwrap());
        for m in messages {
            assert_eq!(c.feed(&decode(m).unwrap()), None);
        }
        c.feed(&decode(&commit(1, 2)).unwrap()).unwrap()
    }

    fn values(rows: &Option<RelRows>) -> Option<Vec<Vec<&str>>> {
        Some(
            rows.as_ref()?
                .values
                .iter()
                .map(|v| v.iter().map(|b| std::str::from_utf8(b).unwrap()).collect())
                .collect(),
        )
    }

    /// `t(id int, name text, region int)`, primary key (id, region).
    fn accounts(identity: u8) -> Vec<u8> {
        relation(
            16_384,
            identity,
            &[(true, "id", 23), (false, "name", 25), (true, "region", 23)],
        )
    }

    #[test]
    fn relations_decode_with_identity_and_columns() {
        let m = accounts(b'd');
        let Message::Relation {
            oid,
            namespace,
            name,
            identity,
            columns,
        } = decode(&m).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (oid, namespace, name, identity),
            (16_384, &b"public"[..], &b"t"[..], b'd')
        );
        assert_eq!(columns.len(), 3);
        assert_eq!(
            columns.iter().collect::<Vec<_>>(),
            vec![
                RelColumn {
                    key: true,
                    name: b"id",
                    type_oid: 23,
                    typmod: -1
                },
                RelColumn {
                    key: false,
                    name: b"name",
                    type_oid: 25,
                    typmod: -1
                },
                RelColumn {
                    key: true,
                    name: b"region",
                    type_oid: 23,
                    typmod: -1
                },
            ]
        );
        let wide: Vec<(bool, &str, u32)> = vec![(false, "c", 23); MAX_COLUMNS];
        assert!(decode(&relation(1, b'd', &wide)).is_ok());
        let wider: Vec<(bool, &str, u32)> = vec![(false, "c", 23); MAX_COLUMNS + 1];
        assert_eq!(
            decode(&relation(1, b'd', &wider)),
            Err(WireError::Malformed)
        );
        let mut negative = relation(1, b'd', &[]);
        negative.truncate(negative.len() - 2);
        negative.extend_from_slice(&(-1i16).to_be_bytes());
        assert_eq!(decode(&negative), Err(WireError::Malformed));
        let cut = accounts(b'd');
        for len in 1..cut.len() {
            assert!(decode(&cut[..len]).is_err(), "{len}");
        }
    }

    #[test]
    fn rows_report_the_key_values_of_each_version() {
        let mut c = TxnCollector::default();
        let txn = commit_of(
            &mut c,
            &[
                accounts(b'd'),
                change(b'I', 16_384, &[tuple(b'N', &["t:1", "t:a", "t:10"])]),
                // Key unchanged: the new row only (its name may be null or unchanged).
                change(b'U', 16_384, &[tuple(b'N', &["t:2", "u", "t:10"])]),
                // Key changed: the old key, then the new row.
                change(
                    b'U',
                    16_384,
                    &[
                        tuple(b'K', &["t:3", "n", "t:10"]),
                        tuple(b'N', &["t:4", "n", "t:20"]),
                    ],
                ),
                change(b'D', 16_384, &[tuple(b'K', &["t:5", "n", "t:30"])]),
            ],
        );
        let rows = txn.rows.get(&16_384).unwrap();
        assert_eq!(
            rows.as_ref().unwrap().key,
            vec![("id".to_string(), 23), ("region".to_string(), 23)]
        );
        assert_eq!(
            values(rows),
            Some(vec![
                vec!["1", "10"],
                vec!["2", "10"],
                vec!["3", "10"],
                vec!["4", "20"],
                vec!["5", "30"],
            ])
        );
        assert_eq!(txn.relations.into_iter().collect::<Vec<_>>(), vec![16_384]);
        // The description outlives the transaction.
        let next = commit_of(
            &mut c,
            &[change(b'I', 16_384, &[tuple(b'N', &["t:6", "n", "t:1"])])],
        );
        assert_eq!(
            values(next.rows.get(&16_384).unwrap()),
            Some(vec![vec!["6", "1"]])
        );
    }

    #[test]
    fn keys_not_exactly_known_are_none() {
        // Identity other than DEFAULT (FULL sends the whole old row).
        for identity in [b'f', b'n', b'i'] {
            let mut c = TxnCollector::default();
            let txn = commit_of(
                &mut c,
                &[
                    accounts(identity),
                    change(b'I', 16_384, &[tuple(b'N', &["t:1", "t:a", "t:10"])]),
                    change(b'D', 16_384, &[tuple(b'O', &["t:1", "t:a", "t:10"])]),
                ],
            );
            assert_eq!(txn.rows.get(&16_384), Some(&None), "{identity}");
        }
        let insert = |columns: &[&str]| change(b'I', 16_384, &[tuple(b'N', columns)]);
        for row in [
            // A key value null, unchanged or binary.
            insert(&["n", "t:a", "t:10"]),
            insert(&["t:1", "t:a", "u"]),
            insert(&["b:1", "t:a", "t:10"]),
            // Another shape than described.
            insert(&["t:1", "t:a"]),
            insert(&["t:1", "t:a", "t:10", "t:x"]),
            // A whole old row though the identity is DEFAULT.
            change(
                b'U',
                16_384,
                &[
                    tuple(b'O', &["t:1", "t:a", "t:10"]),
                    tuple(b'N', &["t:1", "t:b", "t:10"]),
                ],
            ),
        ] {
            let mut c = TxnCollector::default();
            let txn = commit_of(
                &mut c,
                &[accounts(b'd'), insert(&["t:9", "n", "t:9"]), row.clone()],
            );
            assert_eq!(txn.rows.get(&16_384), Some(&None), "{row:?}");
        }
        // Non-key columns may be anything.
        let mut c = TxnCollector::default();
        let txn = commit_of(
            &mut c,
            &[accounts(b'd'), insert(&["t:1", "b:\u{1}", "t:2"])],
        );
        assert_eq!(
            values(txn.rows.get(&16_384).unwrap()),
            Some(vec![vec!["1", "2"]])
        );
        // An unknown relation, one with no key, and one truncated.
        let mut c = TxnCollector::default();
        let txn = commit_of(
            &mut c,
            &[
                relation(7, b'd', &[(false, "a", 23)]),
                change(b'I', 7, &[tuple(b'N', &["t:1"])]),
                change(b'I', 8, &[tuple(b'N', &["t:1"])]),
                accounts(b'd'),
                insert(&["t:1", "t:a", "t:2"]),
                truncate(&[16_384, 9]),
                insert(&["t:3", "t:a", "t:4"]),
            ],
        );
        assert_eq!(txn.rows.get(&7), Some(&None));
        assert_eq!(txn.rows.get(&8), Some(&None));
        assert_eq!(txn.rows.get(&16_384), Some(&None));
        assert_eq!(txn.rows.get(&9), Some(&None));
        // The key redescribed inside the transaction.
        let mut c = TxnCollector::default();
        let txn = commit_of(
            &mut c,
            &[
                accounts(b'd'),
                insert(&["t:1", "t:a", "t:2"]),
                relation(
                    16_384,
                    b'd',
                    &[(true, "id", 23), (false, "name", 25), (false, "region", 23)],
                ),
                insert(&["t:3", "t:a", "t:4"]),
            ],
        );
        assert_eq!(txn.rows.get(&16_384), Some(&None));
    }

    #[test]
    fn malformed_tuple_data_is_an_error() {
        let n = || tuple(b'N', &["t:1"]);
        let k = || tuple(b'K', &["t:1"]);
        assert!(decode(&change(b'I', 1, &[n()])).is_ok());
        assert!(decode(&change(b'U', 1, &[k(), n()])).is_ok());
        assert!(decode(&change(b'D', 1, &[k()])).is_ok());
        let mut negative_len = vec![b'N', 0, 1, b't'];
        negative_len.extend_from_slice(&(-1i32).to_be_bytes());
        let mut too_many = vec![b'N'];
        too_many.extend_from_slice(&(MAX_COLUMNS as i16 + 1).to_be_bytes());
        for bad in [
            change(b'I', 1, &[k()]),
            change(b'I', 1, &[tuple(b'N', &["x"])]),
            change(b'I', 1, &[negative_len]),
            change(b'I', 1, &[too_many]),
            change(b'I', 1, &[n(), vec![0]]),
            change(b'I', 1, &[b"N\xff\xff".to_vec()]),
            change(b'D', 1, &[n()]),
            change(b'D', 1, &[k(), n()]),
        ] {
            assert!(decode(&bad).is_err(), "{bad:?}");
        }
        // Nothing where a tuple must follow reads as a cut frame (below).
        for short in [
            change(b'I', 1, &[]),
            change(b'U', 1, &[k()]),
            change(b'U', 1, &[]),
            change(b'D', 1, &[]),
        ] {
            assert!(
                matches!(decode(&short), Ok(Message::Row { cut: true, .. })),
                "{short:?}"
            );
        }
        // Cut inside its tuples (a long frame's kept head): a change of the relation with
        // its rows unknown; cut before the relation: an error.
        let whole = change(b'U', 1, &[k(), tuple(b'N', &["t:12345", "n", "u", "b:xy"])]);
        for len in 0..5 {
            assert!(decode(&whole[..len]).is_err(), "{len}");
        }
        for len in 5..whole.len() {
            assert!(
                matches!(
                    decode(&whole[..len]),
                    Ok(Message::Row {
                        rel: 1,
                        cut: true,
                        ..
                    })
                ),
                "{len}"
            );
        }
        assert!(matches!(
            decode(&whole),
            Ok(Message::Row {
                rel: 1,
                cut: false,
                ..
            })
        ));
        let mut c = TxnCollector::default();
        let cut = &whole[..whole.len() - 1];
        let txn = commit_of(
            &mut c,
            &[
                relation(1, b'd', &[(true, "id", 23)]),
                change(b'I', 1, &[tuple(b'N', &["t:1"])]),
                cut.to_vec(),
            ],
        );
        assert_eq!(txn.relations.into_iter().collect::<Vec<_>>(), vec![1]);
        assert_eq!(txn.rows.get(&1), Some(&None));
    }

    #[test]
    fn rows_are_bounded_per_relation_and_per_transaction() {
        let rel = |oid: u32| relation(oid, b'd', &[(true, "id", 23), (false, "v", 25)]);
        let insert = |oid: u32, id: usize, v: &str| {
            change(
                b'I',
                oid,
                &[tuple(b'N', &[&format!("t:{id}"), &format!("t:{v}")])],
            )
        };
        let mut messages = vec![rel(1), rel(2), rel(3)];
        messages.extend((0..MAX_ROWS_PER_RELATION).map(|i| insert(1, i, "")));
        messages.extend((0..=MAX_ROWS_PER_RELATION).map(|i| insert(2, i, "")));
        messages.push(insert(3, 0, ""));
        let mut c = TxnCollector::default();
        let txn = commit_of(&mut c, &messages);
        assert_eq!(
            txn.rows.get(&1).unwrap().as_ref().map(|r| r.values.len()),
            Some(MAX_ROWS_PER_RELATION)
        );
        assert_eq!(txn.rows.get(&2), Some(&None));
        assert_eq!(values(txn.rows.get(&3).unwrap()), Some(vec![vec!["0"]]));
        // Bytes: two keys of 100 KiB fit, a third (any relation's) does not; a small one still
        // fits what is left; the budget is per transaction.
        let big = |oid: u32| {
            let key = format!("t:{}", "x".repeat(100 * 1024));
            change(b'I', oid, &[tuple(b'N', &[&key, "n"])])
        };
        let txn = commit_of(&mut c, &[big(1), big(1), big(2), insert(3, 1, "")]);
        assert_eq!(
            txn.rows.get(&1).unwrap().as_ref().map(|r| r.values.len()),
            Some(2)
        );
        assert_eq!(txn.rows.get(&2), Some(&None));
        assert_eq!(values(txn.rows.get(&3).unwrap()), Some(vec![vec!["1"]]));
        let txn = commit_of(&mut c, &[big(1), big(1), big(1)]);
        assert_eq!(txn.rows.get(&1), Some(&None));
        // Non-key columns cost nothing.
        let wide = "y".repeat(200 * 1024);
        let txn = commit_of(&mut c, &[insert(1, 1, &wide), insert(1, 2, &wide)]);
        assert_eq!(
            values(txn.rows.get(&1).unwrap()),
            Some(vec![vec!["1"], vec!["2"]])
        );
    }
}
