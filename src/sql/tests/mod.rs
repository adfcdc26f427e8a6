//! Tests of the statement analysis: classification, the keyword parser and fallback, the
//! key normal form and hints, and a no-panic run over generated garbage.

mod classify;
mod fallback;
mod fuzz;
mod keywords;
mod normalize;
mod pins;

use super::{Analysis, FuncName, RelName, StatementInfo, analyze};

/// The analysis of `sql`, which must be exactly one statement.
fn one(sql: &str) -> StatementInfo {
    let a: Analysis = analyze(sql.as_bytes());
    assert_eq!(a.statements.len(), 1, "{sql}: {a:#?}");
    a.statements.into_iter().next().unwrap()
}

/// `"s.t"` or `"t"` as a relation name (no quoting: test names are plain).
fn rel(name: &str) -> RelName {
    match name.split_once('.') {
        Some((schema, name)) => RelName {
            schema: Some(schema.into()),
            name: name.into(),
        },
        None => RelName {
            schema: None,
            name: name.into(),
        },
    }
}

fn rels(names: &[&str]) -> Vec<RelName> {
    names.iter().map(|n| rel(n)).collect()
}

fn func(name: &str) -> FuncName {
    let r = rel(name);
    FuncName {
        schema: r.schema,
        name: r.name,
    }
}
