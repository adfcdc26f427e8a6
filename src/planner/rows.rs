//! Row pins (issue 18): a relation of a read, or the target of a write, pinned to rows by
//! equality on every column of its primary key. The statement says which values the key
//! columns are compared with (`sql::RowScope`); the catalog says which columns form the key,
//! their types, and whether pinning is sound for the relation (`catalog::RowIdentity`).
//! A pin keeps where each key value comes from — a literal of the text, or a Bind
//! parameter — and the values are canonicalised per execution ([`RowPin::keys`]), so that a
//! literal, a text parameter, a binary parameter and a value seen by change data capture
//! name the same row (see `cache::rows`).
//!
//! Anything not understood is not pinned: the relation keeps table granularity. The reason
//! strings are stable labels (`EXPLAIN CACHE`-ready).

use crate::cache::Tag;
use crate::cache::rows::{KeyType, MAX_ROWS, RowKey};
use crate::catalog::RowIdentity;
use crate::protocol::frontend::{Param, Params};
use crate::sql::{ColumnEq, KeyValue, RowFilter};

/// Where one key column's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPart {
    /// A string literal's value.
    Text(Box<str>),
    /// An integer literal: its digits in this plan's text, and its position among the
    /// text's numeric literals (another text of the same shape has its own digits there).
    Number { ordinal: usize, digits: Box<str> },
    /// Bind parameter `$index` (1-based). `once`: the statement references it nowhere else,
    /// so a parameter the Parse left untyped takes the key column's type.
    Param { index: u16, once: bool },
}

/// One relation pinned to rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowPin {
    pub tag: Tag,
    /// The key columns' types, in key order.
    pub types: Box<[KeyType]>,
    /// The rows: one part per key column each.
    pub rows: Box<[Box<[KeyPart]>]>,
}

/// The parameters of one execution: the Parse's type OIDs (4 bytes each, as sent) and the
/// Bind after its names.
#[derive(Debug, Clone, Copy)]
pub struct Bound<'a> {
    pub types: &'a [u8],
    pub tail: &'a [u8],
}

impl Bound<'_> {
    fn declared(&self, index: u16) -> u32 {
        let at = usize::from(index.saturating_sub(1)) * 4;
        self.types
            .get(at..at + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map_or(0, u32::from_be_bytes)
    }
}

impl RowPin {
    /// The canonical key of every row, or `None` when one cannot be had (a parameter that
    /// is missing, NULL, of another type family, or refers to a text key in a session whose
    /// client encoding is not UTF-8): the relation is then read or written table-wide.
    pub fn keys(&self, bound: Option<Bound<'_>>, utf8: bool) -> Option<Vec<RowKey>> {
        let mut keys = Vec::with_capacity(self.rows.len());
        self.for_each_key(bound, utf8, |k| keys.push(k.clone()))
            .then_some(keys)
    }

    /// Calls `each` with every row's canonical key (one buffer, reused: this runs on the hit
    /// path); `false` when some key cannot be had (see [`keys`](Self::keys)), after which
    /// what `each` saw must be discarded.
    pub fn for_each_key(
        &self,
        bound: Option<Bound<'_>>,
        utf8: bool,
        mut each: impl FnMut(&RowKey),
    ) -> bool {
        if !utf8 && self.types.contains(&KeyType::Text) {
            return false;
        }
        let params = match bound {
            Some(b) if self.has_params() => ParamTable::of(b.tail),
            _ => ParamTable::default(),
        };
        let mut key = RowKey::new();
        for row in self.rows.iter() {
            key.clear();
            for (part, ty) in row.iter().zip(self.types.iter()) {
                let ok = match part {
                    KeyPart::Text(v) => key.push_text(*ty, v.as_bytes()),
                    KeyPart::Number { digits, .. } => key.push_number(*ty, digits.as_bytes()),
                    KeyPart::Param { index, once } => {
                        bound.is_some_and(|b| push_param(&mut key, *ty, b, &params, *index, *once))
                    }
                };
                if !ok {
                    return false;
                }
            }
            each(&key);
        }
        true
    }

    /// Whether some key is a parameter (its value comes with each execution).
    pub fn has_params(&self) -> bool {
        self.rows
            .iter()
            .flatten()
            .any(|p| matches!(p, KeyPart::Param { .. }))
    }

    /// The same pin for another text of the same shape (`piece`: its statement's text),
    /// with that text's digits; `None` if they no longer read as a key.
    pub fn with_numbers(&self, piece: &[u8]) -> Option<RowPin> {
        let mut pin = self.clone();
        for row in pin.rows.iter_mut() {
            for part in row.iter_mut() {
                if let KeyPart::Number { ordinal, digits } = part {
                    let now = crate::sql::number_at(piece, *ordinal)?;
                    *digits = std::str::from_utf8(now).ok()?.into();
                }
            }
        }
        Some(pin)
    }

    /// Approximate heap bytes.
    pub fn weight(&self) -> usize {
        let parts: usize = self
            .rows
            .iter()
            .map(|r| {
                r.iter()
                    .map(|p| {
                        std::mem::size_of::<KeyPart>()
                            + match p {
                                KeyPart::Text(v) => v.len(),
                                KeyPart::Number { digits, .. } => digits.len(),
                                KeyPart::Param { .. } => 0,
                            }
                    })
                    .sum::<usize>()
                    + 16
            })
            .sum();
        std::mem::size_of::<Self>() + parts + self.types.len() * std::mem::size_of::<KeyType>()
    }
}

/// Appends parameter `$index` of an execution to `key`, if it reads as a key of type `ty`.
fn push_param(
    key: &mut RowKey,
    ty: KeyType,
    bound: Bound<'_>,
    params: &ParamTable<'_>,
    index: u16,
    once: bool,
) -> bool {
    let declared = bound.declared(index);
    // Left untyped and used elsewhere too: its type may come from the other use.
    if declared == 0 && !once {
        return false;
    }
    let Some(param) = index
        .checked_sub(1)
        .and_then(|i| params.get(usize::from(i)))
    else {
        return false;
    };
    let Some(value) = param.value else {
        return false;
    };
    match param.format {
        0 => ty.accepts_param_type(declared) && key.push_text(ty, value),
        1 => key.push_binary(ty, declared, value),
        _ => false,
    }
}

/// A Bind's parameters by position. The first [`ParamTable::INLINE`] live on the stack, so
/// the lookup of a statement with a few parameters (nearly every one) does not allocate.
#[derive(Default)]
struct ParamTable<'a> {
    inline: [Option<Param<'a>>; ParamTable::INLINE],
    more: Vec<Option<Param<'a>>>,
}

impl<'a> ParamTable<'a> {
    const INLINE: usize = 8;

    fn of(tail: &'a [u8]) -> Self {
        let mut table = Self::default();
        for (i, param) in Params::of_tail(tail).take(u16::MAX.into()).enumerate() {
            match table.inline.get_mut(i) {
                Some(slot) => *slot = param,
                None => table.more.push(param),
            }
        }
        table
    }

    /// The parameter at `index` (0-based), `None` when absent or malformed.
    fn get(&self, index: usize) -> Option<Param<'a>> {
        match index.checked_sub(Self::INLINE) {
            None => self.inline.get(index).copied().flatten(),
            Some(over) => self.more.get(over).copied().flatten(),
        }
    }
}

/// What the planner needs to pin one relation: its tag, its identity, the statement text
/// (for parameter references).
pub struct Target<'a> {
    pub tag: Tag,
    pub identity: &'a RowIdentity,
    pub sql: &'a [u8],
}

impl Target<'_> {
    fn key_types(&self) -> Result<Vec<KeyType>, &'static str> {
        if self.identity.key.is_empty() {
            return Err("no_usable_primary_key");
        }
        self.identity
            .key
            .iter()
            .map(|(_, oid)| KeyType::of_column(*oid).ok_or("key_type"))
            .collect()
    }

    /// A pin from the equalities on the relation (a read, or an UPDATE/DELETE's target).
    pub fn from_filter(&self, filter: &RowFilter) -> Result<RowPin, &'static str> {
        let types = self.key_types()?;
        let columns: Vec<&str> = self.identity.key.iter().map(|(n, _)| n.as_str()).collect();
        let rows = key_rows(&filter.eqs, &columns).ok_or("not_pinned_by_primary_key")?;
        self.pin(types, rows)
    }

    /// A pin from an UPDATE's or DELETE's equalities on its target; an UPDATE that assigns a
    /// key column moves rows to keys the statement does not show: not pinned.
    pub fn from_change(
        &self,
        filter: &RowFilter,
        assigns: &[String],
    ) -> Result<RowPin, &'static str> {
        let key_assigned = self
            .identity
            .key
            .iter()
            .any(|(k, _)| assigns.iter().any(|a| a == k));
        if key_assigned {
            return Err("assigns_primary_key");
        }
        self.from_filter(filter)
    }

    /// A pin from an INSERT's column list and rows.
    pub fn from_insert(
        &self,
        columns: &[String],
        rows: &[Vec<Option<KeyValue>>],
    ) -> Result<RowPin, &'static str> {
        let types = self.key_types()?;
        let at: Vec<usize> = self
            .identity
            .key
            .iter()
            .map(|(name, _)| columns.iter().position(|c| c == name))
            .collect::<Option<_>>()
            .ok_or("primary_key_not_inserted")?;
        if rows.is_empty() || rows.len() > MAX_ROWS {
            return Err("too_many_rows");
        }
        let tuples: Vec<Vec<KeyValue>> = rows
            .iter()
            .map(|row| {
                at.iter()
                    .map(|&i| row.get(i).cloned().flatten())
                    .collect::<Option<Vec<_>>>()
            })
            .collect::<Option<_>>()
            .ok_or("primary_key_not_a_value")?;
        self.pin(types, tuples)
    }

    fn pin(&self, types: Vec<KeyType>, rows: Vec<Vec<KeyValue>>) -> Result<RowPin, &'static str> {
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let mut parts = Vec::with_capacity(row.len());
            for (value, ty) in row.into_iter().zip(&types) {
                let part = match value {
                    KeyValue::String(s) => KeyPart::Text(s.into()),
                    KeyValue::Number { digits, ordinal } => KeyPart::Number {
                        ordinal,
                        digits: digits.into(),
                    },
                    KeyValue::Param(index) => KeyPart::Param {
                        index,
                        once: crate::sql::param_references(self.sql, index) == 1,
                    },
                };
                // A literal that does not read as a key of this type never will.
                let mut probe = RowKey::new();
                let literal_ok = match &part {
                    KeyPart::Text(v) => probe.push_text(*ty, v.as_bytes()),
                    KeyPart::Number { digits, .. } => probe.push_number(*ty, digits.as_bytes()),
                    KeyPart::Param { .. } => true,
                };
                if !literal_ok {
                    return Err("key_literal");
                }
                parts.push(part);
            }
            out.push(parts.into_boxed_slice());
        }
        Ok(RowPin {
            tag: self.tag,
            types: types.into_boxed_slice(),
            rows: out.into_boxed_slice(),
        })
    }
}

/// The key tuples (in `key` column order) the equalities pin, or `None` when some key
/// column is not pinned. Either one equality covers exactly the key columns (a row
/// comparison or a row IN list), or each key column has its own (`=` or `IN`), combined.
fn key_rows(eqs: &[ColumnEq], key: &[&str]) -> Option<Vec<Vec<KeyValue>>> {
    for eq in eqs {
        let same_set =
            eq.columns.len() == key.len() && key.iter().all(|k| eq.columns.iter().any(|c| c == k));
        if same_set && eq.tuples.len() <= MAX_ROWS {
            let at: Vec<usize> = key
                .iter()
                .map(|k| eq.columns.iter().position(|c| c == k))
                .collect::<Option<_>>()?;
            return eq
                .tuples
                .iter()
                .map(|t| at.iter().map(|&i| t.get(i).cloned()).collect())
                .collect();
        }
    }
    let mut rows: Vec<Vec<KeyValue>> = vec![Vec::new()];
    for k in key {
        let eq = eqs
            .iter()
            .find(|e| e.columns.len() == 1 && e.columns.first().is_some_and(|c| c == k))?;
        let values: Vec<&KeyValue> = eq.tuples.iter().filter_map(|t| t.first()).collect();
        if values.is_empty() || rows.len().saturating_mul(values.len()) > MAX_ROWS {
            return None;
        }
        rows = rows
            .iter()
            .flat_map(|r| {
                values.iter().map(move |v| {
                    let mut r = r.clone();
                    r.push((*v).clone());
                    r
                })
            })
            .collect();
    }
    Some(rows)
}

#[cfg(test)]
#[path = "rows_tests.rs"]
mod tests;
