//! The admin bearer token (`admin.token`, `PGMEMO_ADMIN_TOKEN`) and the
//! `Authorization: Bearer <token>` header; which requests need it is decided in [`super::guard`].
//!
//! Compared in constant time: both the configured token and the presented one are reduced
//! to an HMAC-SHA-256 under a per-process random key, and the MACs are compared by the
//! `hmac` crate's constant-time check, so neither the content nor the length of the token
//! leaks through response timing.

use axum::http::{HeaderMap, header};
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The configured token, kept only as its MAC.
pub struct AdminToken {
    key: [u8; 32],
    expected: Vec<u8>,
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(***)")
    }
}

impl AdminToken {
    pub fn new(token: &str) -> Self {
        let mut key = [0u8; 32];
        // The key only makes both sides the same length for the constant-time compare; its
        // secrecy adds nothing, so a failed random read (all zeros) is still safe.
        let _ = getrandom::fill(&mut key);
        let expected = mac(&key, token.as_bytes()).finalize().into_bytes().to_vec();
        Self { key, expected }
    }

    /// Whether `presented` is the token.
    pub fn matches(&self, presented: &[u8]) -> bool {
        mac(&self.key, presented)
            .verify_slice(&self.expected)
            .is_ok()
    }
}

fn mac(key: &[u8; 32], data: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length: `new_from_slice` cannot fail for it.
    let mut m = <HmacSha256 as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts a 32-byte key"));
    m.update(data);
    m
}

/// The token of an `Authorization: Bearer <token>` header, if there is one.
pub(super) fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(header::AUTHORIZATION)?.as_bytes();
    let scheme = value.get(..7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| value.get(7..).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_token_matches() {
        let t = AdminToken::new("correct-horse-battery-staple");
        assert!(t.matches(b"correct-horse-battery-staple"));
        assert!(!t.matches(b"correct-horse-battery-stapl"));
        assert!(!t.matches(b"correct-horse-battery-staple "));
        assert!(!t.matches(b""));
        assert!(!format!("{t:?}").contains("horse"));
    }

    #[test]
    fn bearer_header_parsing() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        for (value, want) in [
            ("Bearer abc", Some(&b"abc"[..])),
            ("bearer abc", Some(b"abc")),
            ("Basic abc", None),
            ("Bearer", None),
            ("Bearer ", Some(b"")),
        ] {
            h.insert(
                header::AUTHORIZATION,
                value.parse().unwrap_or_else(|_| panic!()),
            );
            assert_eq!(bearer(&h), want, "{value}");
        }
    }
}
