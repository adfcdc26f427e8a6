//! Errors pgmemo reports to clients, and the one mapping from internal error types to a
//! SQLSTATE + ErrorResponse. Upstream errors are never rebuilt here: they are relayed verbatim.

use bytes::Bytes;

use crate::protocol::response::{ErrorFields, error_response};

/// SQLSTATE codes pgmemo originates (PostgreSQL Appendix A).
pub mod sqlstate {
    pub const SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION: &str = "08001";
    pub const CONNECTION_FAILURE: &str = "08006";
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    pub const INVALID_AUTHORIZATION_SPECIFICATION: &str = "28000";
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    pub const QUERY_CANCELED: &str = "57014";
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
}

/// The one mapping from internal errors to what the client is told. `None` means the client
/// is gone (or already told), so nothing is sent.
pub trait ToClientError {
    fn to_client_error(&self) -> Option<ClientError>;
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
