//! Errors pgmemo reports to clients: every SQLSTATE pgmemo originates and the wording of each
//! situation, in one place (sessions pick a constructor;
//! they never build codes themselves). Upstream errors are never rebuilt: they are relayed verbatim.

use bytes::Bytes;

use crate::protocol::response::{ErrorFields, error_response};

/// SQLSTATE codes pgmemo originates (PostgreSQL Appendix A).
pub mod sqlstate {
    pub const SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION: &str = "08001";
    pub const CONNECTION_FAILURE: &str = "08006";
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    pub const INVALID_AUTHORIZATION_SPECIFICATION: &str = "28000";
    pub const INVALID_PASSWORD: &str = "28P01";
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    pub const QUERY_CANCELED: &str = "57014";
    pub const IO_ERROR: &str = "58030";
    pub const LOCK_NOT_AVAILABLE: &str = "55P03";
    pub const SYNTAX_ERROR: &str = "42601";
    pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
    pub const UNDEFINED_OBJECT: &str = "42704";
    pub const OBJECT_NOT_IN_PREREQUISITE_STATE: &str = "55000";
    pub const CONFIG_FILE_ERROR: &str = "F0000";
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        }
    }
}

/// An error pgmemo itself sends to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientError {
    pub severity: Severity,
    pub code: &'static str,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl ClientError {
    pub fn fatal(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Fatal,
            code,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// The ErrorResponse frame.
    pub fn encode(&self) -> Bytes {
        error_response(&ErrorFields {
            severity: self.severity.as_str(),
            code: self.code,
            message: &self.message,
            detail: self.detail.as_deref(),
            hint: self.hint.as_deref(),
        })
    }

    /// "sorry, too many clients already", as PostgreSQL words it.
    pub fn too_many_connections() -> Self {
        Self::fatal(
            sqlstate::TOO_MANY_CONNECTIONS,
            "sorry, too many clients already",
        )
        .with_detail("pgmemo server.max_client_connections reached")
    }

    /// What PostgreSQL sends on smart/fast shutdown.
    pub fn admin_shutdown() -> Self {
        Self::fatal(
            sqlstate::ADMIN_SHUTDOWN,
            "terminating connection due to administrator command",
        )
        .with_detail("pgmemo is shutting down")
    }

    pub fn protocol_violation(message: impl Into<String>) -> Self {
        Self::fatal(sqlstate::PROTOCOL_VIOLATION, message)
    }

    /// A role not in `admin.roles` asked for the admin console (after PostgreSQL accepted
    /// its login).
    pub fn console_not_admin(user: &str) -> Self {
        Self::fatal(
            sqlstate::INSUFFICIENT_PRIVILEGE,
            format!("role \"{user}\" may not use the pgmemo admin console"),
        )
        .with_hint("list it in admin.roles in pgmemo's configuration")
    }

    /// The console's own login (`admin.password`) failed: a wrong password, or a role not
    /// in `admin.roles` (the same words for both, as PostgreSQL's).
    pub fn console_password_failed(user: &str) -> Self {
        Self::fatal(
            sqlstate::INVALID_PASSWORD,
            format!("password authentication failed for user \"{user}\""),
        )
    }

    /// The console's login exchange broke off (a malformed or unexpected message).
    pub fn console_login_protocol(why: impl std::fmt::Display) -> Self {
        Self::fatal(
            sqlstate::PROTOCOL_VIOLATION,
            format!("admin console login: {why}"),
        )
    }

    /// The admin console is off (`admin.roles` empty) and a client asked for it.
    pub fn console_disabled() -> Self {
        Self::fatal(
            sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
            "the pgmemo admin console is not enabled",
        )
        .with_hint("list the roles that may use it in admin.roles")
    }

    /// A replication connection asked for the admin console.
    pub fn console_replication() -> Self {
        Self::fatal(
            sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
            "the pgmemo admin console does not take replication connections",
        )
    }

    /// A console message over the console's bound.
    pub fn console_message_too_large(limit: usize) -> Self {
        Self::fatal(
            sqlstate::PROTOCOL_VIOLATION,
            format!("admin console messages are at most {limit} bytes"),
        )
    }

    /// The extended protocol on the admin console.
    pub fn console_extended_protocol() -> Self {
        Self::error(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "the pgmemo admin console speaks the simple query protocol only",
        )
        .with_hint("use psql, or a driver's simple-query call")
    }

    /// Not a console command (`message` says which and where the list is).
    pub fn console_syntax(message: impl Into<String>) -> Self {
        Self::error(sqlstate::SYNTAX_ERROR, message)
    }

    /// A console command that names something pgmemo does not know (a database, a table).
    pub fn console_unknown(message: impl Into<String>) -> Self {
        Self::error(sqlstate::UNDEFINED_OBJECT, message)
    }

    /// A console command that cannot run now (the catalog is unreachable, a reload was
    /// refused, the command needs another place).
    pub fn console_not_now(message: impl Into<String>) -> Self {
        Self::error(sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE, message)
    }

    /// `RELOAD` found the configuration invalid; the running one is kept.
    pub fn console_reload_rejected(why: impl Into<String>) -> Self {
        Self::error(
            sqlstate::CONFIG_FILE_ERROR,
            "configuration reload rejected; the running configuration is kept",
        )
        .with_detail(why)
    }

    /// A statement cancelled while it waited for another session's identical query (a
    /// CancelRequest), worded as PostgreSQL words a cancelled statement.
    pub fn canceled_by_user() -> Self {
        Self::error(
            sqlstate::QUERY_CANCELED,
            "canceling statement due to user request",
        )
    }

    /// A write-behind write whose journal record failed in a way that leaves it unknown
    /// whether it will be applied (as a connection lost during COMMIT leaves it unknown).
    pub fn write_behind_indeterminate(why: &str) -> Self {
        Self::error(
            sqlstate::IO_ERROR,
            "write-behind queue failed: the write may or may not be applied",
        )
        .with_detail(why.to_owned())
    }

    /// A write to a write-behind table that could not wait long enough for the writes
    /// queued before it: not run (it would overtake them).
    pub fn write_behind_barrier() -> Self {
        Self::error(
            sqlstate::LOCK_NOT_AVAILABLE,
            "the write-behind writes queued before this statement were not applied within \
             behind.barrier_timeout; the statement was not run",
        )
        .with_hint("retry it; see pgmemo_behind_oldest_seconds and the flusher's log".to_owned())
    }

    /// A statement whose wait for another session's identical query reached the session's
    /// `statement_timeout`, as PostgreSQL reports the timeout.
    pub fn canceled_by_statement_timeout() -> Self {
        Self::error(
            sqlstate::QUERY_CANCELED,
            "canceling statement due to statement timeout",
        )
    }

    fn error(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            ..Self::fatal(code, message)
        }
    }
}

impl ClientError {
    /// The upstream could not be reached for a new session.
    pub fn upstream_unreachable(addr: &str, why: &str) -> Self {
        Self::fatal(
            sqlstate::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
            format!("pgmemo could not connect to the upstream server at {addr}"),
        )
        .with_detail(why.to_owned())
    }

    /// The upstream connection broke during a session.
    pub fn upstream_lost(addr: &str, why: &str) -> Self {
        Self::fatal(
            sqlstate::CONNECTION_FAILURE,
            format!("pgmemo lost the connection to the upstream server at {addr}"),
        )
        .with_detail(why.to_owned())
    }

    /// `server.tls.require` and a client that did not negotiate TLS (PostgreSQL's words for
    /// a `hostssl`-only server).
    pub fn client_tls_required() -> Self {
        Self::fatal(
            sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
            "pgmemo accepts only TLS connections",
        )
        .with_hint("connect with sslmode=require (or stronger)")
    }

    pub fn authentication_timeout() -> Self {
        Self::fatal(sqlstate::PROTOCOL_VIOLATION, "authentication timed out")
            .with_detail("pgmemo server.startup_timeout elapsed")
    }

    /// GSSAPI, SSPI and friends: the exchange is bound to the client's own connection.
    pub fn unrelayable_auth_method(method: &str) -> Self {
        Self::fatal(
            sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
            format!(
                "authentication method {method} required by the upstream cannot be relayed through pgmemo"
            ),
        )
        .with_hint(
            "Use password, md5 or scram-sha-256 for connections from pgmemo's address in pg_hba.conf.",
        )
    }

    /// `cert` authentication: the client's certificate ends at pgmemo.
    pub fn cert_auth_unrelayable(upstream_message: &str) -> Self {
        Self::fatal(
            sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
            "certificate authentication required by the upstream cannot be relayed through pgmemo",
        )
        .with_detail(format!("upstream said: {upstream_message}"))
        .with_hint("The client's certificate ends at pgmemo; use password, md5 or scram-sha-256 for pgmemo's address in pg_hba.conf.")
    }

    /// SCRAM with TLS on both legs and different certificates (see README).
    pub fn channel_binding_unworkable(upstream_message: &str) -> Self {
        Self::fatal(
            sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
            "SCRAM channel binding cannot work through pgmemo with this TLS set-up",
        )
        .with_detail(format!(
            "pgmemo presents a different certificate from the upstream's, so it does not offer SCRAM-SHA-256-PLUS; upstream said: {upstream_message}"
        ))
        .with_hint("Configure [server.tls] with the upstream's certificate and key, connect with channel_binding=disable, or use a plain upstream leg.")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_fatal_with_code() {
        let e = ClientError::too_many_connections().encode();
        let s = String::from_utf8_lossy(&e);
        assert!(s.contains("53300"));
        assert!(s.contains("FATAL"));
    }
}
