use super::*;
use crate::protocol::response::frame;

fn parse(name: &str, q: &str) -> Bytes {
    let mut b = Vec::new();
    b.extend_from_slice(name.as_bytes());
    b.push(0);
    b.extend_from_slice(q.as_bytes());
    b.push(0);
    b.extend_from_slice(&1i16.to_be_bytes());
    b.extend_from_slice(&23i32.to_be_bytes());
    frame(b'P', &b)
}

fn close_stmt(name: &str) -> Bytes {
    let mut b = vec![b'S'];
    b.extend_from_slice(name.as_bytes());
    b.push(0);
    frame(b'C', &b)
}

fn fe(s: &mut SessionState, f: &Bytes) {
    s.on_frontend(f[0], f, None);
}

fn be(s: &mut SessionState, tag: u8, body: &[u8]) {
    s.on_backend(tag, &frame(tag, body));
}

#[test]
fn parse_complete_registers_and_close_removes() {
    let mut s = SessionState::default();
    fe(&mut s, &parse("s1", "select $1"));
    fe(&mut s, &frame(b'S', &[]));
    assert!(!s.is_idle());
    be(&mut s, b'1', &[]);
    be(&mut s, b'Z', b"I");
    assert!(s.is_idle());
    let st = s.registry.get(b"s1").unwrap();
    assert_eq!(st.param_oids().collect::<Vec<_>>(), vec![23]);
    fe(&mut s, &close_stmt("s1"));
    fe(&mut s, &frame(b'S', &[]));
    be(&mut s, b'3', &[]);
    be(&mut s, b'Z', b"I");
    assert!(s.registry.get(b"s1").is_none());
}

#[test]
fn failed_parse_is_not_registered_and_group_is_skipped() {
    let mut s = SessionState::default();
    fe(&mut s, &parse("bad", "selec"));
    fe(&mut s, &parse("later", "select 1"));
    fe(&mut s, &frame(b'S', &[]));
    fe(&mut s, &parse("next", "select 2"));
    fe(&mut s, &frame(b'S', &[]));
    be(&mut s, b'E', b"SERROR\0\0");
    be(&mut s, b'Z', b"I");
    be(&mut s, b'1', &[]);
    be(&mut s, b'Z', b"I");
    assert!(s.registry.get(b"bad").is_none());
    assert!(s.registry.get(b"later").is_none());
    assert!(s.registry.get(b"next").is_some());
    assert!(!s.registry.overflowed());
}

#[test]
fn simple_query_drops_unnamed_statement() {
    let mut s = SessionState::default();
    fe(&mut s, &parse("", "select 1"));
    fe(&mut s, &frame(b'S', &[]));
    be(&mut s, b'1', &[]);
    be(&mut s, b'Z', b"I");
    assert!(s.registry.get(b"").is_some());
    fe(&mut s, &frame(b'Q', b"select 2\0"));
    be(&mut s, b'Z', b"T");
    assert!(s.registry.get(b"").is_none());
    assert_eq!(s.txn, TxnStatus::InBlock);
    assert!(!s.is_idle());
}

#[test]
fn large_parse_pipelines_lose_tracking_instead_of_holding_their_text() {
    let mut s = SessionState::default();
    let big = "x".repeat(512 * 1024);
    for _ in 0..(crate::session::replies::MAX_AWAITED_BYTES / big.len() + 1) {
        fe(&mut s, &parse("", &big));
    }
    assert!(s.registry.overflowed());
    assert!(s.replies().losses() >= 1);
    assert!(s.replies.queued() < 16);
    assert!(s.replies.held_bytes() <= crate::session::replies::MAX_AWAITED_BYTES);
}

#[test]
fn malformed_parse_loses_tracking_without_panicking() {
    let mut s = SessionState::default();
    s.on_frontend(b'P', &frame(b'P', b"x"), None);
    assert!(s.registry.overflowed());
    be(&mut s, b'1', &[]);
    be(&mut s, b'Z', b"E");
    assert_eq!(s.txn, TxnStatus::Failed);
}

#[test]
fn one_queue_an_error_skips_the_groups_parses_and_statements_together() {
    let mut s = SessionState::default();
    fe(&mut s, &parse("a", "select 1"));
    s.expect_completion(Completion::Unknown);
    fe(&mut s, &frame(b'E', b"\0\0\0\0\0"));
    fe(&mut s, &parse("b", "select 2"));
    fe(&mut s, &frame(b'S', &[]));
    // Write tracking queues a Query's completions before the state sees the Query.
    s.expect_completion(Completion::Unknown);
    fe(&mut s, &frame(b'Q', b"select 3\0"));
    // "a" fails: the Execute and the Parse of "b" behind it are skipped.
    be(&mut s, b'E', b"SERROR\0\0");
    assert!(s.registry.get(b"a").is_none());
    assert!(s.registry.get(b"b").is_none());
    assert_eq!(s.next_ready(), Some(ReadyFor::Sync));
    be(&mut s, b'Z', b"I");
    // The Query's completion lines up with its own statement.
    assert!(matches!(s.take_completion(), Some(Completion::Unknown)));
    be(&mut s, b'Z', b"I");
    assert!(s.is_idle());
    assert!(!s.replies().is_lost());
    assert!(!s.registry.overflowed());
}

#[test]
fn a_reply_out_of_order_loses_tracking_until_the_session_is_idle() {
    let mut s = SessionState::default();
    fe(&mut s, &frame(b'Q', b"select 1\0"));
    // A completion nobody expected.
    assert!(s.take_completion().is_none());
    assert!(s.replies().is_lost());
    assert_eq!(s.replies().losses(), 1);
    assert!(s.take_completion().is_none());
    assert_eq!(s.replies().losses(), 1, "one loss until replies line up");
    be(&mut s, b'Z', b"I");
    assert!(s.is_idle());
    assert!(!s.replies().is_lost(), "lined up again at idle");
    assert!(
        s.registry.overflowed(),
        "statements may be missing for good"
    );
    fe(&mut s, &parse("c", "select 1"));
    fe(&mut s, &frame(b'S', &[]));
    be(&mut s, b'1', &[]);
    be(&mut s, b'Z', b"I");
    assert!(s.registry.get(b"c").is_some());
    assert_eq!(s.replies().losses(), 1);
}

#[test]
fn syncs_read_during_copy_in_expect_no_ready_for_query() {
    let mut s = SessionState::default();
    // Extended: Execute and Sync, then CopyInResponse; CopyDone and a second Sync.
    s.expect_completion(Completion::Unknown);
    fe(&mut s, &frame(b'E', b"\0\0\0\0\0"));
    fe(&mut s, &frame(b'S', &[]));
    be(&mut s, b'G', &[0, 0, 0]);
    assert_eq!(s.awaiting_ready(), 0, "PostgreSQL ignores that Sync");
    fe(&mut s, &frame(b'S', &[]));
    assert_eq!(s.awaiting_ready(), 0, "nor one sent during the copy");
    fe(&mut s, &frame(b'c', &[]));
    fe(&mut s, &frame(b'S', &[]));
    assert!(s.take_completion().is_some());
    be(&mut s, b'Z', b"I");
    assert!(s.is_idle());
    assert!(!s.replies().is_lost());

    // Simple: the Query's own ReadyForQuery stays awaited.
    s.expect_completion(Completion::Unknown);
    fe(&mut s, &frame(b'Q', b"copy t from stdin\0"));
    be(&mut s, b'G', &[0, 0, 0]);
    assert_eq!(s.awaiting_ready(), 1);
    fe(&mut s, &frame(b'f', b"stop\0"));
    be(&mut s, b'E', b"SERROR\0\0");
    be(&mut s, b'Z', b"I");
    assert!(s.is_idle());
    assert!(!s.replies().is_lost());

    // An error in copy-in ends it: the Sync after it is answered.
    s.expect_completion(Completion::Unknown);
    fe(&mut s, &frame(b'E', b"\0\0\0\0\0"));
    fe(&mut s, &frame(b'S', &[]));
    be(&mut s, b'G', &[0, 0, 0]);
    be(&mut s, b'E', b"SERROR\0\0");
    fe(&mut s, &frame(b'S', &[]));
    assert_eq!(s.awaiting_ready(), 1);
    be(&mut s, b'Z', b"I");
    assert!(s.is_idle());
    assert!(!s.replies().is_lost());
}
