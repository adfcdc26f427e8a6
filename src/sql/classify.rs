//! Classifies one statement parsed by sqlparser: its class, the relations it writes (taken
//! from the statement's structure: DML targets, COPY ... FROM, TRUNCATE, DDL objects) and,
//! through `relations::Collector`, what it reads and calls and why a read is not cacheable.

use sqlparser::ast::{
    CascadeOption, CopySource, Expr, GrantObjects, ObjectName, ObjectNamePart, ObjectType, Query,
    SetExpr, Statement, UtilityOption, Value,
};

use std::collections::HashSet;

use super::relations::{Collector, dedup, func_name, ident_name, push_unique, rel_name};
use super::{Class, NotCacheable, RelName, SessionChange, StatementInfo, TxnControl};

/// What the router knows about the statement's text that the AST may not say.
pub(crate) struct Lead<'a> {
    /// The first word, lower-case (`""` when unknown).
    pub first: &'a str,
    /// `CREATE [OR REPLACE] [GLOBAL|LOCAL] TEMP|TEMPORARY ...`.
    pub creates_temp: bool,
}

impl Lead<'_> {
    /// For a statement nested in another (EXPLAIN's, PREPARE's): no text of its own.
    const NESTED: Lead<'static> = Lead {
        first: "",
        creates_temp: false,
    };
}

/// Words that start DDL statements.
pub(crate) const DDL_WORDS: &[&str] = &[
    "create", "alter", "drop", "grant", "revoke", "comment", "security", "reassign", "import",
];

/// Nesting bound for EXPLAIN / PREPARE wrapping another statement.
const MAX_DEPTH: usize = 8;

pub(crate) fn classify(stmt: &Statement, lead: &Lead<'_>, depth: usize) -> StatementInfo {
    use Statement as S;
    match stmt {
        S::Query(q) => query(stmt, q),
        S::Insert(_) | S::Update(_) | S::Delete(_) | S::Merge(_) => {
            let info = StatementInfo::new(Class::Write, Some(NotCacheable::NotSelect));
            collected(info, Collector::walk(stmt, &[]))
        }
        S::Copy { source, to, .. } => copy(stmt, source, *to),
        S::Truncate(t) => {
            let names: Vec<&ObjectName> = t.table_names.iter().map(|t| &t.name).collect();
            let mut info = ddl_with_targets(stmt, Class::Write, &names);
            // CASCADE also empties every table with a foreign key to these, whatever its action.
            info.epoch_bump |= matches!(t.cascade, Some(CascadeOption::Cascade));
            info
        }
        S::Call(f) => {
            let mut info = collected(
                StatementInfo::new(Class::Other, Some(NotCacheable::NotSelect)),
                Collector::walk(stmt, &[]),
            );
            if let Some(name) = func_name(&f.name) {
                push_unique(&mut info.functions, name);
            }
            info.epoch_bump = true;
            info.taints_session = true;
            info
        }
        S::Explain {
            analyze,
            options,
            statement,
            ..
        } => {
            let analyze = *analyze || options.iter().flatten().any(is_analyze_option);
            let inner = nested(statement, stmt, depth);
            explain(inner, analyze)
        }
        S::Prepare {
            name, statement, ..
        } => {
            let inner = nested(statement, stmt, depth);
            let change = SessionChange::Prepare {
                name: ident_name(name),
                inner: Box::new(inner),
            };
            StatementInfo::new(Class::SessionChange(change), Some(NotCacheable::NotSelect))
        }
        S::Execute {
            name: Some(name),
            immediate: false,
            ..
        } => match single_name(name) {
            Some(name) => collected(
                StatementInfo::new(Class::Execute { name }, Some(NotCacheable::Execute)),
                Collector::walk(stmt, &[]),
            ),
            None => unknown(stmt),
        },
        S::Deallocate { name, .. } => {
            let all = name.quote_style.is_none() && name.value.eq_ignore_ascii_case("all");
            let name = (!all).then(|| ident_name(name));
            let change = SessionChange::Deallocate { name };
            StatementInfo::new(Class::SessionChange(change), Some(NotCacheable::NotSelect))
        }
        // Transaction control is read by the keyword parser first; these arms only serve a
        // statement sqlparser finds where the splitter saw a different first word.
        S::StartTransaction { .. } => txn(TxnControl::Begin),
        S::Commit { chain: false, .. } => txn(TxnControl::Commit),
        S::Commit { chain: true, .. } => txn(TxnControl::CommitAndChain),
        S::Rollback {
            savepoint: Some(sp),
            ..
        } => txn(TxnControl::RollbackToSavepoint(ident_name(sp))),
        S::Rollback { chain: false, .. } => txn(TxnControl::Rollback),
        S::Rollback { chain: true, .. } => txn(TxnControl::RollbackAndChain),
        S::Savepoint { name } => txn(TxnControl::Savepoint(ident_name(name))),
        S::ReleaseSavepoint { name } => txn(TxnControl::ReleaseSavepoint(ident_name(name))),
        S::Declare { .. } => {
            let info = StatementInfo::new(Class::Read, Some(NotCacheable::Cursor));
            reads_that_write(collected(info, Collector::walk(stmt, &[])))
        }
        _ => ddl(stmt, lead),
    }
}

/// Schema changes (and what is left: the keyword fallback).
fn ddl(stmt: &Statement, lead: &Lead<'_>) -> StatementInfo {
    use Statement as S;
    match stmt {
        S::CreateTable(ct) => {
            let mut targets = vec![&ct.name];
            targets.extend(ct.inherits.iter().flatten());
            targets.extend(ct.partition_of.iter());
            let mut info = ddl_with_targets(stmt, Class::Ddl, &targets);
            info.taints_session |= ct.temporary;
            info
        }
        S::CreateView(cv) => {
            let mut info = ddl_with_targets(stmt, Class::Ddl, &[&cv.name]);
            info.taints_session |= cv.temporary;
            info
        }
        S::CreateIndex(ci) => {
            let mut info = ddl_with_targets(stmt, Class::Ddl, &[&ci.table_name]);
            // The index's own name is not a relation anything reads.
            info.reads
                .retain(|r| Some(r) != ci.name.as_ref().and_then(rel_name).as_ref());
            info
        }
        S::CreateSequence {
            name, temporary, ..
        } => {
            let mut info = ddl_with_targets(stmt, Class::Ddl, &[name]);
            info.taints_session |= *temporary;
            info
        }
        S::AlterTable(at) => ddl_with_targets(stmt, Class::Ddl, &[&at.name]),
        S::AlterView { name, .. } => ddl_with_targets(stmt, Class::Ddl, &[name]),
        S::AlterIndex { .. } | S::CreateSchema { .. } | S::Comment { .. } => collected(
            StatementInfo::new(Class::Ddl, Some(NotCacheable::NotSelect)),
            Collector::default(),
        ),
        S::Drop {
            object_type,
            names,
            cascade,
            ..
        } => {
            let refs: Vec<&ObjectName> = names.iter().collect();
            match object_type {
                ObjectType::Table
                | ObjectType::View
                | ObjectType::MaterializedView
                | ObjectType::Sequence => {
                    let mut info = ddl_with_targets(stmt, Class::Ddl, &refs);
                    info.epoch_bump |= *cascade;
                    info
                }
                ObjectType::Index => {
                    let mut info = StatementInfo::new(Class::Ddl, Some(NotCacheable::NotSelect));
                    info.epoch_bump = *cascade;
                    info
                }
                _ => unknown_ddl(),
            }
        }
        S::Grant(g) => privileges(stmt, g.objects.as_ref()),
        S::Revoke(r) => privileges(stmt, r.objects.as_ref()),
        S::CreatePolicy(p) => ddl_with_targets(stmt, Class::Ddl, &[&p.table_name]),
        S::AlterPolicy(p) => ddl_with_targets(stmt, Class::Ddl, &[&p.table_name]),
        S::DropPolicy(p) => ddl_with_targets(stmt, Class::Ddl, &[&p.table_name]),
        S::CreateTrigger(t) => ddl_with_targets(stmt, Class::Ddl, &[&t.table_name]),
        S::DropTrigger(t) => match &t.table_name {
            Some(table) => ddl_with_targets(stmt, Class::Ddl, &[table]),
            None => unknown_ddl(),
        },
        _ => catch_all(stmt, lead),
    }
}

/// The analysis of `inner`, nested in `outer`, within the depth bound.
fn nested(inner: &Statement, outer: &Statement, depth: usize) -> StatementInfo {
    if depth < MAX_DEPTH {
        classify(inner, &Lead::NESTED, depth + 1)
    } else {
        unknown(outer)
    }
}

fn txn(t: TxnControl) -> StatementInfo {
    StatementInfo::new(Class::TransactionControl(t), Some(NotCacheable::NotSelect))
}

fn single_name(name: &ObjectName) -> Option<String> {
    match name.0.as_slice() {
        [ObjectNamePart::Identifier(id)] => Some(ident_name(id)),
        _ => None,
    }
}

/// Fills reads, writes, functions and flags from a walk. Targets are not also reads.
fn collected(mut info: StatementInfo, c: Collector) -> StatementInfo {
    info.writes.extend(c.writes);
    info.writes = dedup(std::mem::take(&mut info.writes));
    let written: HashSet<&RelName> = info.writes.iter().collect();
    let reads: Vec<RelName> = c
        .reads
        .into_iter()
        .filter(|r| !written.contains(r))
        .collect();
    info.reads.extend(reads);
    info.reads = dedup(std::mem::take(&mut info.reads));
    info.functions.extend(c.functions);
    info.functions = dedup(std::mem::take(&mut info.functions));
    info.uses_value_functions |= c.value_function || c.special_literal || c.reg_cast;
    info.epoch_bump |= c.unknown_write;
    info
}

/// A read-classed statement that turned out to contain a write is a write.
fn reads_that_write(mut info: StatementInfo) -> StatementInfo {
    if matches!(info.class, Class::Read | Class::CacheableRead)
        && (!info.writes.is_empty() || info.epoch_bump)
    {
        info.class = Class::Write;
    }
    info
}

fn read_reason(c: &Collector) -> Option<NotCacheable> {
    [
        (c.unsupported, NotCacheable::UnsupportedSyntax),
        (c.locking, NotCacheable::LockingClause),
        (c.tablesample, NotCacheable::TableSample),
        (c.value_function, NotCacheable::ValueFunction),
        (c.special_literal, NotCacheable::SpecialDateLiteral),
        (c.reg_cast, NotCacheable::RegTypeCast),
    ]
    .into_iter()
    .find_map(|(hit, reason)| hit.then_some(reason))
}

fn query(stmt: &Statement, q: &Query) -> StatementInfo {
    let c = Collector::walk(stmt, &[]);
    let main_dml = matches!(
        *q.body,
        SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_) | SetExpr::Merge(_)
    );
    let into = c.select_into.clone();
    let into_temp = c.select_into_temp;
    let (class, reason) = if main_dml {
        (Class::Write, Some(NotCacheable::NotSelect))
    } else if c.nested_dml > 0 {
        (Class::Write, Some(NotCacheable::DataModifyingCte))
    } else if !into.is_empty() || c.unknown_write {
        (Class::Ddl, Some(NotCacheable::SelectInto))
    } else {
        match read_reason(&c) {
            Some(reason) => (Class::Read, Some(reason)),
            None => (Class::CacheableRead, None),
        }
    };
    let mut info = StatementInfo::new(class, reason);
    info.writes = into;
    let mut info = collected(info, c);
    info.taints_session |= into_temp;
    info
}

fn copy(stmt: &Statement, source: &CopySource, to: bool) -> StatementInfo {
    match (source, to) {
        (CopySource::Table { table_name, .. }, false) => StatementInfo {
            copies_in: true,
            ..ddl_with_targets(stmt, Class::Write, &[table_name])
        },
        (CopySource::Table { table_name, .. }, true) => {
            // sqlparser does not visit COPY's table: report it here.
            let mut info = collected(
                StatementInfo::new(Class::Read, Some(NotCacheable::CopyTo)),
                Collector::walk(stmt, &[]),
            );
            match rel_name(table_name) {
                Some(rel) => push_unique(&mut info.reads, rel),
                None => info.reason = Some(NotCacheable::UnsupportedSyntax),
            }
            info
        }
        (CopySource::Query(_), true) => {
            // `COPY (INSERT ... RETURNING ...) TO` runs the write.
            let info = StatementInfo::new(Class::Read, Some(NotCacheable::CopyTo));
            reads_that_write(collected(info, Collector::walk(stmt, &[])))
        }
        (CopySource::Query(_), false) => unknown(stmt),
    }
}

/// A statement whose `targets` are written; everything else it names is read.
fn ddl_with_targets(stmt: &Statement, class: Class, targets: &[&ObjectName]) -> StatementInfo {
    let mut info = StatementInfo::new(class, Some(NotCacheable::NotSelect));
    for target in targets {
        match rel_name(target) {
            Some(rel) => push_unique(&mut info.writes, rel),
            None => info.epoch_bump = true,
        }
    }
    collected(info, Collector::walk(stmt, targets))
}

fn privileges(stmt: &Statement, objects: Option<&GrantObjects>) -> StatementInfo {
    match objects {
        Some(
            GrantObjects::Tables(names)
            | GrantObjects::Sequences(names)
            | GrantObjects::Views(names),
        ) => {
            let refs: Vec<&ObjectName> = names.iter().collect();
            ddl_with_targets(stmt, Class::Ddl, &refs)
        }
        // Schemas, functions, databases, ALL ... IN SCHEMA, role membership: too wide to name.
        _ => unknown_ddl(),
    }
}

fn unknown_ddl() -> StatementInfo {
    let mut info = StatementInfo::new(Class::Ddl, Some(NotCacheable::NotSelect));
    info.epoch_bump = true;
    info
}

/// A statement sqlparser parsed but this analysis does not model: a write of unknown targets
/// that may also change the session.
fn unknown(stmt: &Statement) -> StatementInfo {
    let mut info = collected(
        StatementInfo::new(Class::Write, Some(NotCacheable::UnsupportedSyntax)),
        Collector::walk(stmt, &[]),
    );
    info.epoch_bump = true;
    info.taints_session = true;
    info
}

/// Statements without a dedicated arm: DDL by first word (function, type, role, extension,
/// schema changes... — all epoch bumps), anything else unknown.
fn catch_all(stmt: &Statement, lead: &Lead<'_>) -> StatementInfo {
    if DDL_WORDS.contains(&lead.first) {
        let mut info = collected(unknown_ddl(), Collector::walk(stmt, &[]));
        info.taints_session |= lead.creates_temp;
        info
    } else {
        unknown(stmt)
    }
}

/// EXPLAIN shows a plan; with ANALYZE it also runs the statement, with all its effects.
pub(crate) fn explain(inner: StatementInfo, analyze: bool) -> StatementInfo {
    if !analyze {
        let mut info = StatementInfo::new(Class::Read, Some(NotCacheable::Explain));
        info.reads = inner.reads;
        info.functions = inner.functions;
        info.uses_value_functions = inner.uses_value_functions;
        return info;
    }
    let class = match inner.class {
        Class::CacheableRead | Class::Read => Class::Read,
        other => other,
    };
    StatementInfo {
        class,
        reason: Some(NotCacheable::Explain),
        ..inner
    }
}

/// Whether an EXPLAIN option turns ANALYZE on; any value but an explicit false counts.
fn is_analyze_option(opt: &UtilityOption) -> bool {
    let name = opt.name.value.to_ascii_lowercase();
    if name != "analyze" && name != "analyse" {
        return false;
    }
    let off = match &opt.arg {
        None => false,
        Some(Expr::Value(v)) => match &v.value {
            Value::Boolean(b) => !b,
            Value::Number(n, _) => n.as_str() == "0",
            other => other
                .clone()
                .into_string()
                .is_some_and(|s| is_false_word(&s)),
        },
        Some(Expr::Identifier(id)) => is_false_word(&id.value),
        Some(_) => false,
    };
    !off
}

/// PostgreSQL's boolean spellings of false (parse_bool: unique prefixes of false/no/off, 0).
pub(crate) fn is_false_word(s: &str) -> bool {
    let s = s.trim().to_ascii_lowercase();
    !s.is_empty()
        && ("false".starts_with(&s)
            || "no".starts_with(&s)
            || (s.len() >= 2 && "off".starts_with(&s))
            || s == "0")
}
