//! The extended-group scanner (`session::cache_side::group::scan`) on arbitrary client bytes,
//! with `max_message` chosen by the input. Asserts: no panic; a recognised group lies inside
//! the buffer, ends with a Sync frame, and every slice it hands out lies inside it; the
//! verdict is stable when more bytes arrive (a Group stays the same Group, Other stays
//! Other: the relay may scan a buffer again after every read); the group alone, without what
//! followed it, is the same group; `params_may_read_clock` reads any Bind tail.
//!
//! Input: byte 0 chooses `max_message`, byte 1 how much is appended for the stability check,
//! the rest is the buffer (the scanner is only called with a Parse or Bind at its head, but
//! it must survive anything).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgmemo::protocol::frontend::SYNC_FRAME;
use pgmemo::session::cache_side::group::{Scan, params_may_read_clock, scan};
use pgmemo_fuzz::within;

fn same(a: &Scan<'_>, b: &Scan<'_>) -> bool {
    match (a, b) {
        (Scan::Group(x), Scan::Group(y)) => {
            x.len == y.len
                && x.statement == y.statement
                && x.bind_tail == y.bind_tail
                && x.describe == y.describe
                && x.max_rows == y.max_rows
                && x.parse.map(|p| (p.name, p.sql, p.param_types, p.frame))
                    == y.parse.map(|p| (p.name, p.sql, p.param_types, p.frame))
        }
        (Scan::Incomplete, Scan::Incomplete) | (Scan::Other, Scan::Other) => true,
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    let [size, extra, buf @ ..] = data else {
        return;
    };
    let max = match size % 3 {
        0 => 1 << 20,
        1 => 5 + usize::from(*size),
        _ => 1 << 10,
    };
    let verdict = scan(buf, max);
    // More bytes after the buffer: a Sync and some of the buffer again.
    let mut longer = buf.to_vec();
    longer.extend_from_slice(SYNC_FRAME);
    longer.extend_from_slice(&buf[..buf.len().min(usize::from(*extra))]);
    let later = scan(&longer, max);
    match &verdict {
        Scan::Group(g) => {
            assert!(g.len <= buf.len());
            let taken = &buf[..g.len];
            assert!(taken.ends_with(SYNC_FRAME), "a group ends with its Sync");
            assert!(within(taken, g.statement) && within(taken, g.bind_tail));
            if let Some(p) = g.parse {
                assert!(
                    within(taken, p.frame) && within(p.frame, p.sql) && within(p.frame, p.name)
                );
                assert!(within(p.frame, p.param_types) && p.param_types.len() % 4 == 0);
                assert!(taken.starts_with(p.frame));
            }
            let _ = params_may_read_clock(g.bind_tail);
            assert!(
                same(&verdict, &later),
                "more bytes changed a group: {later:?}"
            );
            assert!(
                same(&verdict, &scan(taken, max)),
                "the group depends on what follows it"
            );
        }
        Scan::Other => assert!(same(&verdict, &later), "more bytes made Other {later:?}"),
        Scan::Incomplete => {}
    }
    // The clock check reads anything as a Bind tail.
    let _ = params_may_read_clock(buf);
});
