//! Write-behind in the session (issue 20): a simple Query or an extended group that is one
//! queueable write ([`crate::planner::plan::BehindPlan`]) is held while it is queued and
//! then answered here with the CommandComplete PostgreSQL would have sent; it never goes
//! upstream. Only for a session logged in as the flusher's own role (no `SET ROLE`: under
//! it, code the write runs could reset the role to pgmemo's), and only when it is idle
//! (outside a transaction block, nothing
//! outstanding), its settings are exactly those its last probe read (so the role,
//! search_path and the settings that change how literals read are known and recorded), its
//! client encoding is UTF-8, and the statement's shape once succeeded on PostgreSQL (so a
//! misspelt column is the client's error, not a dead letter). Anything else is forwarded
//! as usual and counted with its reason.
//!
//! A write to a behind table that is not queued waits first until what this database
//! queued before is applied ([`crate::behind::Behind::barrier`]), so it never overtakes a
//! write acknowledged before it.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::{BufMut, Bytes, BytesMut};

use super::{CacheSession, Hold, WaitResult};
use crate::behind::entry::{Entry, Op, RECORDED_SETTINGS, quote_ident};
use crate::planner::plan::{BehindKind, BehindPlan, Plan};
use crate::protocol::response::put_frame;
use crate::session::state::SessionState;
use crate::sql::KeyValue;
use crate::telemetry::names;

/// The Bind parameters a queued write reads: Parse types and the Bind's tail.
type Params<'a> = Option<(&'a [u8], &'a [u8])>;

impl CacheSession {
    /// For a statement that writes a behind table: queue it (`Hold` until durable, then the
    /// answer), or make it wait for the queue first (`Hold` until applied, then it runs).
    /// `None`: handle it as usual now.
    pub(super) fn behind_hold(
        &mut self,
        plan: &Arc<Plan>,
        state: &SessionState,
        params: Params<'_>,
        describe: bool,
    ) -> Option<Hold> {
        let behind = self.app.services.behind.clone()?;
        if !plan.stmts.iter().any(|s| s.touches_behind) {
            return None;
        }
        let queueable = match plan.stmts.as_ref() {
            [only] => only.behind.as_ref(),
            _ => None,
        };
        if let Some(bp) = queueable {
            let login = behind.link().login.user.as_str();
            match self.behind_entry(plan, bp, state, params, login) {
                Ok(entry) => match behind.submit(entry, bp.rule) {
                    Ok(durable) => {
                        let kind = match bp.kind {
                            BehindKind::Insert { .. } => "insert",
                            BehindKind::Increment { .. } => "increment",
                        };
                        let answer = acknowledgement(&bp.kind, describe);
                        let plan = Arc::clone(plan);
                        return Some(Hold::Wait(Box::pin(async move {
                            match durable.await {
                                Ok(()) => {
                                    metrics::counter!(names::BEHIND_QUEUED, "kind" => kind)
                                        .increment(1);
                                    WaitResult::Queued(answer, plan)
                                }
                                Err(e) if e.is_indeterminate() => {
                                    tracing::error!(error = %e, "write-behind queue failed; the write may or may not be applied");
                                    WaitResult::Error(
                                        crate::error::ClientError::write_behind_indeterminate(
                                            &e.to_string(),
                                        )
                                        .encode(),
                                    )
                                }
                                Err(e) => {
                                    // Not queued (the journal dropped the record): run it
                                    // here, synchronously, as if it had never been eligible.
                                    tracing::warn!(error = %e, "write-behind queue failed; the write is forwarded");
                                    forwarded("queue_failed");
                                    WaitResult::RunOwn
                                }
                            }
                        })));
                    }
                    Err(refused) => forwarded(refused.reason()),
                },
                Err(reason) => forwarded(reason),
            }
        }
        let db = self.cx.as_ref().map(|c| c.database.clone())?;
        let barrier = behind.barrier(&db)?;
        Some(Hold::Wait(Box::pin(async move {
            if barrier.await {
                WaitResult::RunOwn
            } else {
                WaitResult::Error(crate::error::ClientError::write_behind_barrier().encode())
            }
        })))
    }

    /// The queued form of this execution, or why it is forwarded. `login` is the role the
    /// flusher logs in as.
    fn behind_entry(
        &self,
        plan: &Plan,
        bp: &BehindPlan,
        state: &SessionState,
        params: Params<'_>,
        login: &str,
    ) -> Result<Entry, &'static str> {
        if !bp.validated.load(Ordering::Acquire) {
            return Err("shape_unproven");
        }
        if !state.is_idle() || self.capture.is_some() || self.fingerprint.in_block() {
            return Err("not_idle");
        }
        if self.opted_out {
            return Err("session_opt_out");
        }
        if self.probe.needed
            || self.probe.reader.is_some()
            || self.probe.config != self.app.services.invalidator.config_generation()
        {
            return Err("settings_unknown");
        }
        if !self.utf8 {
            return Err("encoding");
        }
        if params.is_none() && state.registry.get(b"").is_some() {
            // Answering would leave the unnamed statement alive where PostgreSQL drops it.
            return Err("unnamed_statement");
        }
        let cx = self.cx.as_ref().ok_or("settings_unknown")?;
        let settings = self
            .fingerprint
            .settled(RECORDED_SETTINGS)
            .ok_or("settings_unknown")?;
        if let Some(reason) = self.fingerprint.behind_blocker() {
            return Err(reason);
        }
        // Only a session indistinguishable from the flusher's own login is queued. Applying
        // another role's write under SET ROLE is no boundary: any expression the write runs
        // (a column default, a CHECK, an index expression, a policy) may call
        // set_config('role', 'none', true) and go on as pgmemo's login.
        let session_user = self
            .fingerprint
            .settled(&["session_user"])
            .unwrap_or_default();
        let same_login = matches!(session_user.as_slice(), [(_, user)] if user == login);
        if !same_login || &*cx.current_user != login {
            return Err("other_login");
        }
        if let Some((_, tail)) = params
            && super::group::params_may_read_clock(tail)
        {
            // 'now', 'today' in a parameter would be read at the flush, not now.
            return Err("clock_parameter");
        }
        let written = &plan.stmts.first().ok_or("shape")?.written;
        if written.epoch.is_some() {
            // A trigger or rule whose effects are unknown: applied later, what would it
            // invalidate? Forwarded, bumped as usual.
            return Err("side_effects");
        }
        let mut tags: Vec<u32> = written.tags.iter().map(|t| t.rel).collect();
        tags.extend(written.rows.iter().map(|(t, _)| t.rel));
        tags.sort_unstable();
        tags.dedup();
        let op = match &bp.kind {
            BehindKind::Insert { rows } => {
                let (types, bind) = params.unwrap_or_default();
                Op::Statement {
                    sql: plan.sql.clone(),
                    types: Bytes::copy_from_slice(types),
                    bind: Bytes::copy_from_slice(bind),
                    rows: *rows,
                }
            }
            BehindKind::Increment {
                column,
                delta,
                negate,
                key_column,
                key,
            } => {
                let piece = crate::sql::statement_piece(&plan.sql, 0).ok_or("shape")?;
                let delta: i64 = value(delta, piece, params)
                    .and_then(|d| d.parse().ok())
                    .ok_or("increment_value")?;
                let delta = if *negate {
                    delta.checked_neg().ok_or("increment_value")?
                } else {
                    delta
                };
                Op::Increment {
                    table: format!("{}.{}", quote_ident(&bp.schema), quote_ident(&bp.name)),
                    column: quote_ident(column),
                    key_column: quote_ident(key_column),
                    key: value(key, piece, params).ok_or("increment_key")?,
                    delta,
                    coalesce: bp.rule.coalesce,
                }
            }
        };
        Ok(Entry {
            database: cx.database.to_string(),
            role: cx.current_user.to_string(),
            search_path: cx.search_path.to_string(),
            settings,
            db_oid: cx.db_oid,
            tags,
            acked_ms: crate::behind::dead::now_ms(),
            op,
        })
    }
}

/// A literal's text from the statement, or a parameter's text-format value.
fn value(v: &KeyValue, piece: &[u8], params: Params<'_>) -> Option<String> {
    match v {
        KeyValue::Number { ordinal, .. } => {
            let digits = crate::sql::number_at(piece, *ordinal)?;
            String::from_utf8(digits.to_vec()).ok()
        }
        KeyValue::String(s) => Some(s.clone()),
        KeyValue::Param(n) => text_param(params?.1, *n),
    }
}

/// Parameter `n` (1-based) of a Bind tail, if it is sent in text format and not NULL.
fn text_param(tail: &[u8], n: u16) -> Option<String> {
    let mut r = crate::protocol::fields::Reader::new(tail);
    let formats = usize::try_from(r.i16()?).ok()?;
    let mut codes = Vec::with_capacity(formats.min(64));
    for _ in 0..formats {
        codes.push(r.i16()?);
    }
    let count = usize::try_from(r.i16()?).ok()?;
    let index = usize::from(n.checked_sub(1)?);
    if index >= count {
        return None;
    }
    let format = match codes.as_slice() {
        [] => 0,
        [one] => *one,
        many => *many.get(index)?,
    };
    if format != 0 {
        return None;
    }
    for i in 0..count {
        // -1 is NULL (no bytes follow).
        let value = match usize::try_from(r.i32()?) {
            Ok(len) => Some(r.bytes(len)?),
            Err(_) => None,
        };
        if i == index {
            return String::from_utf8(value?.to_vec()).ok();
        }
    }
    None
}

/// What PostgreSQL would have answered: NoData for a Describe of the portal, then the
/// command tag.
fn acknowledgement(kind: &BehindKind, describe: bool) -> Bytes {
    let tag = match kind {
        BehindKind::Insert { rows } => format!("INSERT 0 {rows}"),
        BehindKind::Increment { .. } => "UPDATE 1".to_owned(),
    };
    let mut out = BytesMut::with_capacity(32);
    if describe {
        put_frame(&mut out, b'n', &[]);
    }
    let mut body = tag.into_bytes();
    body.put_u8(0);
    put_frame(&mut out, b'C', &[&body]);
    out.freeze()
}

fn forwarded(reason: &'static str) {
    metrics::counter!(names::BEHIND_FORWARDED, "reason" => reason).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_parameters_are_read_and_binary_or_null_ones_are_not() {
        // formats: none (all text); 3 params: "5", NULL, "abc"; no result formats.
        let tail = [
            &[0u8, 0, 0, 3][..],
            &[0, 0, 0, 1, b'5'],
            &[0xff, 0xff, 0xff, 0xff],
            &[0, 0, 0, 3, b'a', b'b', b'c'],
            &[0, 0],
        ]
        .concat();
        assert_eq!(text_param(&tail, 1).as_deref(), Some("5"));
        assert_eq!(text_param(&tail, 2), None);
        assert_eq!(text_param(&tail, 3).as_deref(), Some("abc"));
        assert_eq!(text_param(&tail, 4), None);
        assert_eq!(text_param(&tail, 0), None);
        let binary = [&[0u8, 1, 0, 1, 0, 1][..], &[0, 0, 0, 1, 5], &[0, 0]].concat();
        assert_eq!(text_param(&binary, 1), None);
        for cut in 0..tail.len() {
            let _ = text_param(&tail[..cut], 3);
        }
    }

    #[test]
    fn acknowledgements_are_what_postgresql_answers() {
        let insert = BehindKind::Insert { rows: 3 };
        assert_eq!(
            &acknowledgement(&insert, false)[..],
            b"C\0\0\0\x0fINSERT 0 3\0"
        );
        let a = acknowledgement(&insert, true);
        assert_eq!(&a[..5], b"n\0\0\0\x04");
    }
}
