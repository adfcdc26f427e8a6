//! The admin console's commands, parsed from one simple Query's text. Keywords are
//! case-insensitive and a trailing `;` is allowed, as in PgBouncer's console; anything else is
//! an error naming the commands there are.

/// One console command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Help,
    ShowStats,
    ShowQueries,
    ShowTables,
    ShowConfig,
    ShowCdc,
    ShowShared,
    /// `INVALIDATE TABLE database.schema.table` (or `database.table`: the table as
    /// PostgreSQL resolves it for pgmemo's role).
    InvalidateTable {
        database: String,
        table: String,
    },
    Flush,
    Reload,
    /// `EXPLAIN CACHE ...`: only in a session on a real database.
    ExplainCache,
    /// Nothing but whitespace and semicolons.
    Empty,
}

/// Why a text is not a command (the message the client gets).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

/// The commands, for `SHOW HELP` and error hints.
pub const HELP: &[(&str, &str)] = &[
    (
        "SHOW STATS",
        "totals: hits, misses, bypasses by reason, memory, entries",
    ),
    (
        "SHOW QUERIES",
        "per statement shape, most PostgreSQL time first: calls, hits, why not cached",
    ),
    (
        "SHOW TABLES",
        "per table: rule, write policy, version, entries, bytes",
    ),
    ("SHOW CONFIG", "the running configuration, secrets redacted"),
    ("SHOW CDC", "each database's change stream: state, lag"),
    (
        "SHOW SHARED",
        "the Redis tier: usable, breaker, subscription, leases",
    ),
    (
        "INVALIDATE TABLE db.schema.table",
        "bump one table's version (every instance sharing the cache)",
    ),
    ("FLUSH", "empty the whole cache"),
    ("RELOAD", "re-read the configuration, as SIGHUP does"),
    (
        "EXPLAIN CACHE <sql>",
        "in a session on a database: would <sql> be cached, and why (not)",
    ),
    ("SHOW HELP", "this list"),
];

pub fn parse(text: &str) -> Result<Command, ParseError> {
    let text = text
        .trim()
        .trim_end_matches(|c: char| c == ';' || c.is_whitespace());
    let words: Vec<&str> = text.split_whitespace().collect();
    let upper: Vec<String> = words.iter().map(|w| w.to_ascii_uppercase()).collect();
    let upper: Vec<&str> = upper.iter().map(String::as_str).collect();
    match upper.as_slice() {
        [] => Ok(Command::Empty),
        ["SHOW", "HELP"] | ["HELP"] => Ok(Command::Help),
        ["SHOW", "STATS"] => Ok(Command::ShowStats),
        ["SHOW", "QUERIES"] => Ok(Command::ShowQueries),
        ["SHOW", "TABLES"] => Ok(Command::ShowTables),
        ["SHOW", "CONFIG"] => Ok(Command::ShowConfig),
        ["SHOW", "CDC"] => Ok(Command::ShowCdc),
        ["SHOW", "SHARED"] => Ok(Command::ShowShared),
        ["FLUSH"] => Ok(Command::Flush),
        ["RELOAD"] => Ok(Command::Reload),
        ["EXPLAIN", "CACHE", ..] => Ok(Command::ExplainCache),
        ["INVALIDATE", "TABLE", _] => {
            let name = words.get(2).copied().unwrap_or_default();
            let (database, table) = name.split_once('.').ok_or_else(|| {
                ParseError(format!(
                    "INVALIDATE TABLE needs the database too: database.schema.table, not {name:?}"
                ))
            })?;
            if database.is_empty() || table.is_empty() {
                return Err(ParseError(format!(
                    "INVALIDATE TABLE database.schema.table: {name:?} has an empty part"
                )));
            }
            Ok(Command::InvalidateTable {
                database: database.to_owned(),
                table: table.to_owned(),
            })
        }
        _ => Err(ParseError(format!(
            "not a pgmemo console command: {:?} (SHOW HELP lists them)",
            first_line(text)
        ))),
    }
}

/// `text`'s first line, at most 80 characters (for error messages).
fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or("").chars().take(80).collect()
}

/// Whether a client's SQL text is `EXPLAIN CACHE ...` (case-insensitive, after leading
/// whitespace and comments are not skipped: the command must start the text). The statement
/// after the two keywords, if it is one.
pub fn explain_cache(sql: &[u8]) -> Option<&[u8]> {
    let start = sql.iter().position(|b| !b.is_ascii_whitespace())?;
    let rest = sql.get(start..)?;
    let (kw1, rest) = keyword(rest)?;
    if !kw1.eq_ignore_ascii_case(b"EXPLAIN") {
        return None;
    }
    let (kw2, rest) = keyword(rest)?;
    if !kw2.eq_ignore_ascii_case(b"CACHE") {
        return None;
    }
    Some(rest)
}

/// The leading word of `s` (letters only) and what follows it; None unless a word is
/// followed by whitespace or the end.
fn keyword(s: &[u8]) -> Option<(&[u8], &[u8])> {
    let s = s.get(s.iter().position(|b| !b.is_ascii_whitespace())?..)?;
    let end = s
        .iter()
        .position(|b| !b.is_ascii_alphabetic())
        .unwrap_or(s.len());
    let (word, rest) = s.split_at(end);
    if word.is_empty() || rest.first().is_some_and(|b| !b.is_ascii_whitespace()) {
        return None;
    }
    Some((word, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_case_insensitive_with_an_optional_semicolon() {
        assert_eq!(parse("show stats;"), Ok(Command::ShowStats));
        assert_eq!(parse("  SHOW   Cdc ; "), Ok(Command::ShowCdc));
        assert_eq!(parse("flush"), Ok(Command::Flush));
        assert_eq!(parse(";"), Ok(Command::Empty));
        assert_eq!(parse("help"), Ok(Command::Help));
    }

    #[test]
    fn invalidate_table_takes_the_database_and_the_table() {
        assert_eq!(
            parse("INVALIDATE TABLE app.public.accounts"),
            Ok(Command::InvalidateTable {
                database: "app".into(),
                table: "public.accounts".into()
            })
        );
        assert_eq!(
            parse("invalidate table app.accounts;"),
            Ok(Command::InvalidateTable {
                database: "app".into(),
                table: "accounts".into()
            })
        );
        assert!(parse("INVALIDATE TABLE accounts").is_err());
        assert!(parse("INVALIDATE TABLE .accounts").is_err());
    }

    #[test]
    fn anything_else_is_refused_with_the_way_to_the_list() {
        let e = parse("SELECT 1").unwrap_err();
        assert!(e.0.contains("SHOW HELP"), "{e}");
        assert!(parse("SHOW STATS extra").is_err());
        assert!(parse("DROP TABLE x").is_err());
    }

    #[test]
    fn explain_cache_is_recognised_only_at_the_start() {
        assert_eq!(
            explain_cache(b"  explain cache SELECT 1"),
            Some(&b" SELECT 1"[..])
        );
        assert_eq!(
            explain_cache(b"EXPLAIN\n\tCACHE\nSELECT 1"),
            Some(&b"\nSELECT 1"[..])
        );
        assert_eq!(explain_cache(b"EXPLAIN SELECT 1"), None);
        assert_eq!(explain_cache(b"EXPLAIN CACHED SELECT 1"), None);
        assert_eq!(explain_cache(b"EXPLAIN(CACHE) SELECT 1"), None);
        assert_eq!(explain_cache(b"SELECT 'EXPLAIN CACHE'"), None);
        assert_eq!(explain_cache(b""), None);
    }
}
