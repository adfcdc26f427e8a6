//! Telemetry in one place: every metric name pgmemo exports, their descriptions, the Prometheus
//! recorder, and tracing initialisation.

pub mod recorder;

use metrics::{Unit, describe_counter, describe_gauge};

/// Registers a description (and unit) for every metric in [`names`], so `/metrics` carries
/// `# HELP` lines. Called by [`recorder::install`]; descriptions given before a recorder is
/// installed are lost, so this runs right after installation.
pub fn describe_all() {
    describe_counter!(
        names::CLIENT_CONNECTIONS_TOTAL,
        "Client connections accepted."
    );
    describe_gauge!(
        names::CLIENT_CONNECTIONS_ACTIVE,
        "Client sessions currently open."
    );
    describe_counter!(
        names::CLIENT_CONNECTIONS_REJECTED,
        "Client connections refused or dropped before a session started, by reason."
    );
    describe_counter!(
        names::CLIENT_BYTES_RECEIVED,
        Unit::Bytes,
        "Bytes received from clients."
    );
    describe_counter!(
        names::CLIENT_BYTES_SENT,
        Unit::Bytes,
        "Bytes sent to clients."
    );
    describe_counter!(
        names::STATEMENTS_TOTAL,
        "Statements relayed (Query, Execute or FunctionCall messages), by protocol."
    );
    describe_counter!(
        names::UPSTREAM_CONNECT_ERRORS,
        "Failed upstream connection attempts, by kind."
    );
    describe_counter!(
        names::CLIENT_PROTOCOL_ERRORS,
        "Client frames refused as malformed or oversized (08P01)."
    );
    describe_counter!(
        names::CANCEL_REQUESTS,
        "CancelRequests received, by result."
    );
    describe_counter!(names::CONFIG_RELOADS, "Configuration reloads, by result.");
}

pub mod names {
    //! Metric names (Prometheus). Labels are documented beside each name.
    /// counter: client connections accepted.
    pub const CLIENT_CONNECTIONS_TOTAL: &str = "pgmemo_client_connections_total";
    /// gauge: client sessions currently open.
    pub const CLIENT_CONNECTIONS_ACTIVE: &str = "pgmemo_client_connections_active";
    /// counter, label `reason` (`max_connections`, `startup_timeout`, `protocol`, `tls`):
    /// client connections refused or dropped before a session started.
    pub const CLIENT_CONNECTIONS_REJECTED: &str = "pgmemo_client_connections_rejected_total";
    /// counter: bytes received from clients.
    pub const CLIENT_BYTES_RECEIVED: &str = "pgmemo_client_bytes_received_total";
    /// counter: bytes sent to clients.
    pub const CLIENT_BYTES_SENT: &str = "pgmemo_client_bytes_sent_total";
    /// counter, label `protocol` (`simple`, `extended`, `function_call`): statements relayed
    /// (one per Query message, Execute message or FunctionCall).
    pub const STATEMENTS_TOTAL: &str = "pgmemo_statements_total";
    /// counter, label `kind` (`tcp`, `tls`, `timeout`): failed upstream connection attempts.
    pub const UPSTREAM_CONNECT_ERRORS: &str = "pgmemo_upstream_connect_errors_total";
    /// counter: client frames refused as malformed or oversized (08P01).
    pub const CLIENT_PROTOCOL_ERRORS: &str = "pgmemo_client_protocol_errors_total";
    /// counter, label `result` (`forwarded`, `unknown_key`, `failed`): CancelRequests.
    pub const CANCEL_REQUESTS: &str = "pgmemo_cancel_requests_total";
    /// counter, label `result` (`ok`, `error`): configuration reloads (SIGHUP).
    pub const CONFIG_RELOADS: &str = "pgmemo_config_reloads_total";
}
