//! The statement shapes write-behind may queue (issue 20), found in the AST. Syntactic only:
//! the planner checks the target against the catalog and the rules, the session checks its
//! own state. Deliberately narrow, because a queued write is acknowledged before PostgreSQL
//! sees it, so its acknowledgement must be exactly what PostgreSQL would have answered:
//! - `INSERT INTO t [(c, ...)] VALUES (...), ...` whose every value is a constant (a
//!   literal, a parameter, `DEFAULT`, NULL, a signed number, or a cast of one): the count is
//!   the number of rows. No `RETURNING` (rows pgmemo cannot produce), no `ON CONFLICT` (the
//!   count would depend on the table), no functions (the analysis lists them; the planner
//!   refuses any, `now()` included: its value would be the flush's, not the
//!   acknowledgement's).
//! - `UPDATE t SET c = c + k WHERE key = v` (or `c - k`, `k + c`), `k` an integer literal
//!   or a parameter, `v` a literal or a parameter: an increment, acknowledged `UPDATE 1`
//!   (the planner requires `key` to be the table's one-column primary key).

use sqlparser::ast::{
    AssignmentTarget, BinaryOperator, CastKind, Expr, Insert, Statement, TableFactor, TableObject,
    UnaryOperator, Update, Value,
};

use super::RelName;
use super::pins::{KeyValue, Numbers, key_value, plain_insert, plain_values, unnest};
use super::relations::{ident_name, rel_name};

/// A statement write-behind may queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BehindShape {
    /// `INSERT ... VALUES` of constants: `rows` rows.
    Insert { relation: RelName, rows: u64 },
    /// `UPDATE relation SET column = column + delta WHERE key_column = key`.
    Increment {
        relation: RelName,
        column: String,
        delta: KeyValue,
        /// `column - delta` (or `column + -delta`).
        negate: bool,
        key_column: String,
        key: KeyValue,
    },
}

impl BehindShape {
    /// Approximate heap bytes (memo bounds).
    pub(crate) fn weight(&self) -> usize {
        let name = |r: &RelName| r.name.len() + r.schema.as_ref().map_or(0, String::len);
        std::mem::size_of::<Self>()
            + match self {
                Self::Insert { relation, .. } => name(relation),
                Self::Increment {
                    relation,
                    column,
                    key_column,
                    ..
                } => name(relation) + column.len() + key_column.len() + 64,
            }
    }
}

/// The shape of a lone top-level statement, if write-behind may queue it.
pub(crate) fn shape(stmt: &Statement, numbers: &Numbers<'_>) -> Option<BehindShape> {
    match stmt {
        Statement::Insert(i) => insert(i),
        Statement::Update(u) => increment(u, numbers),
        _ => None,
    }
}

fn insert(i: &Insert) -> Option<BehindShape> {
    if !plain_insert(i) || i.returning.is_some() || i.table_alias.is_some() {
        return None;
    }
    let TableObject::TableName(name) = &i.table else {
        return None;
    };
    let relation = rel_name(name)?;
    if i.columns.iter().any(|c| c.0.len() != 1) {
        return None;
    }
    let rows = plain_values(i.source.as_deref()?)?;
    if rows.is_empty() || !rows.iter().all(|r| r.content.iter().all(constant)) {
        return None;
    }
    Some(BehindShape::Insert {
        relation,
        rows: u64::try_from(rows.len()).ok()?,
    })
}

/// A value whose meaning cannot depend on when or where it is evaluated, given the session's
/// settings (which the queue records): literals, parameters, `DEFAULT`, signed numbers, and
/// casts of these (special date strings like `'now'` are caught by the analysis'
/// `uses_value_functions`, which the planner checks).
fn constant(e: &Expr) -> bool {
    match unnest(e) {
        Expr::Value(v) => matches!(
            v.value,
            Value::Number(_, false)
                | Value::SingleQuotedString(_)
                | Value::EscapedStringLiteral(_)
                | Value::Boolean(_)
                | Value::Null
                | Value::Placeholder(_)
        ),
        Expr::Identifier(id) => {
            id.quote_style.is_none() && id.value.eq_ignore_ascii_case("default")
        }
        Expr::UnaryOp {
            op: UnaryOperator::Minus | UnaryOperator::Plus,
            expr,
        } => matches!(unnest(expr), Expr::Value(v) if matches!(v.value, Value::Number(_, false))),
        Expr::Cast {
            kind: CastKind::Cast | CastKind::DoubleColon,
            expr,
            format: None,
            ..
        } => constant(expr),
        _ => false,
    }
}

fn increment(u: &Update, numbers: &Numbers<'_>) -> Option<BehindShape> {
    let Update {
        update_token: _,
        optimizer_hints,
        table,
        assignments,
        from,
        selection,
        returning,
        output,
        or,
        order_by,
        limit,
    } = u;
    if !optimizer_hints.is_empty()
        || !table.joins.is_empty()
        || from.is_some()
        || returning.is_some()
        || output.is_some()
        || or.is_some()
        || !order_by.is_empty()
        || limit.is_some()
    {
        return None;
    }
    let TableFactor::Table {
        name,
        alias: None,
        args: None,
        with_hints,
        version: None,
        partitions,
        ..
    } = &table.relation
    else {
        return None;
    };
    if !with_hints.is_empty() || !partitions.is_empty() {
        return None;
    }
    let relation = rel_name(name)?;
    let [assignment] = assignments.as_slice() else {
        return None;
    };
    let AssignmentTarget::ColumnName(target) = &assignment.target else {
        return None;
    };
    let [part] = target.0.as_slice() else {
        return None;
    };
    let column = ident_name(part.as_ident()?);
    let (delta, negate) = added(&assignment.value, &column, numbers)?;
    let (key_column, key) = equality(selection.as_ref()?, numbers)?;
    Some(BehindShape::Increment {
        relation,
        column,
        delta,
        negate,
        key_column,
        key,
    })
}

/// `column + k`, `k + column`, `column - k`, with `k` an unsigned integer literal (or `-n`)
/// or a parameter.
fn added(e: &Expr, column: &str, numbers: &Numbers<'_>) -> Option<(KeyValue, bool)> {
    let Expr::BinaryOp { left, op, right } = unnest(e) else {
        return None;
    };
    let is_column =
        |e: &Expr| matches!(unnest(e), Expr::Identifier(id) if ident_name(id) == column);
    let (amount, minus) = match op {
        BinaryOperator::Plus if is_column(left) => (right.as_ref(), false),
        BinaryOperator::Plus if is_column(right) => (left.as_ref(), false),
        BinaryOperator::Minus if is_column(left) => (right.as_ref(), true),
        _ => return None,
    };
    let (amount, negative) = match unnest(amount) {
        Expr::UnaryOp {
            op: UnaryOperator::Minus,
            expr,
        } => (expr.as_ref(), true),
        other => (other, false),
    };
    let value = key_value(amount, numbers)?;
    if matches!(value, KeyValue::String(_)) || (negative && matches!(value, KeyValue::Param(_))) {
        return None;
    }
    Some((value, minus != negative))
}

/// `key_column = value` (either side), the whole WHERE.
fn equality(e: &Expr, numbers: &Numbers<'_>) -> Option<(String, KeyValue)> {
    let Expr::BinaryOp {
        left,
        op: BinaryOperator::Eq,
        right,
    } = unnest(e)
    else {
        return None;
    };
    let column = |e: &Expr| match unnest(e) {
        Expr::Identifier(id) => Some(ident_name(id)),
        _ => None,
    };
    match (column(left), column(right)) {
        (Some(c), None) => Some((c, key_value(right, numbers)?)),
        (None, Some(c)) => Some((c, key_value(left, numbers)?)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape_of(sql: &str) -> Option<BehindShape> {
        let a = crate::sql::analyze(sql.as_bytes());
        match a.statements.as_slice() {
            [one] => one.behind.as_deref().cloned(),
            _ => None,
        }
    }

    #[test]
    fn constant_inserts_are_queueable_with_their_row_count() {
        for (sql, rows) in [
            ("INSERT INTO ev VALUES (1, 'a')", 1),
            (
                "insert into app.ev (id, note) values ($1, $2), (2, DEFAULT), (-3, NULL)",
                3,
            ),
            ("INSERT INTO ev (id, at) VALUES (1, '2026-01-01'::date)", 1),
            (
                "INSERT INTO ev (id, ok) VALUES (1, CAST('t' AS boolean))",
                1,
            ),
        ] {
            match shape_of(sql) {
                Some(BehindShape::Insert { rows: n, .. }) => assert_eq!(n, rows, "{sql}"),
                other => panic!("{sql}: {other:?}"),
            }
        }
    }

    #[test]
    fn inserts_whose_answer_or_value_pgmemo_cannot_know_are_not() {
        for sql in [
            "INSERT INTO ev VALUES (1) RETURNING id",
            "INSERT INTO ev VALUES (1) ON CONFLICT DO NOTHING",
            "INSERT INTO ev VALUES (1) ON CONFLICT (id) DO UPDATE SET n = 2",
            "INSERT INTO ev SELECT 1",
            "INSERT INTO ev VALUES (1 + 1)",
            "INSERT INTO ev VALUES (random())",
            "INSERT INTO ev VALUES ((SELECT max(id) FROM ev))",
            "WITH x AS (SELECT 1) INSERT INTO ev SELECT * FROM x",
            "INSERT INTO ev AS e VALUES (1)",
            "INSERT INTO ev VALUES (\"default\")",
        ] {
            assert_eq!(shape_of(sql), None, "{sql}");
        }
    }

    #[test]
    fn increments_by_key_are_queueable_and_other_updates_are_not() {
        match shape_of("UPDATE counters SET n = n + 1 WHERE id = 7") {
            Some(BehindShape::Increment {
                column,
                key_column,
                negate: false,
                delta: KeyValue::Number { digits, .. },
                key: KeyValue::Number { digits: k, .. },
                ..
            }) => {
                assert_eq!((column.as_str(), key_column.as_str()), ("n", "id"));
                assert_eq!((digits.as_str(), k.as_str()), ("1", "7"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            shape_of("UPDATE counters SET n = n - $1 WHERE $2 = id"),
            Some(BehindShape::Increment {
                negate: true,
                delta: KeyValue::Param(1),
                key: KeyValue::Param(2),
                ..
            })
        ));
        assert!(matches!(
            shape_of("UPDATE counters SET n = 5 + n WHERE id = 'k'"),
            Some(BehindShape::Increment {
                negate: false,
                key: KeyValue::String(_),
                ..
            })
        ));
        for sql in [
            "UPDATE counters SET n = n + 1",
            "UPDATE counters SET n = n + 1 WHERE id = 1 AND x = 2",
            "UPDATE counters SET n = n + 1 WHERE id > 1",
            "UPDATE counters SET n = m + 1 WHERE id = 1",
            "UPDATE counters SET n = n * 2 WHERE id = 1",
            "UPDATE counters SET n = n + 1.5 WHERE id = 1",
            "UPDATE counters SET n = n + 'x' WHERE id = 1",
            "UPDATE counters SET n = n + 1, m = m + 1 WHERE id = 1",
            "UPDATE counters SET n = n + 1 WHERE id = 1 RETURNING n",
            "UPDATE counters c SET n = n + 1 WHERE id = 1",
            "UPDATE counters SET n = n + 1 FROM other WHERE id = 1",
            "UPDATE counters SET n = n + f(1) WHERE id = 1",
        ] {
            assert_eq!(shape_of(sql), None, "{sql}");
        }
    }
}
