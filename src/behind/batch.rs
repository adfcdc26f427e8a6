//! One batch of queued writes as one PostgreSQL transaction, sent as a single pipeline (one
//! round trip): `BEGIN`, for each run of writes of one role and settings a `set_config`
//! call, each write (or, with coalescing, each row's merged increment), the role reset,
//! the progress row's advance, `COMMIT`, Sync. Pure: building the bytes and reading the
//! replies back into what happened to each write; the flusher does the I/O.
//!
//! The progress row makes the batch exactly-once: its advance only succeeds from the value
//! the flusher read (`WHERE applied = $from`, a division by zero otherwise aborts the whole
//! transaction), so a batch that committed before a crash is never applied again, and two
//! flushers can never both apply one.

use std::sync::Arc;

use bytes::BufMut;

use super::entry::{Entry, Op, RECORDED_SETTINGS};
use super::prepared::{Prepared, Use};
use crate::protocol::response::put_frame;
use crate::protocol::tags::backend;

/// One statement the batch runs for queued writes: a write as queued, or increments of one
/// row merged.
#[derive(Debug, Clone, PartialEq)]
pub struct Unit {
    /// Positions (in the batch's entries) of the writes it carries.
    pub members: Vec<usize>,
    /// For a merged increment, the summed delta.
    pub delta: Option<i64>,
}

/// What each reply of the pipeline belongs to, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Begin,
    /// `SET CONSTRAINTS ALL IMMEDIATE`: a deferred constraint fails at the write that
    /// broke it, as in autocommit, not at COMMIT where no write can be named.
    Immediate,
    /// The progress row is locked and still holds the value this batch moves it from
    /// (else a batch that committed after its reply was lost is not applied again).
    Check,
    /// Role and settings for the units that follow, taken from this entry.
    Session(usize),
    Unit(usize),
    Reset,
    Progress,
    Commit,
}

/// A built batch.
pub struct Built {
    pub bytes: Vec<u8>,
    pub steps: Vec<Step>,
    pub units: Vec<Unit>,
}

/// Groups the entries into units: each write is one, except that with `coalesce` an
/// increment joins the earlier unit of the same row (same table, column, key, role and
/// settings) when no other kind of write lies between them (an INSERT could create the row
/// an increment then finds). Increments of different rows commute, so moving one past
/// another changes no row's final value. An entry for which `alone(position)` holds is
/// never merged.
pub fn units(entries: &[Arc<Entry>], alone: &dyn Fn(usize) -> bool) -> Vec<Unit> {
    let mut out: Vec<Unit> = Vec::with_capacity(entries.len());
    // Units since the last write that is not a coalescible increment.
    let mut open_from = 0;
    for (i, e) in entries.iter().enumerate() {
        let Op::Increment {
            delta,
            coalesce: true,
            ..
        } = &e.op
        else {
            out.push(Unit {
                members: vec![i],
                delta: None,
            });
            open_from = out.len();
            continue;
        };
        if alone(i) {
            // Nothing joins it either: the merge window closes behind it.
            out.push(Unit {
                members: vec![i],
                delta: Some(*delta),
            });
            open_from = out.len();
            continue;
        }
        let joined = out.iter_mut().skip(open_from).find(|u| {
            u.members
                .first()
                .and_then(|&m| entries.get(m))
                .is_some_and(|first| same_row(first, e))
        });
        match joined {
            Some(unit) => match unit.delta.and_then(|d| d.checked_add(*delta)) {
                Some(sum) => {
                    unit.delta = Some(sum);
                    unit.members.push(i);
                }
                // The sum would overflow: a unit of its own (the column may still hold it).
                None => out.push(Unit {
                    members: vec![i],
                    delta: Some(*delta),
                }),
            },
            None => out.push(Unit {
                members: vec![i],
                delta: Some(*delta),
            }),
        }
    }
    out
}

fn same_row(a: &Entry, b: &Entry) -> bool {
    match (&a.op, &b.op) {
        (
            Op::Increment {
                table: t1,
                column: c1,
                key_column: k1,
                key: v1,
                ..
            },
            Op::Increment {
                table: t2,
                column: c2,
                key_column: k2,
                key: v2,
                ..
            },
        ) => t1 == t2 && c1 == c2 && k1 == k2 && v1 == v2 && a.same_session(b),
        _ => false,
    }
}

/// Where a batch goes and what it moves: the progress row of `queue` from `from` to `to`.
pub struct Target<'a> {
    pub queue: &'a str,
    pub from: u64,
    pub to: u64,
}

/// The pipeline applying `entries` (grouped into `units`) and moving the progress row as
/// `target` says. `defaults` are the server's defaults of the recorded settings (a setting
/// an entry does not record is set to its default); `prepared` the connection's named
/// statements (closed ones are closed first, outside the transaction).
pub fn build(
    entries: &[Arc<Entry>],
    units: Vec<Unit>,
    target: &Target<'_>,
    defaults: &[(String, String)],
    prepared: &mut Prepared,
) -> Built {
    let mut out = Vec::with_capacity(256 + 128 * entries.len());
    let mut steps = Vec::with_capacity(units.len() + 8);
    let (queue, from_s, to_s) = (
        target.queue.as_bytes(),
        target.from.to_string(),
        target.to.to_string(),
    );
    for name in prepared.take_closing() {
        put_frame(&mut out, b'C', &[b"S", name.as_bytes(), b"\0"]);
    }
    run(&mut out, "BEGIN", &[]);
    steps.push(Step::Begin);
    run(&mut out, "SET CONSTRAINTS ALL IMMEDIATE", &[]);
    steps.push(Step::Immediate);
    run(
        &mut out,
        "WITH held AS (SELECT 1 FROM pgmemo.behind_progress WHERE queue OPERATOR(pg_catalog.=) $1 \
         AND applied OPERATOR(pg_catalog.=) $2::pg_catalog.int8 FOR UPDATE) \
         SELECT 1 OPERATOR(pg_catalog./) (SELECT pg_catalog.count(*)::pg_catalog.int4 FROM held)",
        &[queue, from_s.as_bytes()],
    );
    steps.push(Step::Check);
    let mut session: Option<&Entry> = None;
    for (u, unit) in units.iter().enumerate() {
        let Some(first) = unit.members.first().and_then(|&m| entries.get(m)) else {
            continue;
        };
        if !session.is_some_and(|s| s.same_session(first)) {
            let (sql, params) = session_call(first, defaults);
            let params: Vec<&[u8]> = params.iter().map(|p| p.as_bytes()).collect();
            run(&mut out, &sql, &params);
            steps.push(Step::Session(unit.members.first().copied().unwrap_or(0)));
            session = Some(first);
        }
        match &first.op {
            Op::Statement {
                sql, types, bind, ..
            } => {
                let how = prepared.lookup(sql, types, first);
                statement(&mut out, sql, types, bind, &how);
            }
            Op::Increment {
                table,
                column,
                key_column,
                key,
                delta,
                ..
            } => {
                let sql =
                    format!("UPDATE {table} SET {column} = {column} + $1 WHERE {key_column} = $2");
                let delta = unit.delta.unwrap_or(*delta).to_string();
                run(&mut out, &sql, &[delta.as_bytes(), key.as_bytes()]);
            }
        }
        steps.push(Step::Unit(u));
    }
    // Back to pgmemo's own role, and a search_path no writer chose: the progress statement
    // runs as pgmemo, so no operator or function a writer's schema defines may resolve in
    // it (every name in it is qualified as well).
    run(
        &mut out,
        "SELECT pg_catalog.set_config('role', 'none', true), \
         pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true)",
        &[],
    );
    steps.push(Step::Reset);
    // Division by zero unless exactly the expected row moved: the transaction aborts and
    // COMMIT, skipped, leaves nothing applied.
    run(
        &mut out,
        "WITH moved AS (UPDATE pgmemo.behind_progress SET applied = $3::pg_catalog.int8, \
         updated_at = pg_catalog.now() WHERE queue OPERATOR(pg_catalog.=) $1 \
         AND applied OPERATOR(pg_catalog.=) $2::pg_catalog.int8 RETURNING 1) \
         SELECT 1 OPERATOR(pg_catalog./) (SELECT pg_catalog.count(*)::pg_catalog.int4 FROM moved)",
        &[queue, from_s.as_bytes(), to_s.as_bytes()],
    );
    steps.push(Step::Progress);
    run(&mut out, "COMMIT", &[]);
    steps.push(Step::Commit);
    put_frame(&mut out, b'S', &[]);
    Built {
        bytes: out,
        steps,
        units,
    }
}

/// `SELECT set_config(...)` for the role, search_path and recorded settings of `e`.
fn session_call(e: &Entry, defaults: &[(String, String)]) -> (String, Vec<String>) {
    let mut sql = String::from(
        "SELECT pg_catalog.set_config('search_path', $1, true), \
         pg_catalog.set_config('role', $2, true)",
    );
    let mut params = vec![e.search_path.clone(), e.role.clone()];
    for name in RECORDED_SETTINGS {
        let value = e
            .settings
            .iter()
            .find(|(n, _)| n == name)
            .or_else(|| defaults.iter().find(|(n, _)| n == name))
            .map(|(_, v)| v.clone());
        let Some(value) = value else { continue };
        params.push(value);
        sql.push_str(&format!(
            ", pg_catalog.set_config('{name}', ${}, true)",
            params.len()
        ));
    }
    (sql, params)
}

/// Parse, Bind (text parameters), Execute of `sql` on the unnamed statement.
pub(super) fn run(out: &mut Vec<u8>, sql: &str, params: &[&[u8]]) {
    put_frame(out, b'P', &[b"\0", sql.as_bytes(), b"\0", &[0, 0]]);
    let mut bind = Vec::with_capacity(16 + params.iter().map(|p| p.len() + 4).sum::<usize>());
    bind.put_slice(b"\0\0");
    bind.put_i16(0);
    bind.put_i16(i16::try_from(params.len()).unwrap_or(i16::MAX));
    for p in params {
        bind.put_i32(i32::try_from(p.len()).unwrap_or(i32::MAX));
        bind.put_slice(p);
    }
    bind.put_i16(0);
    put_frame(out, b'B', &[&bind]);
    execute(out);
}

/// A queued statement as its client sent it, parsed (named or not) or bound to the
/// connection's statement of the same text.
fn statement(out: &mut Vec<u8>, sql: &[u8], types: &[u8], bind: &[u8], how: &Use) {
    let name: &[u8] = match how {
        Use::Bound(name) | Use::Parse(name) => name.as_bytes(),
        Use::Unnamed => b"",
    };
    if !matches!(how, Use::Bound(_)) {
        let count = i16::try_from(types.len() / 4)
            .unwrap_or(i16::MAX)
            .to_be_bytes();
        put_frame(out, b'P', &[name, b"\0", sql, b"\0", &count, types]);
    }
    // Bind: the unnamed portal, the statement, then the client's formats and values (none
    // from the simple protocol).
    let rest: &[u8] = if bind.is_empty() {
        &[0, 0, 0, 0, 0, 0]
    } else {
        bind
    };
    put_frame(out, b'B', &[b"\0", name, b"\0", rest]);
    execute(out);
}

fn execute(out: &mut Vec<u8>) {
    put_frame(out, b'E', &[b"\0", &0i32.to_be_bytes()]);
}

/// How the batch ended, read from its replies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Committed; the command tags of the units, in order.
    Committed(Vec<String>),
    /// The server reported an error at `step`; nothing was applied.
    Failed { step: Step, error: ServerError },
}

/// An ErrorResponse's SQLSTATE and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    pub code: String,
    pub message: String,
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// Reads the replies, frame by frame, against the steps.
pub struct Replies<'a> {
    steps: &'a [Step],
    at: usize,
    tags: Vec<String>,
    failed: Option<(Step, ServerError)>,
}

impl<'a> Replies<'a> {
    pub fn new(steps: &'a [Step]) -> Self {
        Self {
            steps,
            at: 0,
            tags: Vec::new(),
            failed: None,
        }
    }

    /// One backend frame (whole, header included). `Some` once the pipeline's
    /// ReadyForQuery arrived.
    pub fn frame(&mut self, tag: u8, frame: &[u8]) -> Option<Outcome> {
        let body = frame.get(5..).unwrap_or_default();
        match tag {
            backend::COMMAND_COMPLETE | backend::EMPTY_QUERY_RESPONSE => {
                if matches!(self.steps.get(self.at), Some(Step::Unit(_))) {
                    let text = body.strip_suffix(&[0]).unwrap_or(body);
                    self.tags.push(String::from_utf8_lossy(text).into_owned());
                }
                self.at += 1;
            }
            backend::ERROR_RESPONSE if self.failed.is_none() => {
                let step = self.steps.get(self.at).copied().unwrap_or(Step::Commit);
                self.failed = Some((step, server_error(body)));
            }
            backend::READY_FOR_QUERY => {
                return Some(match self.failed.take() {
                    Some((step, error)) => Outcome::Failed { step, error },
                    // A COMMIT of a transaction that had failed answers ROLLBACK.
                    None if self.at < self.steps.len() => Outcome::Failed {
                        step: Step::Commit,
                        error: ServerError {
                            code: "XX000".into(),
                            message: "the batch ended before its COMMIT completed".into(),
                        },
                    },
                    None => Outcome::Committed(std::mem::take(&mut self.tags)),
                });
            }
            _ => {}
        }
        None
    }
}

/// The SQLSTATE (`C`) and message (`M`) fields of an ErrorResponse body.
pub fn server_error(body: &[u8]) -> ServerError {
    let mut code = String::new();
    let mut message = String::new();
    let mut rest = body;
    while let Some((&kind, after)) = rest.split_first() {
        if kind == 0 {
            break;
        }
        let end = after.iter().position(|&b| b == 0).unwrap_or(after.len());
        let value = String::from_utf8_lossy(after.get(..end).unwrap_or_default()).into_owned();
        match kind {
            b'C' => code = value,
            b'M' => message = value,
            _ => {}
        }
        rest = after.get(end + 1..).unwrap_or_default();
    }
    ServerError { code, message }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn inc(key: &str, delta: i64, coalesce: bool) -> Arc<Entry> {
        entry(Op::Increment {
            table: "\"public\".\"c\"".into(),
            column: "\"n\"".into(),
            key_column: "\"id\"".into(),
            key: key.into(),
            delta,
            coalesce,
        })
    }

    fn insert() -> Arc<Entry> {
        entry(Op::Statement {
            sql: Bytes::from_static(b"INSERT INTO c VALUES (1, 0)"),
            types: Bytes::new(),
            bind: Bytes::new(),
            rows: 1,
        })
    }

    fn entry(op: Op) -> Arc<Entry> {
        Arc::new(Entry {
            database: "d".into(),
            role: "r".into(),
            search_path: "public".into(),
            settings: Vec::new(),
            db_oid: 1,
            tags: vec![2],
            acked_ms: 0,
            op,
        })
    }

    fn members(u: &[Unit]) -> Vec<Vec<usize>> {
        u.iter().map(|u| u.members.clone()).collect()
    }

    #[test]
    fn increments_of_one_row_merge_but_never_across_another_kind_of_write() {
        let e = [
            inc("1", 1, true),
            inc("2", 5, true),
            inc("1", 1, true),
            insert(),
            inc("1", 1, true),
            inc("1", -4, true),
        ];
        let u = units(&e, &|_| false);
        assert_eq!(members(&u), vec![vec![0, 2], vec![1], vec![3], vec![4, 5]]);
        assert_eq!(u[0].delta, Some(2));
        assert_eq!(u[3].delta, Some(-3));
    }

    #[test]
    fn increments_marked_alone_neither_merge_nor_are_joined() {
        let e = [inc("1", 1, true), inc("1", 1, true), inc("1", 1, true)];
        assert_eq!(
            members(&units(&e, &|i| i == 1)),
            vec![vec![0], vec![1], vec![2]]
        );
        assert_eq!(members(&units(&e, &|i| i == 0)), vec![vec![0], vec![1, 2]]);
    }

    #[test]
    fn without_coalesce_or_on_overflow_each_increment_stands_alone() {
        let e = [inc("1", 1, false), inc("1", 1, false)];
        assert_eq!(members(&units(&e, &|_| false)), vec![vec![0], vec![1]]);
        let e = [inc("1", i64::MAX, true), inc("1", 1, true)];
        assert_eq!(members(&units(&e, &|_| false)), vec![vec![0], vec![1]]);
    }

    /// (tag, body) of each frame of a built pipeline.
    fn frames(bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        let mut rest = bytes;
        while rest.len() >= 5 {
            let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
            out.push((rest[0], rest[5..1 + len].to_vec()));
            rest = &rest[1 + len..];
        }
        out
    }

    #[test]
    fn a_text_is_parsed_once_per_connection_and_closed_after_a_failed_batch() {
        let e = [insert(), insert(), insert()];
        let target = Target {
            queue: "q",
            from: 0,
            to: 3,
        };
        let mut prepared = Prepared::default();
        let named_parses = |b: &Built| {
            frames(&b.bytes)
                .iter()
                .filter(|(t, body)| *t == b'P' && body.starts_with(b"pgmemo_behind_"))
                .count()
        };
        let first = build(&e, units(&e, &|_| false), &target, &[], &mut prepared);
        assert_eq!(
            named_parses(&first),
            1,
            "three writes of one text, one Parse"
        );
        let binds = frames(&first.bytes)
            .into_iter()
            .filter(|(t, body)| *t == b'B' && body.starts_with(b"\0pgmemo_behind_1\0"))
            .count();
        assert_eq!(binds, 3);
        prepared.committed();
        let second = build(&e, units(&e, &|_| false), &target, &[], &mut prepared);
        assert_eq!(named_parses(&second), 0, "known on the connection");
        // A batch that fails: a text it parsed may or may not exist, so it is closed first
        // thing in the next batch and parsed again under a new name.
        let e2 = [entry(Op::Statement {
            sql: Bytes::from_static(b"INSERT INTO c VALUES (2, 0)"),
            types: Bytes::new(),
            bind: Bytes::new(),
            rows: 1,
        })];
        build(&e2, units(&e2, &|_| false), &target, &[], &mut prepared);
        prepared.failed();
        let third = build(&e2, units(&e2, &|_| false), &target, &[], &mut prepared);
        let f = frames(&third.bytes);
        assert_eq!(
            f.first().map(|(t, b)| (*t, b.clone())),
            Some((b'C', b"Spgmemo_behind_2\0".to_vec()))
        );
        assert_eq!(named_parses(&third), 1);
        assert!(third.bytes.windows(16).any(|w| w == b"pgmemo_behind_3\0"));
    }

    #[test]
    fn replies_name_the_failing_step() {
        let e = [insert(), insert()];
        let target = Target {
            queue: "q",
            from: 0,
            to: 2,
        };
        let b = build(
            &e,
            units(&e, &|_| false),
            &target,
            &[],
            &mut Prepared::default(),
        );
        assert_eq!(
            b.steps,
            vec![
                Step::Begin,
                Step::Immediate,
                Step::Check,
                Step::Session(0),
                Step::Unit(0),
                Step::Unit(1),
                Step::Reset,
                Step::Progress,
                Step::Commit
            ]
        );
        let text = String::from_utf8_lossy(&b.bytes);
        assert!(
            text.contains("set_config('search_path', 'pg_catalog, pg_temp', true)"),
            "the progress statement never runs under a writer's search_path"
        );
        let mut r = Replies::new(&b.steps);
        let cc = |t: &str| [b"C\0\0\0\0".as_slice(), t.as_bytes(), b"\0"].concat();
        assert!(r.frame(b'C', &cc("BEGIN")).is_none());
        r.frame(b'C', &cc("SET CONSTRAINTS"));
        r.frame(b'C', &cc("SELECT 1"));
        r.frame(b'C', &cc("SELECT 1"));
        r.frame(b'C', &cc("INSERT 0 1"));
        r.frame(b'E', b"E\0\0\0\0SERROR\0C23505\0Mduplicate key\0\0");
        let out = r.frame(b'Z', b"Z\0\0\0\x05E");
        assert_eq!(
            out,
            Some(Outcome::Failed {
                step: Step::Unit(1),
                error: ServerError {
                    code: "23505".into(),
                    message: "duplicate key".into()
                }
            })
        );
    }
}
