//! The catalog's vocabulary: names handed in by callers, relation facts and the
//! "cacheable kind" rule of DESIGN §1.5, function volatility, and the read and write
//! expansions the session turns into tags, versions and epoch bumps.

use std::fmt;

/// A PostgreSQL object identifier (tokio-postgres maps `oid` to `u32`).
pub type Oid = u32;

/// A relation name as written in a statement, already normalised the way PostgreSQL reads
/// identifiers (unquoted parts case-folded, quotes removed). `schema: None` = unqualified.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelName {
    pub schema: Option<String>,
    pub name: String,
}

impl RelName {
    pub fn new(schema: Option<&str>, name: &str) -> Self {
        Self {
            schema: schema.map(str::to_owned),
            name: name.to_owned(),
        }
    }
}

impl fmt::Display for RelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(schema) => write!(f, "{schema}.{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// What the caller knows about a call's arguments.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FuncArgs {
    /// Nothing: every function of that name on the path is a candidate.
    Any,
    /// The number of arguments written (defaults and VARIADIC are taken into account).
    Count(usize),
    /// The exact argument type OIDs: an exact signature match is used when one exists,
    /// otherwise every candidate of that arity counts.
    Types(Vec<Oid>),
}

/// A function call as written, normalised like [`RelName`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FuncRef {
    pub schema: Option<String>,
    pub name: String,
    pub args: FuncArgs,
}

impl FuncRef {
    pub fn new(schema: Option<&str>, name: &str, args: FuncArgs) -> Self {
        Self {
            schema: schema.map(str::to_owned),
            name: name.to_owned(),
            args,
        }
    }
}

/// `pg_proc.provolatile`, ordered from safest to least safe; `Unknown` (no such function,
/// or something pgmemo cannot see) must be treated as volatile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Volatility {
    Immutable,
    Stable,
    Volatile,
    Unknown,
}

impl Volatility {
    pub(crate) fn from_code(code: &str) -> Self {
        match code {
            "i" => Volatility::Immutable,
            "s" => Volatility::Stable,
            "v" => Volatility::Volatile,
            _ => Volatility::Unknown,
        }
    }

    /// Whether a result computed under it may be cached (`allow_stable`: a rule opted in).
    pub fn cacheable(self, allow_stable: bool) -> bool {
        match self {
            Volatility::Immutable => true,
            Volatility::Stable => allow_stable,
            Volatility::Volatile | Volatility::Unknown => false,
        }
    }
}

/// What a session needs to know about one function call.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FuncFacts {
    /// The worst volatility among the overloads the call could reach.
    pub volatility: Volatility,
    /// Some overload it could reach lives outside `pg_catalog` (or none was found): code a
    /// user wrote, which may have effects pgmemo cannot see (`set_config`, writes).
    pub user_defined: bool,
    /// The overloads outside `pg_catalog` it could reach (ask [`crate::catalog::Catalog::
    /// function_bodies`] what they read).
    pub user_overloads: std::sync::Arc<[Oid]>,
}

/// A user function's body, as far as pgmemo can tell what it reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FuncBody {
    pub oid: Oid,
    /// `nspname || '.' || proname`, as `[[functions.reads]]` entries are matched.
    pub name: String,
    pub volatility: Volatility,
    pub source: BodySource,
}

/// Where what a function reads can be found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodySource {
    /// `LANGUAGE sql` with a string body: PostgreSQL parses it at each call, resolving names
    /// under `search_path` (the function's own `SET search_path`, the raw setting text after
    /// `search_path=`) or, without one, the calling session's.
    SqlText {
        text: String,
        search_path: Option<String>,
    },
    /// A `BEGIN ATOMIC` body (PostgreSQL 14+), bound when created: the relations `pg_depend`
    /// records it references, and the functions outside pg_catalog it calls (whose reads
    /// are hidden one level down).
    Atomic {
        relations: Vec<Oid>,
        functions: Vec<Oid>,
    },
    /// Any other language (PL/pgSQL, C, ...): its reads cannot be derived.
    Opaque { language: String },
}

/// `pg_class.relkind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RelKind {
    Ordinary,
    Partitioned,
    View,
    MaterializedView,
    Foreign,
    Sequence,
    Toast,
    CompositeType,
    Index,
    PartitionedIndex,
    Other(char),
}

impl RelKind {
    pub(crate) fn from_code(code: &str) -> Self {
        match code {
            "r" => RelKind::Ordinary,
            "p" => RelKind::Partitioned,
            "v" => RelKind::View,
            "m" => RelKind::MaterializedView,
            "f" => RelKind::Foreign,
            "S" => RelKind::Sequence,
            "t" => RelKind::Toast,
            "c" => RelKind::CompositeType,
            "i" => RelKind::Index,
            "I" => RelKind::PartitionedIndex,
            other => RelKind::Other(other.chars().next().unwrap_or('?')),
        }
    }
}

/// `pg_class.relpersistence`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Persistence {
    Permanent,
    Unlogged,
    Temporary,
}

impl Persistence {
    pub(crate) fn from_code(code: &str) -> Self {
        match code {
            "p" => Persistence::Permanent,
            "u" => Persistence::Unlogged,
            // 't', and anything a future version adds, is treated as the least cacheable.
            _ => Persistence::Temporary,
        }
    }
}

/// Why the catalog says a relation (or a read of it) cannot be cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NotCacheable {
    /// The relation no longer exists (dropped since it was resolved).
    Missing,
    Temporary,
    Unlogged,
    /// A system catalog, information_schema or TOAST relation.
    System,
    /// Any kind other than ordinary, partitioned or view (foreign, sequence, matview, ...).
    Kind(RelKind),
    /// Row-level security is enabled and no rule opted in.
    RowSecurity,
    /// A view evaluates something of this volatility.
    Volatility(Volatility),
    /// A view takes row locks (FOR UPDATE/SHARE inside its definition).
    Locking,
    /// Views nest deeper than the configured expansion bound.
    TooComplex,
}

/// What the catalog knows about one relation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationFacts {
    pub oid: Oid,
    pub schema: String,
    pub name: String,
    pub kind: RelKind,
    pub persistence: Persistence,
    /// In pg_catalog, information_schema or a pg_toast schema.
    pub system: bool,
    /// `relrowsecurity`.
    pub rls_enabled: bool,
    /// `relforcerowsecurity` (policies apply to the owner too).
    pub rls_forced: bool,
    /// `relispartition`.
    pub is_partition: bool,
}

impl RelationFacts {
    /// DESIGN §1.5: only permanent, non-system ordinary tables, partitioned tables and views
    /// may be read from the cache. Row-level security is not judged here (a rule may opt
    /// in; see [`RelationFacts::rls_enabled`]); views must also pass [`ReadSet::check`].
    pub fn cacheable_kind(&self) -> Result<(), NotCacheable> {
        if self.system {
            return Err(NotCacheable::System);
        }
        match self.persistence {
            Persistence::Temporary => return Err(NotCacheable::Temporary),
            Persistence::Unlogged => return Err(NotCacheable::Unlogged),
            Persistence::Permanent => {}
        }
        match self.kind {
            RelKind::Ordinary | RelKind::Partitioned | RelKind::View => Ok(()),
            other => Err(NotCacheable::Kind(other)),
        }
    }

    pub(crate) fn is_system_schema(schema: &str) -> bool {
        schema == "pg_catalog" || schema == "information_schema" || schema.starts_with("pg_toast")
    }
}

/// One name resolved under a session's search_path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub name: RelName,
    /// `None`: no relation of that name is visible from a side connection (a CTE name, a
    /// temporary relation of the session, or an error upstream): not cacheable.
    pub relation: Option<RelationFacts>,
    /// The session's own temporary schema, if it has one, is searched before the schema the
    /// name resolved to (PostgreSQL searches it first unless `pg_temp` is listed later in
    /// the path), or the name is qualified with `pg_temp`. A side connection cannot see
    /// another session's temporary relations, so a session that may own any (it ran
    /// CREATE TEMP, or anything pgmemo cannot model) must treat the name as not cacheable.
    pub temp_shadow: bool,
}

/// What reading a set of relations depends on (views expanded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadSet {
    /// The tags whose versions key the result: the relations read and, through views,
    /// everything they read (nested views included), sorted.
    pub tags: Vec<Oid>,
    /// Relations that make the read not cacheable, with the reason (kind, persistence,
    /// view volatility, locking; RLS is reported in `rls`, not here).
    pub blockers: Vec<(Oid, NotCacheable)>,
    /// Some relation in `tags` has row-level security enabled.
    pub rls: bool,
    /// The worst volatility evaluated inside the views read (`Immutable` when none).
    pub volatility: Volatility,
    /// The functions outside pg_catalog the views read call (what they read is part of what
    /// the read depends on).
    pub user_functions: Vec<Oid>,
}

impl Default for ReadSet {
    /// Reading nothing: no tags, nothing evaluated.
    fn default() -> Self {
        Self {
            tags: Vec::new(),
            blockers: Vec::new(),
            rls: false,
            volatility: Volatility::Immutable,
            user_functions: Vec::new(),
        }
    }
}

impl ReadSet {
    /// The catalog's verdict, given what the matching rules allow.
    pub fn check(&self, allow_stable: bool, allow_rls: bool) -> Result<(), NotCacheable> {
        if let Some((_, reason)) = self.blockers.first() {
            return Err(*reason);
        }
        if !self.volatility.cacheable(allow_stable) {
            return Err(NotCacheable::Volatility(self.volatility));
        }
        if self.rls && !allow_rls {
            return Err(NotCacheable::RowSecurity);
        }
        Ok(())
    }
}

/// Why a write must bump the epoch: it has effects pgmemo cannot see in SQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EpochReason {
    /// A user (non-internal) trigger on a relation the write reaches.
    Trigger {
        relation: Oid,
        trigger: String,
        function: String,
    },
    /// A non-SELECT rule whose action or condition calls a non-immutable function outside
    /// pg_catalog (or `set_config`).
    Rule { relation: Oid, function: String },
    /// A column default of a relation the write reaches calls such a function.
    Default { relation: Oid, function: String },
    /// The closure grew past the configured bound: pgmemo cannot list what it writes.
    TooManyRelations { limit: usize },
}

impl EpochReason {
    /// The qualified function name (`schema.name`), for a `no_side_effects` allowlist.
    pub fn function(&self) -> Option<&str> {
        match self {
            EpochReason::Trigger { function, .. }
            | EpochReason::Rule { function, .. }
            | EpochReason::Default { function, .. } => Some(function),
            EpochReason::TooManyRelations { .. } => None,
        }
    }
}

/// What a write to a set of relations may change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteSet {
    /// The tags to bump: the relations written, their inheritance/partition descendants
    /// and ancestors, the relations reached by FK actions (CASCADE, SET NULL, SET DEFAULT)
    /// and by rewrite rules, and the base relations of written views; transitively, sorted.
    pub tags: Vec<Oid>,
    /// Non-empty: the write also bumps the epoch (unless an allowlist clears each reason).
    pub epoch: Vec<EpochReason>,
}

/// What a view reads and evaluates (nested views expanded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewSources {
    /// Every relation read, nested views included (the view itself not), by OID.
    pub relations: Vec<RelationFacts>,
    /// The worst volatility of the functions, operators, I/O coercions and SQL value
    /// functions the definitions evaluate (`Immutable` when none).
    pub volatility: Volatility,
    /// The functions outside pg_catalog the definitions call (tracked by the poller: a
    /// redefinition changes the view's volatility without touching the view).
    pub functions: Vec<Oid>,
    /// Some definition takes row locks.
    pub locking: bool,
    /// `false` when the expansion stopped at the configured bound (then not cacheable).
    pub complete: bool,
}

/// A relation's inheritance / partition tree around it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inheritance {
    /// Parents, grandparents, ... (sorted).
    pub ancestors: Vec<Oid>,
    /// Children, grandchildren, ... (sorted).
    pub descendants: Vec<Oid>,
}

/// A user (non-internal) trigger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserTrigger {
    pub relation: Oid,
    pub name: String,
    /// `schema.name` of the trigger function.
    pub function: String,
}
