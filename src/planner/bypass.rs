//! Why a read is relayed without the cache: one closed set of reasons for the planner's
//! verdicts (a statement that is not a pure read, a relation or function that cannot be
//! cached, a rule), the session's checks at lookup time (in a transaction block, settings
//! unknown, adaptive bypass, ...) and the shared tier's. Each reason's label is the
//! `reason` of `pgmemo_cache_bypasses_total` and what `/api/queries` reports; the labels
//! are a stable interface (dashboards and alerts match them).

use std::fmt;

use crate::sql::NotCacheable;

/// Declares the enum, its labels and the list of every variant from one table, so a reason
/// cannot be added without a label or left out of the per-reason counters.
macro_rules! reasons {
    ($($(#[$doc:meta])* $variant:ident => $label:literal,)*) => {
        /// Why a read bypasses the cache (see the module header).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum BypassReason {
            $($(#[$doc])* $variant,)*
        }

        impl BypassReason {
            /// Every reason, in declaration order (`reason as usize` indexes it).
            pub const ALL: &'static [BypassReason] = &[$(Self::$variant,)*];

            /// The metric label.
            pub fn label(self) -> &'static str {
                match self {
                    $(Self::$variant => $label,)*
                }
            }
        }
    };
}

reasons! {
    // The statement text (see `crate::sql::NotCacheable`).
    /// No statement at all.
    Empty => "empty",
    /// More than one statement in one Query.
    MultipleStatements => "multiple_statements",
    /// Not a SELECT/VALUES/TABLE.
    NotSelect => "not_select",
    /// `FOR UPDATE` and the other locking clauses.
    LockingClause => "locking_clause",
    /// A data-modifying `WITH`.
    DataModifyingCte => "data_modifying_cte",
    /// `SELECT ... INTO`.
    SelectInto => "select_into",
    /// `TABLESAMPLE`.
    TableSample => "tablesample",
    /// `now()`, `CURRENT_USER`, `current_setting()` and the other value functions.
    ValueFunction => "value_function",
    /// `'now'`, `'today'` and the like.
    SpecialDateLiteral => "special_date_literal",
    /// A cast to a reg* type.
    RegTypeCast => "regtype_cast",
    /// EXPLAIN.
    Explain => "explain",
    /// DECLARE CURSOR.
    Cursor => "cursor",
    /// COPY ... TO.
    CopyTo => "copy_to",
    /// SQL EXECUTE.
    Execute => "execute",
    /// Syntax the analysis does not model.
    UnsupportedSyntax => "unsupported_syntax",
    /// The parser failed.
    ParseFailed => "parse_failed",
    /// Not UTF-8.
    NotUtf8 => "not_utf8",
    /// Too long to parse.
    TooLarge => "too_large",
    /// A `pgmemo:nocache` hint.
    NocacheHint => "nocache_hint",
    // What the catalog and the rules say.
    /// A named relation does not exist (for the side connection).
    RelationMissing => "relation_missing",
    /// A temporary relation.
    TemporaryRelation => "temporary_relation",
    /// An unlogged relation (change data capture cannot see its writes).
    UnloggedRelation => "unlogged_relation",
    /// A system catalog.
    SystemRelation => "system_relation",
    /// A sequence, foreign table or another kind pgmemo does not cache.
    RelationKind => "relation_kind",
    /// Row-level security without a rule's `allow_rls`.
    RowSecurity => "row_security",
    /// A view runs volatile code.
    ViewVolatility => "view_volatility",
    /// A view takes row locks.
    ViewLocking => "view_locking",
    /// A view pgmemo cannot analyse.
    ViewTooComplex => "view_too_complex",
    /// The catalog could not be read.
    CatalogError => "catalog_error",
    /// A name did not resolve.
    UnresolvedRelation => "unresolved_relation",
    /// A name a temporary relation of the session may shadow.
    TempShadow => "temp_shadow",
    /// A rule's `cache = false`.
    Rule => "rule",
    /// A volatile function (or a STABLE one without a rule's opt-in).
    FunctionVolatility => "function_volatility",
    /// A STABLE function whose reads are unknown, with no TTL cap configured.
    UndeclaredFunctionReads => "undeclared_function_reads",
    /// A function body names a relation that does not resolve.
    FunctionReadsUnresolved => "function_reads_unresolved",
    /// The session has no settings probe result yet.
    NoSessionContext => "no_session_context",
    /// The client encoding is one pgmemo does not cache under.
    ClientEncoding => "client_encoding",
    // The session, at lookup time.
    /// The cache is turned off.
    Disabled => "disabled",
    /// Inside a transaction block (or while a result is being captured).
    NotIdle => "not_idle",
    /// The database's change stream is not streaming.
    CdcNotStreaming => "cdc_not_streaming",
    /// No catalog poll watches the database now.
    CatalogUnwatched => "catalog_unwatched",
    /// The session set `pgmemo.cache = off`.
    SessionOptOut => "session_opt_out",
    /// The session's settings are being probed again.
    SettingsUnknown => "settings_unknown",
    /// A simple Query while an unnamed prepared statement exists.
    UnnamedStatement => "unnamed_statement",
    /// The session ran something whose effect on its settings is unknown.
    SessionTainted => "session_tainted",
    /// Adaptive bypass: the shape's sampled hit ratio is below `cache.min_hit_ratio`.
    LowHitRatio => "low_hit_ratio",
    /// A Bind parameter that reads the clock (`'now'`, ...).
    ClockParameter => "clock_parameter",
    /// The shared tier (Redis) did not answer.
    RedisUnavailable => "redis_unavailable",
}

impl fmt::Display for BypassReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

impl From<NotCacheable> for BypassReason {
    fn from(r: NotCacheable) -> Self {
        match r {
            NotCacheable::Empty => Self::Empty,
            NotCacheable::MultipleStatements => Self::MultipleStatements,
            NotCacheable::NotSelect => Self::NotSelect,
            NotCacheable::LockingClause => Self::LockingClause,
            NotCacheable::DataModifyingCte => Self::DataModifyingCte,
            NotCacheable::SelectInto => Self::SelectInto,
            NotCacheable::TableSample => Self::TableSample,
            NotCacheable::ValueFunction => Self::ValueFunction,
            NotCacheable::SpecialDateLiteral => Self::SpecialDateLiteral,
            NotCacheable::RegTypeCast => Self::RegTypeCast,
            NotCacheable::Explain => Self::Explain,
            NotCacheable::Cursor => Self::Cursor,
            NotCacheable::CopyTo => Self::CopyTo,
            NotCacheable::Execute => Self::Execute,
            NotCacheable::UnsupportedSyntax => Self::UnsupportedSyntax,
            NotCacheable::ParseFailed => Self::ParseFailed,
            NotCacheable::NotUtf8 => Self::NotUtf8,
            NotCacheable::TooLarge => Self::TooLarge,
            NotCacheable::NocacheHint => Self::NocacheHint,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_unique_and_all_indexes_match() {
        let mut seen = std::collections::HashSet::new();
        for (i, r) in BypassReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r}");
            assert!(seen.insert(r.label()), "duplicate label {r}");
            assert!(
                r.label()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            );
        }
    }

    #[test]
    fn statement_reasons_keep_the_sql_labels() {
        use NotCacheable as N;
        for r in [
            N::Empty,
            N::MultipleStatements,
            N::NotSelect,
            N::LockingClause,
            N::DataModifyingCte,
            N::SelectInto,
            N::TableSample,
            N::ValueFunction,
            N::SpecialDateLiteral,
            N::RegTypeCast,
            N::Explain,
            N::Cursor,
            N::CopyTo,
            N::Execute,
            N::UnsupportedSyntax,
            N::ParseFailed,
            N::NotUtf8,
            N::TooLarge,
            N::NocacheHint,
        ] {
            assert_eq!(BypassReason::from(r).label(), r.label());
        }
    }
}
