//! Why a catalog call failed. Every failure means "not cacheable" to the caller (and an
//! epoch bump where a write's reach is unknown); none is ever shown to a client.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog side connection to database {db:?} failed: {source}")]
    Connect {
        db: String,
        source: tokio_postgres::Error,
    },
    /// pgmemo's dialer (TCP or socket, then TLS as `upstream.url` says) failed.
    #[error("catalog side connection to database {db:?} failed: {source}")]
    Dial {
        db: String,
        source: crate::upstream::ConnectError,
    },
    #[error("catalog side connection to database {db:?} timed out after {timeout:?}")]
    ConnectTimeout { db: String, timeout: Duration },
    #[error("catalog call on database {db:?} timed out after {timeout:?}")]
    Timeout { db: String, timeout: Duration },
    #[error("catalog side connection was lost: {0}")]
    ConnectionLost(#[source] tokio_postgres::Error),
    #[error("catalog side connection closed unexpectedly")]
    Closed,
    #[error("catalog query failed: {0}")]
    Query(#[source] tokio_postgres::Error),
    #[error("unexpected catalog row: {0}")]
    Row(#[source] tokio_postgres::Error),
    #[error("invalid search_path {value:?}: {reason}")]
    SearchPath { value: String, reason: &'static str },
    #[error("role {0:?} does not exist")]
    UnknownRole(String),
    #[error("the catalog already tracks {limit} {what}")]
    TrackingFull { what: &'static str, limit: usize },
    #[error("the catalog serves at most {0} databases")]
    TooManyDatabases(usize),
}

impl CatalogError {
    /// Short label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            CatalogError::Connect { .. }
            | CatalogError::Dial { .. }
            | CatalogError::ConnectTimeout { .. } => "connect",
            CatalogError::Timeout { .. } => "timeout",
            CatalogError::ConnectionLost(_) | CatalogError::Closed => "connection_lost",
            CatalogError::Query(_) | CatalogError::Row(_) => "query",
            CatalogError::SearchPath { .. } => "search_path",
            CatalogError::UnknownRole(_) => "unknown_role",
            CatalogError::TrackingFull { .. } => "tracking_full",
            CatalogError::TooManyDatabases(_) => "too_many_databases",
        }
    }
}
