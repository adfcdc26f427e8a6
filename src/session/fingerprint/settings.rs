//! Which settings the fingerprint leaves out (and why), the canonical encoding helpers, and the
//! parser for transaction-mode settings (`SET TRANSACTION ...`, `SET SESSION CHARACTERISTICS`).

const FAILS: &str = "only decides whether a statement fails; failed responses are never stored";
const IDLE: &str = "ends idle sessions; no effect on any response";
const SOCKET: &str = "socket option; no effect on any response";

/// Settings left out of the fingerprint because they cannot change the rows, the row
/// description or the messages of a response pgmemo would store, with why.
pub const EXCLUDED_SETTINGS: &[(&str, &str)] = &[
    (
        "application_name",
        "a label in pg_stat_activity and logs; reading it needs current_setting(), which is \
         never cacheable",
    ),
    ("statement_timeout", FAILS),
    ("lock_timeout", FAILS),
    ("transaction_timeout", FAILS),
    ("idle_in_transaction_session_timeout", IDLE),
    ("idle_session_timeout", IDLE),
    ("tcp_keepalives_idle", SOCKET),
    ("tcp_keepalives_interval", SOCKET),
    ("tcp_keepalives_count", SOCKET),
    ("tcp_user_timeout", SOCKET),
];

/// Name prefixes left out, with why.
pub const EXCLUDED_PREFIXES: &[(&str, &str)] = &[(
    "log_",
    "server-log settings (log_statement, log_min_duration_statement, ...); they write to the \
     server log, never to the client",
)];

// Deliberately NOT excluded, although they look harmless:
// - extra_float_digits: changes the text of every float in a result.
// - client_min_messages: decides which notices the client receives, and a response carrying a
//   notice is not stored, so a stored response would drop a notice this session should see.
// - DateStyle, IntervalStyle, TimeZone, search_path, client_encoding, bytea_output,
//   standard_conforming_strings, row_security, role, session_authorization,
//   default_transaction_*, work_mem (plan choice can reorder unordered results), ...

/// Whether `name` (lower-case) is on the documented exclusion lists.
pub fn is_excluded(name: &str) -> bool {
    EXCLUDED_SETTINGS.iter().any(|(n, _)| *n == name)
        || EXCLUDED_PREFIXES.iter().any(|(p, _)| name.starts_with(p))
}

/// Settings `RESET ALL` leaves alone (PostgreSQL's GUC_NO_RESET_ALL).
pub(super) const NO_RESET_ALL: &[&str] = &[
    "role",
    "session_authorization",
    "transaction_isolation",
    "transaction_read_only",
    "transaction_deferrable",
    "transaction_snapshot",
];

/// Appends `tag`, the length-prefixed name, and the value (1 + length-prefixed) or 0 for a
/// reset marker. Lengths are bounded by [`super::MAX_STATE_BYTES`], so `u32` never truncates.
pub(super) fn put(out: &mut Vec<u8>, tag: u8, name: &str, value: Option<&str>) {
    out.push(tag);
    put_str(out, name);
    match value {
        Some(v) => {
            out.push(1);
            put_str(out, v);
        }
        None => out.push(0),
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// The settings a transaction-mode list sets: `session` → `default_transaction_*` (SET SESSION
/// CHARACTERISTICS AS TRANSACTION), else `transaction_*` (SET TRANSACTION). `None` if the list
/// is not understood.
pub(super) fn transaction_modes(value: &str, session: bool) -> Option<Vec<(&'static str, String)>> {
    let (iso, ro, def) = if session {
        (
            "default_transaction_isolation",
            "default_transaction_read_only",
            "default_transaction_deferrable",
        )
    } else {
        (
            "transaction_isolation",
            "transaction_read_only",
            "transaction_deferrable",
        )
    };
    let spaced = value.replace(',', " , ");
    let mut words = spaced.split_whitespace().peekable();
    let mut out = Vec::new();
    while let Some(w) = words.next() {
        let w = w.to_ascii_lowercase();
        let mut next = || words.next().map(str::to_ascii_lowercase);
        match w.as_str() {
            "," => {}
            "isolation" => {
                if next()? != "level" {
                    return None;
                }
                let level = match next()?.as_str() {
                    "serializable" => "serializable",
                    "repeatable" => (next()? == "read").then_some("repeatable read")?,
                    "read" => match next()?.as_str() {
                        "committed" => "read committed",
                        "uncommitted" => "read uncommitted",
                        _ => return None,
                    },
                    _ => return None,
                };
                out.push((iso, level.to_owned()));
            }
            "read" => match next()?.as_str() {
                "only" => out.push((ro, "on".to_owned())),
                "write" => out.push((ro, "off".to_owned())),
                _ => return None,
            },
            "deferrable" => out.push((def, "on".to_owned())),
            "not" => {
                if next()? != "deferrable" {
                    return None;
                }
                out.push((def, "off".to_owned()));
            }
            "snapshot" if !session => {
                // The literal is kept raw (case matters in a snapshot id).
                let id = words.next()?;
                out.push(("transaction_snapshot", id.to_owned()));
            }
            _ => return None,
        }
    }
    (!out.is_empty()).then_some(out)
}
