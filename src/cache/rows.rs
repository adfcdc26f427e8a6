//! Row keys for row-level invalidation: the canonical bytes of a primary-key value, and the
//! stripe of row versions a (relation, key) maps to.
//!
//! A key value reaches pgmemo in four forms: a literal in SQL text, a Bind parameter in text
//! format, one in binary format, and a value printed by logical replication. All four must
//! give the same bytes for the same row, or a write seen in one form would not invalidate a
//! read keyed in another (a stale hit). So each supported key column type has one canonical
//! form, decided by the *column's* type, never by how the value was sent:
//! - integers (`int2`, `int4`, `int8`): the value as a big-endian `i64` (`'007'`, `7`, binary
//!   `00 00 00 07` are one row);
//! - `text`, `varchar`: the bytes as PostgreSQL compares them (deterministic collation only,
//!   UTF-8 sessions only: the caller checks both);
//! - `uuid`: its 16 bytes (any case, with or without hyphens or braces).
//!
//! Anything else (another type, a form that does not parse exactly as the server would, a
//! value out of range) is `None`: the caller falls back to the whole table. Parsing is
//! stricter than PostgreSQL's where it costs nothing (an integer with a `.` or an exponent is
//! refused, not rounded); refusing is always safe, accepting differently never is.
//!
//! The stripe is a keyed hash (the deployment's secret, so every instance sharing a Redis
//! tier agrees and a client cannot aim many keys at one stripe) of the relation and the key,
//! reduced to [`ROW_STRIPES`] counters: memory is constant, and two rows sharing a stripe
//! only cost an extra miss.

use siphasher::sip::SipHasher13;
use std::hash::Hasher;

use super::Tag;

/// Number of row-version counters (8 bytes each: 2 MiB per process, fields in Redis only for
/// stripes ever bumped). Every instance of a deployment must use the same number.
pub const ROW_STRIPES: u32 = 1 << 18;

/// Rows a pinned read or a write may name before it is treated as table-wide (an `IN` list
/// longer than this, a multi-row INSERT, rows written by one transaction).
pub const MAX_ROWS: usize = 64;

/// A row-version counter's index, below [`ROW_STRIPES`].
pub type Stripe = u32;

/// PostgreSQL type OIDs of the supported key column types.
pub mod oid {
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const INT8: u32 = 20;
    pub const TEXT: u32 = 25;
    pub const VARCHAR: u32 = 1043;
    pub const UUID: u32 = 2950;
}

/// The canonical family of a key column's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyType {
    /// `int2`, `int4`, `int8`, with the column's range.
    Int {
        min: i64,
        max: i64,
    },
    Text,
    Uuid,
}

impl KeyType {
    /// The family of a column of type `oid`, if pgmemo can canonicalise it.
    pub fn of_column(oid: u32) -> Option<KeyType> {
        match oid {
            oid::INT2 => Some(Self::Int {
                min: i16::MIN.into(),
                max: i16::MAX.into(),
            }),
            oid::INT4 => Some(Self::Int {
                min: i32::MIN.into(),
                max: i32::MAX.into(),
            }),
            oid::INT8 => Some(Self::Int {
                min: i64::MIN,
                max: i64::MAX,
            }),
            oid::TEXT | oid::VARCHAR => Some(Self::Text),
            oid::UUID => Some(Self::Uuid),
            _ => None,
        }
    }

    fn tag(self) -> u8 {
        match self {
            Self::Int { .. } => b'i',
            Self::Text => b't',
            Self::Uuid => b'u',
        }
    }

    /// Whether a parameter declared as `param_oid` (0: left to the server) compares with a
    /// column of this type by the column's own equality: the same family, never a type the
    /// server would convert first (`bpchar` trims, `numeric` and floats round).
    pub fn accepts_param_type(self, param_oid: u32) -> bool {
        match self {
            Self::Int { .. } => matches!(param_oid, 0 | oid::INT2 | oid::INT4 | oid::INT8),
            Self::Text => matches!(param_oid, 0 | oid::TEXT | oid::VARCHAR),
            Self::Uuid => matches!(param_oid, 0 | oid::UUID),
        }
    }
}

/// The canonical bytes of one row's key: each column's value in key-column order, tagged
/// with its family and length-prefixed, so no two keys share bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct RowKey(Vec<u8>);

impl RowKey {
    pub fn new() -> Self {
        // An int8 key is 13 bytes, a uuid 21: most keys fit without growing.
        Self(Vec::with_capacity(32))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Empties it, keeping its buffer.
    pub fn clear(&mut self) {
        self.0.clear();
    }

    /// Heap bytes held.
    pub fn weight(&self) -> usize {
        self.0.capacity()
    }

    fn push(&mut self, ty: KeyType, value: &[u8]) {
        self.0.push(ty.tag());
        self.0
            .extend_from_slice(&(value.len() as u32).to_be_bytes());
        self.0.extend_from_slice(value);
    }

    /// Appends a value in PostgreSQL's text input form (a string literal's value, a text
    /// parameter, a value printed by logical replication). `false`: not canonicalisable.
    #[must_use]
    pub fn push_text(&mut self, ty: KeyType, text: &[u8]) -> bool {
        match ty {
            KeyType::Int { min, max } => match parse_int(text) {
                Some(v) if (min..=max).contains(&v) => {
                    self.push(ty, &v.to_be_bytes());
                    true
                }
                _ => false,
            },
            KeyType::Text => {
                // A NUL cannot be in a PostgreSQL text value: such input is an error there.
                if text.contains(&0) {
                    return false;
                }
                self.push(ty, text);
                true
            }
            KeyType::Uuid => match parse_uuid(text) {
                Some(u) => {
                    self.push(ty, &u);
                    true
                }
                None => false,
            },
        }
    }

    /// Appends an unsigned decimal integer literal written in SQL (digits only).
    #[must_use]
    pub fn push_number(&mut self, ty: KeyType, digits: &[u8]) -> bool {
        // A bare number is an integer constant only for an integer column; compared with a
        // text or uuid column it is an error (no row).
        matches!(ty, KeyType::Int { .. })
            && !digits.is_empty()
            && digits.iter().all(u8::is_ascii_digit)
            && self.push_text(ty, digits)
    }

    /// Appends a Bind parameter in binary format declared as `param_oid` (0: the server
    /// infers the column's own type).
    #[must_use]
    pub fn push_binary(&mut self, ty: KeyType, param_oid: u32, value: &[u8]) -> bool {
        if !ty.accepts_param_type(param_oid) {
            return false;
        }
        match ty {
            KeyType::Int { min, max } => {
                let expected = match param_oid {
                    0 => int_width(min),
                    oid::INT2 => 2,
                    oid::INT4 => 4,
                    _ => 8,
                };
                let v = match (expected, value) {
                    (2, [a, b]) => i64::from(i16::from_be_bytes([*a, *b])),
                    (4, &[a, b, c, d]) => i64::from(i32::from_be_bytes([a, b, c, d])),
                    (8, v) => match <[u8; 8]>::try_from(v) {
                        Ok(bytes) => i64::from_be_bytes(bytes),
                        Err(_) => return false,
                    },
                    _ => return false,
                };
                (min..=max).contains(&v) && {
                    self.push(ty, &v.to_be_bytes());
                    true
                }
            }
            // text/varchar binary send is the string's bytes, as in text format.
            KeyType::Text => self.push_text(ty, value),
            KeyType::Uuid => match <[u8; 16]>::try_from(value) {
                Ok(u) => {
                    self.push(ty, &u);
                    true
                }
                Err(_) => false,
            },
        }
    }

    /// The stripe of this key of `tag` under the deployment's stripe key.
    pub fn stripe(&self, key: (u64, u64), tag: Tag) -> Stripe {
        let mut h = SipHasher13::new_with_keys(key.0, key.1);
        h.write(&tag.db.to_le_bytes());
        h.write(&tag.rel.to_le_bytes());
        h.write(&self.0);
        // Reduce without modulo bias worth caring about: a multiply-shift of 64 bits.
        ((u128::from(h.finish()) * u128::from(ROW_STRIPES)) >> 64) as Stripe
    }
}

fn int_width(min: i64) -> usize {
    if min == i64::from(i16::MIN) {
        2
    } else if min == i64::from(i32::MIN) {
        4
    } else {
        8
    }
}

/// An integer as `int8in` reads it (optional surrounding whitespace and sign, decimal digits
/// only), or `None`.
fn parse_int(text: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(text).ok()?;
    let s = s.trim_matches(|c: char| matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c'));
    let (negative, digits) = match s.as_bytes().first() {
        Some(b'-') => (true, s.get(1..)?),
        Some(b'+') => (false, s.get(1..)?),
        _ => (false, s),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Through i128 so that `-9223372036854775808` parses and longer runs of digits fail.
    if digits.len() > 30 {
        return None;
    }
    let magnitude: i128 = digits.parse().ok()?;
    let v = if negative { -magnitude } else { magnitude };
    i64::try_from(v).ok()
}

/// A uuid as `uuid_in` reads it: 32 hex digits, optionally in braces, with a hyphen allowed
/// after any group of four digits.
fn parse_uuid(text: &[u8]) -> Option<[u8; 16]> {
    let inner = match (text.first(), text.last()) {
        (Some(b'{'), Some(b'}')) => text.get(1..text.len().checked_sub(1)?)?,
        _ => text,
    };
    let mut out = [0u8; 16];
    let mut nibbles = 0usize;
    let mut prev_hyphen = true; // no leading hyphen
    for &b in inner {
        if b == b'-' {
            // uuid_in: a hyphen only after an even, non-zero group of 4 digits, never two.
            if prev_hyphen || !nibbles.is_multiple_of(4) || nibbles == 32 {
                return None;
            }
            prev_hyphen = true;
            continue;
        }
        let v = (b as char).to_digit(16)? as u8;
        let byte = out.get_mut(nibbles / 2)?;
        *byte = if nibbles.is_multiple_of(2) {
            v << 4
        } else {
            *byte | v
        };
        nibbles += 1;
        prev_hyphen = false;
    }
    (nibbles == 32 && !prev_hyphen).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INT4: KeyType = KeyType::Int {
        min: i32::MIN as i64,
        max: i32::MAX as i64,
    };
    const T: Tag = Tag { db: 1, rel: 42 };
    const K: (u64, u64) = (7, 9);

    fn text(ty: KeyType, v: &str) -> Option<RowKey> {
        let mut k = RowKey::new();
        k.push_text(ty, v.as_bytes()).then_some(k)
    }

    #[test]
    fn integer_forms_of_one_value_are_one_key() {
        let seven = text(INT4, "7").unwrap();
        for form in ["007", " 7", "7 ", "+7", "\t7\n"] {
            assert_eq!(text(INT4, form).as_ref(), Some(&seven), "{form:?}");
        }
        let mut lit = RowKey::new();
        assert!(lit.push_number(INT4, b"007"));
        assert_eq!(lit, seven, "the literal 007");
        for (oid, bytes) in [
            (0u32, vec![0, 0, 0, 7]),
            (oid::INT4, vec![0, 0, 0, 7]),
            (oid::INT8, vec![0, 0, 0, 0, 0, 0, 0, 7]),
            (oid::INT2, vec![0, 7]),
        ] {
            let mut b = RowKey::new();
            assert!(b.push_binary(INT4, oid, &bytes), "{oid}");
            assert_eq!(b, seven, "binary as {oid}");
            assert_eq!(b.stripe(K, T), seven.stripe(K, T));
        }
        assert_ne!(text(INT4, "8"), Some(seven.clone()));
        assert_eq!(text(INT4, "-7").map(|k| k == seven), Some(false));
    }

    #[test]
    fn what_the_server_would_read_differently_is_refused() {
        for bad in [
            "7.0",
            "7e0",
            "0x7",
            "1_000",
            "",
            " ",
            "-",
            "+-7",
            "７",
            "7a",
            "2147483648",
        ] {
            assert_eq!(text(INT4, bad), None, "{bad:?}");
        }
        let mut k = RowKey::new();
        assert!(!k.push_number(INT4, b"-7"), "a sign is not a plain literal");
        assert!(!k.push_number(KeyType::Text, b"7"), "a number against text");
        // Binary of the wrong width or a type the server would convert first.
        assert!(!RowKey::new().push_binary(INT4, 0, &[0, 0, 7]));
        assert!(!RowKey::new().push_binary(INT4, 0, &[0, 0, 0, 0, 0, 0, 0, 7]));
        assert!(!RowKey::new().push_binary(INT4, 701, &[0; 8]), "float8");
        assert!(!RowKey::new().push_binary(INT4, 1700, &[0; 8]), "numeric");
        assert!(
            !RowKey::new().push_binary(KeyType::Text, 1042, b"a"),
            "bpchar"
        );
        assert!(!RowKey::new().push_binary(
            KeyType::Int {
                min: i16::MIN.into(),
                max: i16::MAX.into()
            },
            oid::INT4,
            &70_000i32.to_be_bytes()
        ));
        assert_eq!(text(KeyType::Text, "a\0b"), None);
    }

    #[test]
    fn int8_extremes() {
        let int8 = KeyType::of_column(oid::INT8).unwrap();
        assert!(text(int8, "-9223372036854775808").is_some());
        assert!(text(int8, "9223372036854775808").is_none());
        assert!(text(int8, "99999999999999999999999999999999999").is_none());
    }

    #[test]
    fn uuid_forms_are_one_key() {
        let canonical = text(KeyType::Uuid, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11").unwrap();
        for form in [
            "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
            "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
            "a0eebc999c0b4ef8bb6d6bb9bd380a11",
            "a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11",
        ] {
            assert_eq!(
                text(KeyType::Uuid, form).as_ref(),
                Some(&canonical),
                "{form}"
            );
        }
        for bad in [
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1",
            "-a0eebc999c0b4ef8bb6d6bb9bd380a11",
            "a0eebc999c0b4ef8bb6d6bb9bd380a11-",
            "a0eebc99--9c0b4ef8bb6d6bb9bd380a11",
            "{a0eebc999c0b4ef8bb6d6bb9bd380a11",
            "g0eebc999c0b4ef8bb6d6bb9bd380a11",
        ] {
            assert_eq!(text(KeyType::Uuid, bad), None, "{bad}");
        }
        let mut b = RowKey::new();
        assert!(b.push_binary(
            KeyType::Uuid,
            oid::UUID,
            &[
                0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd, 0x38,
                0x0a, 0x11
            ]
        ));
        assert_eq!(b, canonical);
    }

    #[test]
    fn composite_keys_do_not_run_together_and_stripes_are_bounded() {
        let ab = {
            let mut k = RowKey::new();
            assert!(k.push_text(KeyType::Text, b"ab"));
            assert!(k.push_text(KeyType::Text, b"c"));
            k
        };
        let a_bc = {
            let mut k = RowKey::new();
            assert!(k.push_text(KeyType::Text, b"a"));
            assert!(k.push_text(KeyType::Text, b"bc"));
            k
        };
        assert_ne!(ab, a_bc);
        let mut seen = std::collections::HashSet::new();
        let mut same_other_rel = 0usize;
        for i in 0..10_000 {
            let k = text(INT4, &i.to_string()).unwrap();
            let s = k.stripe(K, T);
            assert!(s < ROW_STRIPES);
            seen.insert(s);
            same_other_rel += usize::from(s == k.stripe(K, Tag { db: 1, rel: 43 }));
        }
        // 10,000 keys over 262,144 stripes: a few collisions at most.
        assert!(seen.len() > 9_700, "{}", seen.len());
        assert!(
            same_other_rel < 10,
            "the relation is part of the hash: {same_other_rel}"
        );
    }
}
