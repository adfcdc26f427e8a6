//! The delay the change stream cannot measure: a walsender sends only WAL that is flushed,
//! and with `synchronous_commit = off` a commit is visible to other sessions (and
//! acknowledged) before its WAL is flushed. The WAL writer flushes it within
//! `wal_writer_delay`, and at most three times that in the worst case (PostgreSQL docs,
//! "Asynchronous Commit": it favours writing whole pages when busy). `pgmemo_cdc_lag_seconds`
//! starts counting only once the WAL is flushed, so this bound comes on top of it.
//!
//! Which value counts: what *other* sessions commit with, not what pgmemo's own side
//! connection has. `pg_settings.reset_val` is the server's value (postgresql.conf, command
//! line, `ALTER SYSTEM`) as a fresh session gets it, unaffected by a `SET` on the connection;
//! `boot_val` would ignore postgresql.conf altogether. `reset_val` does include
//! `ALTER ROLE/DATABASE ... SET` for pgmemo's own role and database, which hides the server
//! value: then (and when a query fails) the worst case is assumed. Other roles and databases
//! may set it off for themselves (`pg_db_role_setting`): any such setting also makes the
//! bound apply. A client can still `SET synchronous_commit = off` in its own session; the
//! README says so.

use std::time::Duration;

/// The PostgreSQL docs' worst case: three WAL writer rounds.
const WAL_WRITER_ROUNDS: u32 = 3;

/// `wal_writer_delay`'s compiled-in default, for when it cannot be read.
const DEFAULT_WAL_WRITER_DELAY: Duration = Duration::from_millis(200);

/// One query: the server value of `synchronous_commit` and where the session's value came
/// from, `wal_writer_delay` in milliseconds (a server-wide setting), and every role or
/// database setting of `synchronous_commit`.
pub const SETTINGS_QUERY: &str = "\
SELECT s.reset_val, s.source,
  (SELECT w.setting::int8 FROM pg_catalog.pg_settings w WHERE w.name = 'wal_writer_delay'),
  ARRAY(SELECT c FROM pg_catalog.pg_db_role_setting d, unnest(d.setconfig) c
        WHERE c ILIKE 'synchronous\\_commit=%')
FROM pg_catalog.pg_settings s WHERE s.name = 'synchronous_commit'";

/// What the server's settings say about commits reaching the stream late.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlushDelay {
    /// Some sessions commit without waiting for the flush (or pgmemo cannot rule it out).
    pub asynchronous: bool,
    pub wal_writer_delay: Duration,
    /// Why, for the log.
    pub reason: &'static str,
}

impl FlushDelay {
    /// The longest a commit can be visible before the stream can carry it.
    pub fn bound(&self) -> Duration {
        if self.asynchronous {
            self.wal_writer_delay * WAL_WRITER_ROUNDS
        } else {
            Duration::ZERO
        }
    }

    /// The worst case, for when the settings cannot be read.
    pub fn unknown(reason: &'static str) -> Self {
        Self {
            asynchronous: true,
            wal_writer_delay: DEFAULT_WAL_WRITER_DELAY,
            reason,
        }
    }

    /// From [`SETTINGS_QUERY`]'s columns: `reset_val` and `source` of `synchronous_commit`,
    /// `wal_writer_delay` in milliseconds, the `synchronous_commit=...` role/database entries.
    pub fn from_settings(
        reset_val: &str,
        source: &str,
        wal_writer_delay_ms: Option<i64>,
        overrides: &[String],
    ) -> Self {
        let wal_writer_delay = wal_writer_delay_ms
            .and_then(|ms| u64::try_from(ms).ok())
            .map_or(DEFAULT_WAL_WRITER_DELAY, Duration::from_millis);
        let (asynchronous, reason) = if is_off(reset_val) {
            (true, "synchronous_commit is off on the server")
        } else if matches!(source, "database" | "user" | "database user") {
            // pgmemo's own role/database setting hides the server's value.
            (
                true,
                "synchronous_commit of pgmemo's role or database hides the server's",
            )
        } else if overrides
            .iter()
            .filter_map(|entry| entry.split_once('='))
            .any(|(_, value)| is_off(value))
        {
            (true, "ALTER ROLE/DATABASE ... SET synchronous_commit = off")
        } else {
            (false, "synchronous_commit is on")
        };
        Self {
            asynchronous,
            wal_writer_delay,
            reason,
        }
    }
}

/// The spellings PostgreSQL accepts for `off` (the enum's boolean aliases, any case).
fn is_off(value: &str) -> bool {
    let v = value.trim().trim_matches('"').to_ascii_lowercase();
    matches!(v.as_str(), "off" | "false" | "no" | "0")
}

/// Reads the server's settings through `client`; the worst case if that fails.
pub async fn probe(client: &tokio_postgres::Client) -> FlushDelay {
    let row = match client.query_opt(SETTINGS_QUERY, &[]).await {
        Ok(Some(row)) => row,
        Ok(None) => return FlushDelay::unknown("synchronous_commit not in pg_settings"),
        Err(_) => return FlushDelay::unknown("the server's settings could not be read"),
    };
    let columns = (
        row.try_get::<_, String>(0),
        row.try_get::<_, String>(1),
        row.try_get::<_, Option<i64>>(2),
        row.try_get::<_, Vec<String>>(3),
    );
    match columns {
        (Ok(reset_val), Ok(source), Ok(delay), Ok(overrides)) => {
            FlushDelay::from_settings(&reset_val, &source, delay, &overrides)
        }
        _ => FlushDelay::unknown("unexpected pg_settings row"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS_200: Option<i64> = Some(200);

    #[test]
    fn off_on_the_server_bounds_by_three_wal_writer_rounds() {
        let d = FlushDelay::from_settings("off", "configuration file", Some(150), &[]);
        assert!(d.asynchronous);
        assert_eq!(d.bound(), Duration::from_millis(450));
    }

    #[test]
    fn on_everywhere_is_no_delay() {
        for value in ["on", "local", "remote_write", "remote_apply"] {
            let d = FlushDelay::from_settings(value, "default", MS_200, &[]);
            assert_eq!(d.bound(), Duration::ZERO, "{value}");
        }
        let on = ["synchronous_commit=on".to_owned()];
        assert_eq!(
            FlushDelay::from_settings("on", "default", MS_200, &on).bound(),
            Duration::ZERO
        );
    }

    #[test]
    fn a_role_or_database_that_turns_it_off_counts() {
        for entry in ["synchronous_commit=off", "synchronous_commit=FALSE"] {
            let d = FlushDelay::from_settings("on", "default", MS_200, &[entry.to_owned()]);
            assert_eq!(d.bound(), Duration::from_millis(600), "{entry}");
        }
    }

    #[test]
    fn pgmemos_own_override_hides_the_server_value() {
        let d = FlushDelay::from_settings("on", "user", MS_200, &[]);
        assert!(d.asynchronous);
    }

    #[test]
    fn unreadable_means_the_default_worst_case() {
        assert_eq!(
            FlushDelay::from_settings("off", "default", None, &[]).bound(),
            Duration::from_millis(600)
        );
        assert_eq!(FlushDelay::unknown("x").bound(), Duration::from_millis(600));
    }
}
