//! Row filters for row-level cache invalidation: the rows of a relation a statement's result
//! depends on (a SELECT) or its effect touches (a single-table UPDATE or DELETE, an INSERT ...
//! VALUES), as far as equalities on columns in its top-level WHERE say. These are only the
//! syntactic candidates: the planner checks them against the catalog (which columns form the
//! primary key, their types, inheritance, triggers) and decides. Nothing here knows a schema.
//!
//! Conservative by construction, because a filter that is too narrow is a stale cache hit: a
//! filter is reported only where the statement's shape makes it certain (a plain SELECT naming
//! the relation once, a single-table UPDATE/DELETE), and a conjunct of the WHERE only where
//! every column is attributable to that relation and every value is a plain literal or a
//! parameter. Anything else reports nothing, which the planner reads as "any row".
//!
//! A numeric literal is reported with its ordinal among the plain numeric tokens of the
//! statement's text (the tokens `shape_key` replaces), so a plan shared by texts of one shape
//! can read each text's own digits with [`number_at`].

use std::cell::OnceCell;
use std::collections::HashMap;
use std::ops::ControlFlow;

use sqlparser::ast::{
    Assignment, AssignmentTarget, BinaryOperator, Delete, Expr, FromTable, Insert, ObjectName,
    Query, SetExpr, Statement, TableFactor, TableObject, TableWithJoins, Update, Value, Visit,
    Visitor,
};
use sqlparser::tokenizer::Span;

use super::lexer::{Lexer, Token};
use super::normalize::is_plain_number;
use super::relations::{KEYWORD_VALUE_FUNCTIONS, dedup, has_bare_table, ident_name, rel_name};
use super::{Class, RelName};

/// A value a key column is compared with, as written in the statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyValue {
    /// An unsigned decimal integer literal (ASCII digits only, no sign, no '.', no exponent).
    /// `ordinal` is its index among the plain numeric literal tokens of the statement's own
    /// text piece (exactly the tokens `shape_key` replaces), counted from 0 in text order, so
    /// that another text of the same shape can supply its own digits at the same position
    /// ([`number_at`]).
    Number { digits: String, ordinal: usize },
    /// A plain single-quoted string literal's value (`''` unescaped; no E'', U&'', no cast).
    String(String),
    /// A parameter `$n` (1-based), with no cast.
    Param(u16),
}

/// Equalities on one relation's columns (column names folded as PostgreSQL folds them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnEq {
    /// The columns compared (one for `c = v` / `c IN (...)`; several, all distinct, for
    /// `(a, b) = (v1, v2)` / `(a, b) IN ((..), (..))`).
    pub columns: Vec<String>,
    /// The tuples the columns equal: one for `=`, one per list item for IN. Each tuple has
    /// `columns.len()` values.
    pub tuples: Vec<Vec<KeyValue>>,
}

/// Equalities the statement's top-level WHERE puts on one relation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowFilter {
    /// The relation as written, normalised like `StatementInfo::reads`/`writes` entries.
    pub relation: RelName,
    pub eqs: Vec<ColumnEq>,
}

/// What a statement says about the rows it reads or changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowScope {
    /// A SELECT: a filter for each relation of its top-level FROM that may be pinned, in FROM
    /// order. Never empty (a SELECT pinning nothing has no `RowScope`); every filter has at
    /// least one equality.
    Read(Vec<RowFilter>),
    /// UPDATE or DELETE of one target: the equalities on the target (empty `eqs`: no WHERE, or
    /// none usable — every row may change), and the columns an UPDATE assigns (empty for
    /// DELETE).
    Change {
        filter: RowFilter,
        assigns: Vec<String>,
    },
    /// INSERT ... VALUES with an explicit column list: the target, the columns, and each row's
    /// values (`None` where the value is not a KeyValue: an expression, DEFAULT, a cast, ...).
    Insert {
        relation: RelName,
        columns: Vec<String>,
        rows: Vec<Vec<Option<KeyValue>>>,
    },
}

/// Longest IN list whose conjunct counts (more rows than that are not worth tracking one by
/// one).
const MAX_IN_LIST: usize = 64;
/// Most columns a row comparison may have: PostgreSQL's INDEX_MAX_KEYS, so no key is longer.
const MAX_KEY_COLUMNS: usize = 32;

/// Approximate heap bytes of a string: its header plus its bytes.
fn string_weight(s: &str) -> usize {
    std::mem::size_of::<String>() + s.len()
}

fn strings_weight(v: &[String]) -> usize {
    v.iter().map(|s| string_weight(s)).sum()
}

impl KeyValue {
    fn weight(&self) -> usize {
        std::mem::size_of::<Self>()
            + match self {
                Self::Number { digits: s, .. } | Self::String(s) => s.len(),
                Self::Param(_) => 0,
            }
    }
}

impl RowFilter {
    fn weight(&self) -> usize {
        let name = string_weight(&self.relation.name)
            + self.relation.schema.as_deref().map_or(0, string_weight);
        let eqs: usize = self
            .eqs
            .iter()
            .map(|eq| {
                std::mem::size_of::<ColumnEq>()
                    + strings_weight(&eq.columns)
                    + eq.tuples
                        .iter()
                        .map(|t| {
                            std::mem::size_of::<Vec<KeyValue>>()
                                + t.iter().map(KeyValue::weight).sum::<usize>()
                        })
                        .sum::<usize>()
            })
            .sum();
        std::mem::size_of::<Self>() + name + eqs
    }
}

impl RowScope {
    /// Approximate heap bytes of the boxed scope (the box, its vectors and strings), for memo
    /// bounds.
    pub(crate) fn weight(&self) -> usize {
        let inner = match self {
            Self::Read(filters) => filters.iter().map(RowFilter::weight).sum(),
            Self::Change { filter, assigns } => filter.weight() + strings_weight(assigns),
            Self::Insert {
                relation,
                columns,
                rows,
            } => {
                let values: usize = rows
                    .iter()
                    .flatten()
                    .map(|v| {
                        std::mem::size_of::<Option<KeyValue>>()
                            + v.as_ref().map_or(0, KeyValue::weight)
                    })
                    .sum();
                string_weight(&relation.name)
                    + relation.schema.as_deref().map_or(0, string_weight)
                    + strings_weight(columns)
                    + rows.len() * std::mem::size_of::<Vec<Option<KeyValue>>>()
                    + values
            }
        };
        std::mem::size_of::<Self>() + inner
    }
}

/// The plain numeric tokens of `src`, in order: position = ordinal.
fn plain_numbers(src: &[u8]) -> impl Iterator<Item = Token> + '_ {
    Lexer::new(src).filter(move |t| is_plain_number(t, src))
}

/// The digits of the plain numeric token at `ordinal` in `piece` (the ordinal of
/// [`KeyValue::Number`]), or `None` when there is no such token or it is not all ASCII digits
/// (`5.0` in the same shape as `5`: not a key value).
pub fn number_at(piece: &[u8], ordinal: usize) -> Option<&[u8]> {
    let bytes = plain_numbers(piece).nth(ordinal)?.bytes(piece);
    bytes.iter().all(u8::is_ascii_digit).then_some(bytes)
}

/// Maps a numeric literal of the AST back to its ordinal in the statement's original text.
/// Built lazily: most statements never ask.
pub(crate) struct Numbers<'a> {
    piece: &'a [u8],
    /// The text sqlparser parsed (the piece after `rewrite`), which its spans refer to.
    parsed: &'a str,
    index: OnceCell<Option<NumberIndex<'a>>>,
}

struct NumberIndex<'a> {
    /// The piece's plain numeric tokens, by ordinal.
    tokens: Vec<&'a [u8]>,
    /// sqlparser's location (line, column) of each such token in the parsed text → ordinal.
    at: HashMap<(u64, u64), usize>,
}

impl<'a> Numbers<'a> {
    pub fn new(piece: &'a [u8], parsed: &'a str) -> Self {
        Self {
            piece,
            parsed,
            index: OnceCell::new(),
        }
    }

    fn index(&self) -> Option<&NumberIndex<'a>> {
        self.index
            .get_or_init(|| NumberIndex::build(self.piece, self.parsed))
            .as_ref()
    }

    /// The ordinal of the literal `digits` sqlparser read at `span`, when certain: the span's
    /// start is a plain numeric token with exactly these digits. Without a span, only digits
    /// that occur in exactly one plain numeric token identify it.
    pub fn ordinal(&self, digits: &str, span: Span) -> Option<usize> {
        let index = self.index()?;
        let digits = digits.as_bytes();
        if span.start.line > 0 {
            // A position that lands elsewhere (a token sqlparser splits differently, like
            // `1_000`) is not retried by value: the value may occur in an unrelated token.
            let ordinal = *index.at.get(&(span.start.line, span.start.column))?;
            return (index.tokens.get(ordinal) == Some(&digits)).then_some(ordinal);
        }
        let mut hits = index
            .tokens
            .iter()
            .enumerate()
            .filter(|(_, t)| **t == digits)
            .map(|(i, _)| i);
        let first = hits.next()?;
        hits.next().is_none().then_some(first)
    }
}

impl<'a> NumberIndex<'a> {
    /// `None` if the parsed text's plain numbers are not the piece's, one for one (the rewrite
    /// never touches numbers; if that ever changed, no ordinal is trusted).
    fn build(piece: &'a [u8], parsed: &'a str) -> Option<Self> {
        let tokens: Vec<&[u8]> = plain_numbers(piece).map(|t| t.bytes(piece)).collect();
        let src = parsed.as_bytes();
        let mut starts = Vec::with_capacity(tokens.len());
        for (i, tok) in plain_numbers(src).enumerate() {
            if tokens.get(i) != Some(&tok.bytes(src)) {
                return None;
            }
            starts.push(tok.start);
        }
        (starts.len() == tokens.len()).then(|| Self {
            tokens,
            at: locations(parsed, &starts),
        })
    }
}

/// sqlparser's location of each byte offset in `starts` (ascending) → its index: lines and
/// columns count from 1, columns in characters, and only `\n` ends a line (as its tokenizer's
/// `State::next` counts).
fn locations(text: &str, starts: &[usize]) -> HashMap<(u64, u64), usize> {
    let mut at = HashMap::with_capacity(starts.len());
    let mut pending = starts.iter().copied().enumerate().peekable();
    let (mut line, mut column) = (1u64, 1u64);
    for (offset, ch) in text.char_indices() {
        while let Some(&(i, start)) = pending.peek() {
            if start > offset {
                break;
            }
            if start == offset {
                at.insert((line, column), i);
            }
            pending.next();
        }
        if pending.peek().is_none() {
            break;
        }
        if ch == '\n' {
            line += 1;
            column = 1;
        } else {
            column += 1;
        }
    }
    at
}

/// The row scope of a top-level statement sqlparser parsed from `numbers`' text, if any.
pub(crate) fn row_scope(
    stmt: &Statement,
    class: &Class,
    numbers: &Numbers<'_>,
) -> Option<RowScope> {
    match stmt {
        Statement::Query(q) if matches!(class, Class::CacheableRead | Class::Read) => {
            read(stmt, q, numbers)
        }
        Statement::Update(u) => update(u, numbers),
        Statement::Delete(d) => delete(d, numbers),
        Statement::Insert(i) => insert(i, numbers),
        _ => None,
    }
}

/// A plain table of a FROM: the name columns are qualified by, and the relation when it can
/// be pinned.
struct Table {
    qualifier: String,
    /// `None` for a table function, TABLESAMPLE, column aliases (which rename its columns)
    /// and other decorations: still a name to qualify by, never a filter.
    relation: Option<RelName>,
}

/// The tables a WHERE's columns can be attributed to.
struct Sources {
    tables: Vec<Table>,
    /// Whether an unqualified column belongs to the only table: the FROM is exactly one
    /// pinnable table, no joins, nothing else.
    single: bool,
}

fn table_of(factor: &TableFactor) -> Option<Table> {
    let TableFactor::Table {
        name,
        alias,
        args,
        with_hints,
        version,
        with_ordinality,
        partitions,
        json_path,
        sample,
        index_hints,
    } = factor
    else {
        return None;
    };
    let written = rel_name(name)?;
    let qualifier = match alias {
        Some(a) => ident_name(&a.name),
        None => written.name.clone(),
    };
    let plain = args.is_none()
        && with_hints.is_empty()
        && version.is_none()
        && !with_ordinality
        && partitions.is_empty()
        && json_path.is_none()
        && sample.is_none()
        && index_hints.is_empty()
        && alias.as_ref().is_none_or(|a| a.columns.is_empty());
    Some(Table {
        qualifier,
        relation: plain.then_some(written),
    })
}

impl Sources {
    fn of_from(from: &[TableWithJoins]) -> Self {
        let factors = from.iter().flat_map(|twj| {
            std::iter::once(&twj.relation).chain(twj.joins.iter().map(|j| &j.relation))
        });
        let tables: Vec<Table> = factors.filter_map(table_of).collect();
        let single = matches!(from, [twj] if twj.joins.is_empty())
            && matches!(tables.as_slice(), [t] if t.relation.is_some());
        Self { tables, single }
    }

    /// The only table of an UPDATE or DELETE.
    fn target(t: Table) -> Self {
        Self {
            tables: vec![t],
            single: true,
        }
    }

    /// The table a column reference belongs to (index into `tables`, pinnable) and the
    /// column's folded name.
    fn resolve(&self, expr: &Expr) -> Option<(usize, String)> {
        let (at, column) = match unnest(expr) {
            Expr::Identifier(id) => {
                // Unquoted `current_user` and friends are value functions, not columns.
                let keyword = id.quote_style.is_none()
                    && KEYWORD_VALUE_FUNCTIONS
                        .iter()
                        .any(|k| id.value.eq_ignore_ascii_case(k));
                if !self.single || keyword {
                    return None;
                }
                (0, id)
            }
            Expr::CompoundIdentifier(parts) => {
                let [qualifier, column] = parts.as_slice() else {
                    return None;
                };
                let qualifier = ident_name(qualifier);
                let mut hits = self
                    .tables
                    .iter()
                    .enumerate()
                    .filter(|(_, t)| t.qualifier == qualifier);
                let (at, _) = hits.next()?;
                if hits.next().is_some() {
                    return None;
                }
                (at, column)
            }
            _ => return None,
        };
        self.tables.get(at)?.relation.as_ref()?;
        Some((at, ident_name(column)))
    }
}

pub(super) fn unnest(mut e: &Expr) -> &Expr {
    while let Expr::Nested(inner) = e {
        e = inner.as_ref();
    }
    e
}

/// The conjuncts of a WHERE, in text order: ANDs and parentheses flattened (iteratively:
/// chains can be thousands deep).
fn conjuncts(e: &Expr) -> Vec<&Expr> {
    let mut out = Vec::new();
    let mut stack = vec![e];
    while let Some(e) = stack.pop() {
        match e {
            Expr::BinaryOp {
                left,
                op: BinaryOperator::And,
                right,
            } => {
                stack.push(right);
                stack.push(left);
            }
            Expr::Nested(inner) => stack.push(inner),
            other => out.push(other),
        }
    }
    out
}

/// The equalities of `selection` on each of `sources.tables` (by index).
fn equalities(
    selection: Option<&Expr>,
    sources: &Sources,
    numbers: &Numbers<'_>,
) -> Vec<Vec<ColumnEq>> {
    let mut per_table: Vec<Vec<ColumnEq>> = sources.tables.iter().map(|_| Vec::new()).collect();
    for conjunct in selection.map(conjuncts).unwrap_or_default() {
        if let Some((at, eq)) = column_eq(conjunct, sources, numbers)
            && let Some(eqs) = per_table.get_mut(at)
        {
            eqs.push(eq);
        }
    }
    per_table
}

/// The items of a row constructor `(a, b, ...)`, or the expression alone.
fn items(e: &Expr) -> &[Expr] {
    match unnest(e) {
        Expr::Tuple(items) => items,
        _ => std::slice::from_ref(e),
    }
}

/// The equality a conjunct states: `c = v`, `v = c`, `(c, ..) = (v, ..)`, or a non-negated
/// `c IN (v, ..)` / `(c, ..) IN ((v, ..), ..)` of at most [`MAX_IN_LIST`] items.
fn column_eq(e: &Expr, sources: &Sources, numbers: &Numbers<'_>) -> Option<(usize, ColumnEq)> {
    match e {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::Eq,
            right,
        } => build(items(left), &[items(right)], sources, numbers)
            .or_else(|| build(items(right), &[items(left)], sources, numbers)),
        Expr::InList {
            expr,
            list,
            negated: false,
        } if (1..=MAX_IN_LIST).contains(&list.len()) => {
            let tuples: Vec<&[Expr]> = list.iter().map(items).collect();
            build(items(expr), &tuples, sources, numbers)
        }
        _ => None,
    }
}

/// A `ColumnEq` when `columns` are distinct columns of one pinnable table and every tuple is
/// as long and made of key values.
fn build(
    columns: &[Expr],
    tuples: &[&[Expr]],
    sources: &Sources,
    numbers: &Numbers<'_>,
) -> Option<(usize, ColumnEq)> {
    if columns.is_empty() || columns.len() > MAX_KEY_COLUMNS {
        return None;
    }
    let mut table = None;
    let mut names: Vec<String> = Vec::with_capacity(columns.len());
    for column in columns {
        let (at, name) = sources.resolve(column)?;
        if table.is_some_and(|t| t != at) || names.contains(&name) {
            return None;
        }
        table = Some(at);
        names.push(name);
    }
    let tuples = tuples
        .iter()
        .map(|t| {
            if t.len() != names.len() {
                return None;
            }
            t.iter().map(|v| key_value(v, numbers)).collect()
        })
        .collect::<Option<Vec<Vec<KeyValue>>>>()?;
    Some((
        table?,
        ColumnEq {
            columns: names,
            tuples,
        },
    ))
}

/// `e` as a key value: digits, a plain string literal or `$n`, with nothing around it.
pub(super) fn key_value(e: &Expr, numbers: &Numbers<'_>) -> Option<KeyValue> {
    let Expr::Value(v) = unnest(e) else {
        return None;
    };
    match &v.value {
        Value::Number(digits, false)
            if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) =>
        {
            Some(KeyValue::Number {
                digits: digits.clone(),
                ordinal: numbers.ordinal(digits, v.span)?,
            })
        }
        Value::SingleQuotedString(s) => Some(KeyValue::String(s.clone())),
        Value::Placeholder(p) => {
            let n = p.strip_prefix('$')?;
            if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            n.parse::<u16>()
                .ok()
                .filter(|&n| n > 0)
                .map(KeyValue::Param)
        }
        _ => None,
    }
}

/// How often each relation name occurs anywhere in a statement, by its last name part
/// (`t` and `s.t` may be one table); `None` if some relation cannot be named or a bare
/// `TABLE name` hides one.
fn relation_counts(stmt: &Statement) -> Option<HashMap<String, usize>> {
    #[derive(Default)]
    struct Counts {
        names: HashMap<String, usize>,
        unknown: bool,
    }
    impl Visitor for Counts {
        type Break = ();
        fn pre_visit_relation(&mut self, name: &ObjectName) -> ControlFlow<()> {
            match rel_name(name) {
                Some(rel) => *self.names.entry(rel.name).or_default() += 1,
                None => self.unknown = true,
            }
            ControlFlow::Continue(())
        }
        fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
            self.unknown |= has_bare_table(&q.body);
            ControlFlow::Continue(())
        }
    }
    let mut counts = Counts::default();
    let _ = stmt.visit(&mut counts);
    (!counts.unknown).then_some(counts.names)
}

/// A plain SELECT: filters for the FROM's tables named once in the whole statement.
fn read(stmt: &Statement, q: &Query, numbers: &Numbers<'_>) -> Option<RowScope> {
    if q.with.is_some()
        || q.for_clause.is_some()
        || q.settings.is_some()
        || q.format_clause.is_some()
        || !q.pipe_operators.is_empty()
    {
        return None;
    }
    let SetExpr::Select(select) = q.body.as_ref() else {
        return None;
    };
    if select.prewhere.is_some()
        || !select.connect_by.is_empty()
        || !select.lateral_views.is_empty()
    {
        return None;
    }
    let selection = select.selection.as_ref()?;
    let sources = Sources::of_from(&select.from);
    let per_table = equalities(Some(selection), &sources, numbers);
    if per_table.iter().all(Vec::is_empty) {
        // Nothing to pin: spare the walk over the whole statement.
        return None;
    }
    let counts = relation_counts(stmt)?;
    let filters: Vec<RowFilter> = sources
        .tables
        .into_iter()
        .zip(per_table)
        .filter_map(|(table, eqs)| {
            let relation = table.relation?;
            let once = counts.get(&relation.name) == Some(&1);
            (once && !eqs.is_empty()).then_some(RowFilter { relation, eqs })
        })
        .collect();
    (!filters.is_empty()).then_some(RowScope::Read(filters))
}

/// The filter on the only target of an UPDATE or DELETE.
fn change_filter(
    factor: &TableFactor,
    selection: Option<&Expr>,
    numbers: &Numbers<'_>,
) -> Option<RowFilter> {
    let table = table_of(factor)?;
    let relation = table.relation.clone()?;
    let sources = Sources::target(table);
    let eqs = equalities(selection, &sources, numbers)
        .into_iter()
        .next()
        .unwrap_or_default();
    Some(RowFilter { relation, eqs })
}

/// Every column a SET targets, folded. A multi-part target (`SET a.b = ...` is field `b` of
/// composite column `a` in PostgreSQL) lists every part: over-reporting an assigned column is
/// safe, missing one is not.
fn assigned_columns(assignments: &[Assignment]) -> Option<Vec<String>> {
    let mut out = Vec::new();
    for a in assignments {
        let targets = match &a.target {
            AssignmentTarget::ColumnName(name) => std::slice::from_ref(name),
            AssignmentTarget::Tuple(names) => names.as_slice(),
        };
        for target in targets {
            for part in &target.0 {
                out.push(ident_name(part.as_ident()?));
            }
        }
    }
    Some(dedup(out))
}

/// `UPDATE t [AS a] SET ... [WHERE ...] [RETURNING ...]` (no FROM; a WITH makes it a Query).
fn update(u: &Update, numbers: &Numbers<'_>) -> Option<RowScope> {
    let Update {
        update_token: _,
        optimizer_hints,
        table,
        assignments,
        from,
        selection,
        returning: _,
        output,
        or,
        order_by,
        limit,
    } = u;
    if !optimizer_hints.is_empty()
        || !table.joins.is_empty()
        || from.is_some()
        || output.is_some()
        || or.is_some()
        || !order_by.is_empty()
        || limit.is_some()
    {
        return None;
    }
    let assigns = assigned_columns(assignments)?;
    let filter = change_filter(&table.relation, selection.as_ref(), numbers)?;
    Some(RowScope::Change { filter, assigns })
}

/// `DELETE FROM t [AS a] [WHERE ...] [RETURNING ...]` (no USING).
fn delete(d: &Delete, numbers: &Numbers<'_>) -> Option<RowScope> {
    let Delete {
        delete_token: _,
        optimizer_hints,
        tables,
        from,
        using,
        selection,
        returning: _,
        output,
        order_by,
        limit,
    } = d;
    if !optimizer_hints.is_empty()
        || !tables.is_empty()
        || using.is_some()
        || output.is_some()
        || !order_by.is_empty()
        || limit.is_some()
    {
        return None;
    }
    let FromTable::WithFromKeyword(from) = from else {
        return None;
    };
    let [target] = from.as_slice() else {
        return None;
    };
    if !target.joins.is_empty() {
        return None;
    }
    let filter = change_filter(&target.relation, selection.as_ref(), numbers)?;
    Some(RowScope::Change {
        filter,
        assigns: Vec::new(),
    })
}

/// Whether an INSERT is PostgreSQL's plain form: no ON CONFLICT, nothing of other dialects.
pub(super) fn plain_insert(i: &Insert) -> bool {
    i.optimizer_hints.is_empty()
        && i.or.is_none()
        && !i.ignore
        && !i.overwrite
        && i.assignments.is_empty()
        && i.partitioned.is_none()
        && i.after_columns.is_empty()
        && !i.has_table_keyword
        && i.on.is_none()
        && i.output.is_none()
        && !i.replace_into
        && i.priority.is_none()
        && i.insert_alias.is_none()
        && i.settings.is_none()
        && i.format_clause.is_none()
        && i.multi_table_insert_type.is_none()
        && i.multi_table_into_clauses.is_empty()
        && i.multi_table_when_clauses.is_empty()
        && i.multi_table_else_clause.is_none()
}

/// The rows of a source that is exactly `VALUES (...), ...`.
pub(super) fn plain_values(q: &Query) -> Option<&[sqlparser::ast::Parens<Vec<Expr>>]> {
    let bare = q.with.is_none()
        && q.order_by.is_none()
        && q.limit_clause.is_none()
        && q.fetch.is_none()
        && q.locks.is_empty()
        && q.for_clause.is_none()
        && q.settings.is_none()
        && q.format_clause.is_none()
        && q.pipe_operators.is_empty();
    match q.body.as_ref() {
        SetExpr::Values(v) if bare && !v.explicit_row && !v.value_keyword => {
            Some(v.rows.as_slice())
        }
        _ => None,
    }
}

/// `INSERT INTO t [AS a] (c, ...) VALUES (...), ... [RETURNING ...]`.
fn insert(i: &Insert, numbers: &Numbers<'_>) -> Option<RowScope> {
    if !plain_insert(i) {
        return None;
    }
    let TableObject::TableName(name) = &i.table else {
        return None;
    };
    let relation = rel_name(name)?;
    let columns = i
        .columns
        .iter()
        .map(|c| match c.0.as_slice() {
            [part] => part.as_ident().map(ident_name),
            _ => None,
        })
        .collect::<Option<Vec<String>>>()?;
    if columns.is_empty() {
        return None;
    }
    let rows = plain_values(i.source.as_deref()?)?
        .iter()
        .map(|row| {
            (row.content.len() == columns.len())
                .then(|| row.content.iter().map(|v| key_value(v, numbers)).collect())
        })
        .collect::<Option<Vec<Vec<Option<KeyValue>>>>>()?;
    Some(RowScope::Insert {
        relation,
        columns,
        rows,
    })
}
