//! Walks a parsed statement and collects what it reads, writes and calls: relation names (minus
//! names bound by the statement's own WITH, respecting scope, and minus table functions),
//! DML targets (including data-modifying CTEs), functions, and the constructs that make a read
//! uncacheable (locking clauses, TABLESAMPLE, SELECT INTO, value functions, special date
//! literals, reg* casts).
//!
//! The walk is sqlparser's `Visitor` (stack-protected by sqlparser's `recursive` feature);
//! identity of AST nodes (pointer equality) ties a CTE body and a DML target to the place it
//! is visited from. Anything unexpected is over-reported as a read or flagged unsupported,
//! never dropped: a missing read would be a stale hit.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::ops::ControlFlow;
use std::ptr;

use sqlparser::ast::{
    DataType, Expr, FromTable, Ident, ObjectName, ObjectNamePart, Query, Select, SetExpr,
    Statement, TableFactor, TableObject, TableWithJoins, ValueWithSpan, Visit, Visitor,
};

use super::{FuncName, RelName};

/// PostgreSQL's NAMEDATALEN - 1: longer identifiers are truncated (at a character boundary).
const MAX_IDENT_BYTES: usize = 63;

pub(crate) fn truncate_ident(mut s: String) -> String {
    if s.len() > MAX_IDENT_BYTES {
        let mut cut = MAX_IDENT_BYTES;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// An identifier as PostgreSQL folds it: unquoted → ASCII lower-case, quoted → as written.
pub(crate) fn ident_name(id: &Ident) -> String {
    let s = match id.quote_style {
        None => id.value.to_ascii_lowercase(),
        Some(_) => id.value.clone(),
    };
    truncate_ident(s)
}

fn name_parts(name: &ObjectName) -> Option<Vec<String>> {
    name.0
        .iter()
        .map(|part| match part {
            ObjectNamePart::Identifier(id) => Some(ident_name(id)),
            ObjectNamePart::Function(_) => None,
        })
        .collect()
}

/// `name`, `schema.name` or `db.schema.name`; `None` for anything else.
pub(crate) fn qualified(parts: Vec<String>) -> Option<(Option<String>, String)> {
    let mut it = parts.into_iter().rev();
    let name = it.next()?;
    let schema = it.next();
    // A third part is the database, which PostgreSQL requires to be the current one.
    let _database = it.next();
    if it.next().is_some() {
        return None;
    }
    Some((schema, name))
}

pub(crate) fn rel_name(name: &ObjectName) -> Option<RelName> {
    qualified(name_parts(name)?).map(|(schema, name)| RelName { schema, name })
}

pub(crate) fn func_name(name: &ObjectName) -> Option<FuncName> {
    qualified(name_parts(name)?).map(|(schema, name)| FuncName { schema, name })
}

pub(crate) fn push_unique<T: PartialEq>(v: &mut Vec<T>, item: T) {
    if !v.contains(&item) {
        v.push(item);
    }
}

/// Removes repeats, keeping first appearances in order (linear: statements can name
/// thousands of relations).
pub(crate) fn dedup<T: Hash + Eq + Clone>(v: Vec<T>) -> Vec<T> {
    let mut seen = HashSet::with_capacity(v.len());
    v.into_iter()
        .filter(|item| seen.insert(item.clone()))
        .collect()
}

/// SQL-standard value functions PostgreSQL parses as keywords (with or without a precision).
pub(crate) const KEYWORD_VALUE_FUNCTIONS: &[&str] = &[
    "current_date",
    "current_time",
    "current_timestamp",
    "localtime",
    "localtimestamp",
    "current_user",
    "current_role",
    "session_user",
    "user",
    "current_catalog",
    "current_schema",
    "system_user",
];

/// Function-call syntax that is grammar, not a catalog function (PostgreSQL's
/// func_expr_common_subexpr and friends): nothing for the catalog to look up, deterministic
/// given its arguments (which are still walked).
const SYNTAX_FUNCTIONS: &[&str] = &[
    "array",
    "coalesce",
    "greatest",
    "grouping",
    "json",
    "json_array",
    "json_arrayagg",
    "json_exists",
    "json_object",
    "json_objectagg",
    "json_query",
    "json_scalar",
    "json_serialize",
    "json_value",
    "least",
    "nullif",
    "row",
    "xmlconcat",
    "xmlelement",
    "xmlexists",
    "xmlforest",
    "xmlparse",
    "xmlpi",
    "xmlroot",
    "xmlserialize",
];

/// Ordinary functions whose result depends on the time, the session or the server rather than
/// on table contents. A rule allowing stable functions must still never cache these.
const VALUE_FUNCTIONS: &[&str] = &[
    "now",
    "transaction_timestamp",
    "statement_timestamp",
    "clock_timestamp",
    "timeofday",
    "current_setting",
    "current_database",
    "current_schemas",
    "current_query",
    "current_user",
    "session_user",
    "current_schema",
    "pg_backend_pid",
    "inet_client_addr",
    "inet_client_port",
    "inet_server_addr",
    "inet_server_port",
    "pg_current_xact_id",
    "pg_current_xact_id_if_assigned",
    "txid_current",
    "txid_current_if_assigned",
    "pg_postmaster_start_time",
    "pg_conf_load_time",
    "pg_trigger_depth",
    "pg_my_temp_schema",
];

/// Types whose input function looks names up in the catalog.
const REG_TYPES: &[&str] = &[
    "regclass",
    "regcollation",
    "regconfig",
    "regdictionary",
    "regnamespace",
    "regoper",
    "regoperator",
    "regproc",
    "regprocedure",
    "regrole",
    "regtype",
];

/// Whether a string literal holds one of the date/time inputs PostgreSQL evaluates to the
/// current time. Date/time input longer than 128 bytes is rejected, so longer literals cannot
/// be one; shorter ones are checked word by word (`'tomorrow 10:00'` counts).
fn is_special_date_literal(s: &str) -> bool {
    s.len() <= 128
        && s.split(|c: char| !c.is_ascii_alphanumeric()).any(|w| {
            ["now", "today", "tomorrow", "yesterday"]
                .iter()
                .any(|k| w.eq_ignore_ascii_case(k))
        })
}

fn is_reg_type(dt: &DataType) -> bool {
    match dt {
        DataType::Regclass => true,
        DataType::Custom(name, _) => name
            .0
            .last()
            .and_then(|p| p.as_ident())
            .is_some_and(|id| REG_TYPES.iter().any(|r| id.value.eq_ignore_ascii_case(r))),
        _ => false,
    }
}

/// One query's WITH list: the names it binds, which of them are visible right now (a
/// non-recursive WITH entry sees only the entries before it), and each entry's body.
struct Scope {
    /// Each entry's body, in order.
    bodies: Vec<*const Query>,
    /// Name → position of its first binding.
    names: HashMap<String, usize>,
    recursive: bool,
    visible: usize,
}

/// What a walk found. `handled` holds the names already accounted for (DML/DDL targets, FROM
/// items), so the generic relation hook does not report them again as reads.
#[derive(Default)]
pub(crate) struct Collector {
    pub reads: Vec<RelName>,
    pub writes: Vec<RelName>,
    pub functions: Vec<FuncName>,
    pub value_function: bool,
    pub special_literal: bool,
    pub reg_cast: bool,
    pub locking: bool,
    pub tablesample: bool,
    pub select_into: Vec<RelName>,
    pub select_into_temp: bool,
    /// INSERT/UPDATE/DELETE/MERGE statements met below the top-level statement.
    pub nested_dml: usize,
    /// A write whose target could not be named.
    pub unknown_write: bool,
    pub unsupported: bool,
    scopes: Vec<Scope>,
    handled: HashSet<*const ObjectName>,
    depth: usize,
}

impl Collector {
    /// Walks `stmt`; `handled` names are targets the caller already accounted for.
    pub fn walk(stmt: &Statement, handled: &[&ObjectName]) -> Self {
        let mut c = Collector {
            handled: handled.iter().map(|n| ptr::from_ref(*n)).collect(),
            ..Self::default()
        };
        let _ = stmt.visit(&mut c);
        c
    }

    fn is_handled(&self, name: &ObjectName) -> bool {
        self.handled.contains(&ptr::from_ref(name))
    }

    fn is_cte(&self, name: &ObjectName) -> bool {
        let [ObjectNamePart::Identifier(id)] = name.0.as_slice() else {
            return false;
        };
        let id = ident_name(id);
        self.scopes
            .iter()
            .any(|s| s.names.get(&id).is_some_and(|&at| at < s.visible))
    }

    fn add_read(&mut self, name: &ObjectName) {
        match rel_name(name) {
            Some(rel) => self.reads.push(rel),
            None => self.unsupported = true,
        }
    }

    fn add_write(&mut self, name: &ObjectName) {
        self.handled.insert(ptr::from_ref(name));
        match rel_name(name) {
            Some(rel) => self.writes.push(rel),
            None => self.unknown_write = true,
        }
    }

    fn add_function(&mut self, name: &ObjectName, keyword_form: bool) {
        let Some(f) = func_name(name) else {
            self.unsupported = true;
            return;
        };
        let builtin_schema = f.schema.as_deref().is_none_or(|s| s == "pg_catalog");
        let unqualified_keyword = f.schema.is_none()
            && keyword_form
            && KEYWORD_VALUE_FUNCTIONS.contains(&f.name.as_str());
        if unqualified_keyword {
            // SQL syntax, not a catalog function: nothing for the catalog to look up.
            self.value_function = true;
            return;
        }
        if f.schema.is_none() && keyword_form && SYNTAX_FUNCTIONS.contains(&f.name.as_str()) {
            return;
        }
        if builtin_schema && VALUE_FUNCTIONS.contains(&f.name.as_str()) {
            self.value_function = true;
        }
        self.functions.push(f);
    }

    fn add_table_with_joins_targets(&mut self, twj: &TableWithJoins) {
        let factors = std::iter::once(&twj.relation).chain(twj.joins.iter().map(|j| &j.relation));
        for factor in factors {
            match factor {
                TableFactor::Table {
                    name, args: None, ..
                } => self.add_write(name),
                _ => self.unknown_write = true,
            }
        }
    }

    /// Records the targets of a DML statement as writes.
    fn dml_targets(&mut self, stmt: &Statement) -> bool {
        match stmt {
            Statement::Insert(ins) => match &ins.table {
                TableObject::TableName(name) => self.add_write(name),
                _ => self.unknown_write = true,
            },
            Statement::Update(upd) => self.add_table_with_joins_targets(&upd.table),
            Statement::Delete(del) => {
                for name in &del.tables {
                    self.add_write(name);
                }
                let (FromTable::WithFromKeyword(from) | FromTable::WithoutKeyword(from)) =
                    &del.from;
                for twj in from {
                    self.add_table_with_joins_targets(twj);
                }
            }
            Statement::Merge(merge) => match &merge.table {
                TableFactor::Table {
                    name, args: None, ..
                } => self.add_write(name),
                _ => self.unknown_write = true,
            },
            _ => return false,
        }
        true
    }
}

/// Whether a set-operation tree holds a bare `TABLE name`, which sqlparser keeps as a string
/// (invisible to the relation hooks). Iterative: set operations can chain thousands deep.
pub(crate) fn has_bare_table(body: &SetExpr) -> bool {
    let mut stack = vec![body];
    while let Some(node) = stack.pop() {
        match node {
            SetExpr::Table(_) => return true,
            SetExpr::SetOperation { left, right, .. } => {
                stack.push(left);
                stack.push(right);
            }
            _ => {}
        }
    }
    false
}

impl Visitor for Collector {
    type Break = ();

    fn pre_visit_statement(&mut self, stmt: &Statement) -> ControlFlow<()> {
        self.depth += 1;
        if self.dml_targets(stmt) && self.depth > 1 {
            self.nested_dml += 1;
        }
        ControlFlow::Continue(())
    }

    fn post_visit_statement(&mut self, _stmt: &Statement) -> ControlFlow<()> {
        self.depth = self.depth.saturating_sub(1);
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
        if let Some(top) = self.scopes.last_mut()
            && let Some(i) = top.bodies.iter().position(|p| ptr::eq(*p, q))
        {
            top.visible = if top.recursive { top.bodies.len() } else { i };
        }
        let mut scope = Scope {
            bodies: Vec::new(),
            names: HashMap::new(),
            recursive: false,
            visible: 0,
        };
        if let Some(with) = &q.with {
            scope.recursive = with.recursive;
            for (i, cte) in with.cte_tables.iter().enumerate() {
                scope.bodies.push(ptr::from_ref(&*cte.query));
                scope.names.entry(ident_name(&cte.alias.name)).or_insert(i);
            }
            if with.recursive {
                scope.visible = scope.bodies.len();
            }
        }
        self.scopes.push(scope);
        if !q.locks.is_empty() {
            self.locking = true;
        }
        if has_bare_table(&q.body)
            || q.for_clause.is_some()
            || q.settings.is_some()
            || q.format_clause.is_some()
            || !q.pipe_operators.is_empty()
        {
            self.unsupported = true;
        }
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
        self.scopes.pop();
        if let Some(top) = self.scopes.last_mut()
            && top.bodies.iter().any(|p| ptr::eq(*p, q))
        {
            // After a WITH entry's body the main query sees every name; the next entry's own
            // visit narrows this again.
            top.visible = top.bodies.len();
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, select: &Select) -> ControlFlow<()> {
        if let Some(into) = &select.into {
            self.select_into_temp |= into.temporary;
            for target in &into.targets {
                let name = match target {
                    Expr::Identifier(id) => qualified(vec![ident_name(id)]),
                    Expr::CompoundIdentifier(ids) => {
                        qualified(ids.iter().map(ident_name).collect())
                    }
                    _ => None,
                };
                match name {
                    Some((schema, name)) => self.select_into.push(RelName { schema, name }),
                    None => self.unknown_write = true,
                }
            }
            if into.targets.is_empty() {
                self.unknown_write = true;
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        match factor {
            TableFactor::Table {
                name,
                args,
                sample,
                version,
                partitions,
                json_path,
                ..
            } => {
                if sample.is_some() {
                    self.tablesample = true;
                }
                if version.is_some() || !partitions.is_empty() || json_path.is_some() {
                    self.unsupported = true;
                }
                if !self.is_handled(name) {
                    self.handled.insert(ptr::from_ref(name));
                    if args.is_some() {
                        // `FROM f(...)` is always a function call in PostgreSQL.
                        self.add_function(name, false);
                    } else if !self.is_cte(name) {
                        self.add_read(name);
                    }
                }
            }
            TableFactor::Function { name, .. } => self.add_function(name, false),
            TableFactor::Derived { .. }
            | TableFactor::NestedJoin { .. }
            | TableFactor::UNNEST { .. }
            | TableFactor::JsonTable { .. }
            | TableFactor::XmlTable { .. } => {}
            _ => self.unsupported = true,
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_relation(&mut self, name: &ObjectName) -> ControlFlow<()> {
        // Relation names outside a FROM item (DDL objects and the like): over-report as reads.
        if !self.is_handled(name) {
            self.handled.insert(ptr::from_ref(name));
            self.add_read(name);
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        match expr {
            Expr::Function(f) => {
                // `current_user` unquoted is SQL syntax; `"current_user"()` a catalog function.
                let keyword_form = f
                    .name
                    .0
                    .iter()
                    .all(|p| p.as_ident().is_some_and(|i| i.quote_style.is_none()));
                self.add_function(&f.name, keyword_form);
            }
            // sqlparser reads some keyword value functions (`current_role`, ...) as columns;
            // in PostgreSQL these words are reserved, so unquoted they are the function.
            Expr::Identifier(id)
                if id.quote_style.is_none()
                    && KEYWORD_VALUE_FUNCTIONS
                        .iter()
                        .any(|k| id.value.eq_ignore_ascii_case(k)) =>
            {
                self.value_function = true;
            }
            Expr::Cast { data_type, .. }
            | Expr::TypedString(sqlparser::ast::TypedString { data_type, .. })
                if is_reg_type(data_type) =>
            {
                self.reg_cast = true;
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_value(&mut self, value: &ValueWithSpan) -> ControlFlow<()> {
        // Values are leaves (strings, not expressions): cloning one is shallow.
        let text = value.value.clone().into_string();
        if text.as_deref().is_some_and(is_special_date_literal) {
            self.special_literal = true;
        }
        ControlFlow::Continue(())
    }
}
