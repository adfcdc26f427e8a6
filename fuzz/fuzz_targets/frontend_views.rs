//! The zero-copy views of the extended-protocol messages (`protocol::frontend`: Parse, Bind
//! and its parameters, Describe, Execute, Close) on arbitrary frames. Every view reads any
//! frame (the tag is the caller's business), so each runs on every input. Asserts: no panic;
//! every slice a view returns lies inside the frame's body (never past the frame); a Parse's
//! type list is whole OIDs; a Bind whose tail is valid and whose format count fits the
//! parameter count yields every parameter, and an unreadable parameter ends the iteration;
//! the iteration is bounded by the parameter count.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgmemo::protocol::HEADER_LEN;
use pgmemo::protocol::frontend::{Bind, Close, Describe, Execute, Params, Parse};
use pgmemo_fuzz::within;

fuzz_target!(|frame: &[u8]| {
    let body = frame.get(HEADER_LEN..).unwrap_or_default();
    if let Some(p) = Parse::read(frame) {
        for s in [p.name, p.sql, p.param_types, p.rest] {
            assert!(within(body, s));
        }
        assert_eq!(p.param_types.len() % 4, 0);
        assert!(body.ends_with(p.rest));
    }
    if let Some(b) = Bind::read(frame) {
        assert!(within(body, b.portal) && within(body, b.statement) && within(body, b.tail));
        assert!(body.ends_with(b.tail));
        let valid = b.tail_is_valid();
        let (nformats, count) = counts(b.tail);
        let mut seen = 0usize;
        let mut broken = false;
        for p in b.params() {
            assert!(!broken, "nothing follows an unreadable parameter");
            seen += 1;
            match p {
                Some(p) => {
                    if let Some(v) = p.value {
                        assert!(within(b.tail, v));
                    }
                }
                None => broken = true,
            }
        }
        if valid {
            let count = count.expect("a valid tail has a parameter count");
            let fits = nformats.is_some_and(|n| n <= 1 || n == count);
            if fits {
                assert!(!broken, "a valid Bind's parameter was unreadable");
                assert_eq!(seen, count);
            }
        }
        assert!(seen <= count.unwrap_or(1).max(1));
        // The free-standing reader agrees with the method.
        assert_eq!(Params::of_tail(b.tail).count(), seen);
    }
    if let Some(d) = Describe::read(frame) {
        assert!(within(body, d.name) && within(body, d.rest));
        assert!(body.ends_with(d.rest));
    }
    if let Some(e) = Execute::read(frame) {
        assert!(within(body, e.portal) && within(body, e.rest));
        assert_eq!(e.portal.len() + 1 + 4 + e.rest.len(), body.len());
    }
    if let Some(c) = Close::read(frame) {
        assert!(within(body, c.name));
    }
});

/// The format count and parameter count at the head of a Bind tail, as far as readable.
fn counts(tail: &[u8]) -> (Option<usize>, Option<usize>) {
    let i16_at = |at: usize| -> Option<i16> {
        Some(i16::from_be_bytes(tail.get(at..at + 2)?.try_into().ok()?))
    };
    let Some(nformats) = i16_at(0).and_then(|n| usize::try_from(n).ok()) else {
        return (None, None);
    };
    let count = i16_at(2 + 2 * nformats).and_then(|n| usize::try_from(n).ok());
    (Some(nformats), count)
}
