//! The settings probe: one simple Query pgmemo runs on a session's own upstream connection
//! while the session is idle — at start and after anything that changed settings — to learn
//! what name resolution and the fingerprint need (current role, search_path, database OID,
//! every non-default setting, whether the session has a temporary schema). Its response is
//! consumed here and never reaches the client.

use bytes::Bytes;

use crate::protocol::fields::Reader;
use crate::protocol::tags::backend;

/// Non-default settings plus the facts settings do not show, as (name, value) rows. Names
/// starting with `.` are facts, not settings.
const PROBE_SQL: &str = "SELECT name, setting FROM pg_catalog.pg_settings WHERE source <> 'default' \
UNION ALL SELECT '.current_user', current_user::text \
UNION ALL SELECT '.session_user', session_user::text \
UNION ALL SELECT '.database', pg_catalog.current_database()::text \
UNION ALL SELECT '.database_oid', (SELECT oid::text FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database()) \
UNION ALL SELECT '.search_path', pg_catalog.current_setting('search_path') \
UNION ALL SELECT '.pgmemo_cache', coalesce(pg_catalog.current_setting('pgmemo.cache', true), '') \
UNION ALL SELECT '.temp_schema', (pg_catalog.pg_my_temp_schema() <> 0)::text";

/// Custom (dotted) settings never appear in pg_settings, yet RLS policies, views and
/// functions read them (`current_setting('app.tenant')`), and code may set them
/// (`set_config`). The probe reads every dotted name that policies, user functions and user
/// views mention as a literal (found once per catalog generation on a side connection: see
/// `catalog::settings`), plus the names this session SET, into the fingerprint. A name
/// computed at run time (`current_setting(var)`) cannot be found: see the README.
const CUSTOM_SQL_HEAD: &str = " UNION ALL SELECT '.custom:' || n, \
coalesce(pg_catalog.current_setting(n, true), '(unset)') FROM pg_catalog.unnest(ARRAY[";

/// Names this session SET are added to what the catalog mentions (at most this many).
pub const MAX_SESSION_NAMES: usize = 64;

/// Most rows read from a probe (a session with more non-default settings is not cached).
const MAX_ROWS: usize = 2048;

/// The messages carrying the probe: the settings and facts, and the current value of each
/// custom setting the catalog mentions (`catalog_names`) or the session SET
/// (`session_names`, lower-case dotted names as the analysis reports them).
pub fn query(catalog_names: &[String], session_names: &[String]) -> Bytes {
    extended(&sql(catalog_names, session_names))
}

/// The probe as one sync group on the unnamed statement, for a connection of pgmemo's own
/// (the background refresher's: no client statement to keep). Its answer ends with one
/// ReadyForQuery.
pub fn unnamed(catalog_names: &[String]) -> Bytes {
    use crate::protocol::response::put_frame as frame;
    let sql = sql(catalog_names, &[]);
    let mut out = Vec::with_capacity(sql.len() + 64);
    frame(&mut out, b'P', &[b"\0", sql.as_bytes(), b"\0", &[0, 0]]);
    frame(&mut out, b'B', &[b"\0\0", &[0, 0, 0, 0, 0, 0]]);
    frame(&mut out, b'E', &[b"\0", &0i32.to_be_bytes()]);
    frame(&mut out, b'S', &[]);
    Bytes::from(out)
}

fn sql(catalog_names: &[String], session_names: &[String]) -> String {
    let mut names: Vec<&String> = catalog_names
        .iter()
        .chain(session_names.iter().take(MAX_SESSION_NAMES))
        .filter(|n| n.contains('.') && !n.contains('\0'))
        .collect();
    names.sort();
    names.dedup();
    let mut sql = String::with_capacity(PROBE_SQL.len() + 128 + names.len() * 32);
    sql.push_str(PROBE_SQL);
    if !names.is_empty() {
        sql.push_str(CUSTOM_SQL_HEAD);
        for (i, n) in names.iter().enumerate() {
            if i > 0 {
                sql.push(',');
            }
            sql.push('\'');
            sql.push_str(&n.replace('\'', "''"));
            sql.push('\'');
        }
        sql.push_str("]::text[]) n");
    }
    sql
}

/// Name of the probe's own statement and portal (NUL-terminated). The extended protocol is
/// used because a simple Query would destroy the session's unnamed prepared statement. The
/// name carries 64 random bits drawn once per process: the probe's Close (which runs even
/// when the probe fails) must never close a statement of the client's, so no client may
/// guess it.
static PROBE_STATEMENT: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
    let mut bits = [0u8; 8];
    // Without randomness, the process id and the time still make a name no client uses.
    if getrandom::fill(&mut bits).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default();
        bits = (t ^ u64::from(std::process::id()).rotate_left(32)).to_be_bytes();
    }
    let mut name = format!("__pgmemo_probe_{:016x}", u64::from_be_bytes(bits)).into_bytes();
    name.push(0);
    name
});

/// Parse + Bind + Execute + Sync of `sql` under [`PROBE_STATEMENT`], then Close + Sync, all
/// frames in one buffer. The Close has a Sync of its own so that it runs even when the probe
/// fails (after an error the server skips to the next Sync): the statement never outlives
/// the probe, so `pg_prepared_statements` never shows it and the next probe cannot find it
/// "already exists". At an idle point no portal is open, so nothing of the client's is
/// touched.
fn extended(sql: &str) -> Bytes {
    use crate::protocol::response::put_frame as frame;
    let mut out = Vec::with_capacity(sql.len() + 128);
    let name: &[u8] = &PROBE_STATEMENT;
    // Parse: name, query, no parameter types.
    frame(
        &mut out,
        b'P',
        &[name, sql.as_bytes(), b"\0", &0i16.to_be_bytes()],
    );
    // Bind: same-named portal, statement, no parameter formats/values, no result formats.
    frame(
        &mut out,
        b'B',
        &[
            name,
            name,
            &0i16.to_be_bytes(),
            &0i16.to_be_bytes(),
            &0i16.to_be_bytes(),
        ],
    );
    // Execute: all rows.
    frame(&mut out, b'E', &[name, &0i32.to_be_bytes()]);
    frame(&mut out, b'S', &[]);
    // Close the statement (the portal ended with the implicit transaction), under its own
    // Sync.
    frame(&mut out, b'C', &[b"S", name]);
    frame(&mut out, b'S', &[]);
    Bytes::from(out)
}

pub use crate::catalog::login::ProbeResult;

/// ReadyForQuery messages a probe's response ends with (one per Sync it sends).
const PROBE_SYNCS: u8 = 2;

/// Collects the probe's response frames (everything up to its last ReadyForQuery).
#[derive(Debug, Default)]
pub struct ProbeReader {
    rows: Vec<(String, String)>,
    failed: bool,
    ready_seen: u8,
}

impl ProbeReader {
    /// One of the probe's ReadyForQuery messages; true at the last one (the probe is over).
    pub fn on_ready(&mut self) -> bool {
        self.ready_seen = self.ready_seen.saturating_add(1);
        self.ready_seen >= PROBE_SYNCS
    }

    /// One complete backend frame of the probe's response (ReadyForQuery excluded).
    pub fn on_frame(&mut self, tag: u8, frame: &[u8]) {
        match tag {
            backend::DATA_ROW => {
                if self.rows.len() >= MAX_ROWS {
                    self.failed = true;
                    return;
                }
                match data_row_pair(frame) {
                    Some(pair) => self.rows.push(pair),
                    None => self.failed = true,
                }
            }
            backend::ERROR_RESPONSE => self.failed = true,
            _ => {}
        }
    }

    /// Marks the probe unusable (e.g. a frame too large to inspect).
    pub fn fail(&mut self) {
        self.failed = true;
    }

    /// The result, once its ReadyForQuery arrived; `None` if it failed.
    pub fn finish(self) -> Option<ProbeResult> {
        if self.failed {
            return None;
        }
        let mut r = ProbeResult {
            standard_conforming_strings: true,
            client_encoding: "UTF8".to_owned(),
            ..ProbeResult::default()
        };
        let mut have_oid = false;
        for (name, value) in self.rows {
            match name.as_str() {
                ".current_user" => {
                    r.settings.push(("current_user".into(), value.clone()));
                    r.current_user = value;
                }
                ".session_user" => r.settings.push(("session_user".into(), value)),
                ".database" => {
                    r.settings.push(("current_database".into(), value.clone()));
                    r.database = value;
                }
                ".database_oid" => {
                    r.db_oid = value.parse().ok()?;
                    have_oid = true;
                }
                ".search_path" => r.search_path = value,
                ".pgmemo_cache" => {
                    r.opted_out = matches!(
                        value.trim().to_ascii_lowercase().as_str(),
                        "off" | "false" | "0" | "no" | "n" | "f" | "of"
                    );
                }
                ".temp_schema" => r.has_temp = value == "true",
                custom if custom.starts_with(".custom:") => {
                    let name = custom.trim_start_matches(".custom:").to_ascii_lowercase();
                    r.settings.push((name, value));
                }
                _ => {
                    if name == "client_encoding" {
                        r.client_encoding = value.clone();
                    }
                    if name == "standard_conforming_strings" {
                        r.standard_conforming_strings = value == "on";
                    }
                    r.settings.push((name, value));
                }
            }
        }
        (have_oid && !r.current_user.is_empty() && !r.database.is_empty()).then_some(r)
    }
}

/// A two-column text DataRow as (name, value); NULL reads as empty.
fn data_row_pair(frame: &[u8]) -> Option<(String, String)> {
    let mut r = Reader::body(frame);
    if r.i16()? != 2 {
        return None;
    }
    let mut col = || -> Option<String> {
        let len = r.i32()?;
        if len < 0 {
            return Some(String::new());
        }
        let bytes = r.bytes(usize::try_from(len).ok()?)?;
        Some(String::from_utf8_lossy(bytes).into_owned())
    };
    let a = col()?;
    let b = col()?;
    Some((a, b))
}

/// Encodings in which bytes >= 0x80 never stand for ASCII (what `crate::sql` requires).
pub fn encoding_is_safe(name: &str) -> bool {
    let n = name.to_ascii_uppercase().replace(['-', '_'], "");
    !matches!(
        n.as_str(),
        "SJIS"
            | "SHIFTJIS"
            | "BIG5"
            | "GBK"
            | "UHC"
            | "GB18030"
            | "JOHAB"
            | "SHIFTJIS2004"
            | "WIN932"
            | "WIN936"
            | "WIN949"
            | "WIN950"
            | "CP932"
            | "CP936"
            | "CP949"
            | "CP950"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(a: &str, b: Option<&str>) -> Vec<u8> {
        let mut body = vec![0, 2];
        body.extend_from_slice(&(a.len() as i32).to_be_bytes());
        body.extend_from_slice(a.as_bytes());
        match b {
            Some(b) => {
                body.extend_from_slice(&(b.len() as i32).to_be_bytes());
                body.extend_from_slice(b.as_bytes());
            }
            None => body.extend_from_slice(&(-1i32).to_be_bytes()),
        }
        let mut f = vec![b'D'];
        f.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        f.extend_from_slice(&body);
        f
    }

    #[test]
    fn probe_rows_become_facts_and_settings() {
        let mut p = ProbeReader::default();
        for (a, b) in [
            ("search_path", Some("s1, public")),
            ("client_encoding", Some("UTF8")),
            (".current_user", Some("alice")),
            (".session_user", Some("alice")),
            (".database", Some("app")),
            (".database_oid", Some("16384")),
            (".search_path", Some("s1, public")),
            (".pgmemo_cache", Some("off")),
            (".temp_schema", Some("false")),
        ] {
            p.on_frame(b'D', &row(a, b));
        }
        let r = p.finish().unwrap();
        assert_eq!(r.current_user, "alice");
        assert_eq!(r.db_oid, 16384);
        assert_eq!(r.search_path, "s1, public");
        assert!(r.opted_out);
        assert!(!r.has_temp);
        assert!(
            r.settings
                .contains(&("current_user".into(), "alice".into()))
        );
        assert!(
            r.settings
                .contains(&("search_path".into(), "s1, public".into()))
        );
    }

    /// The frames of a probe message, as (tag, body) pairs.
    fn frames(mut b: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        while b.len() >= 5 {
            let len = u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
            out.push((b[0], b[5..1 + len].to_vec()));
            b = &b[1 + len..];
        }
        out
    }

    #[test]
    fn the_probe_closes_its_statement_under_a_sync_of_its_own() {
        let tags: Vec<u8> = frames(&query(&[], &[])).iter().map(|(t, _)| *t).collect();
        // An error in Parse, Bind or Execute skips to the first Sync; the Close after it
        // still runs, so the statement never outlives the probe.
        assert_eq!(tags, b"PBESCS");
        let mut r = ProbeReader::default();
        assert!(
            !r.on_ready(),
            "the first ReadyForQuery ends the query, not the probe"
        );
        assert!(r.on_ready());
    }

    #[test]
    fn an_error_or_missing_facts_fail_the_probe() {
        let mut p = ProbeReader::default();
        p.on_frame(b'E', b"E\0\0\0\x04");
        assert!(p.finish().is_none());
        let mut p = ProbeReader::default();
        p.on_frame(b'D', &row(".current_user", Some("a")));
        assert!(p.finish().is_none(), "no database oid");
        let mut p = ProbeReader::default();
        p.on_frame(b'D', b"D\0\0\0\x06\0\x07");
        assert!(p.finish().is_none(), "malformed row");
    }

    #[test]
    fn multibyte_encodings_with_ascii_trail_bytes_are_unsafe() {
        assert!(encoding_is_safe("UTF8"));
        assert!(encoding_is_safe("LATIN1"));
        assert!(!encoding_is_safe("SJIS"));
        assert!(!encoding_is_safe("gb18030"));
    }
}
