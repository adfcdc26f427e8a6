//! Manual invalidation: `POST /invalidate` on the admin address (one relation, or everything),
//! `POST /flush` (everything) and the flush SIGUSR1 triggers. Both go through [`Invalidator`]; this module owns the
//! request format, the HTTP status of each failure, the log line and the
//! `pgmemo_admin_invalidations_total` counter.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::catalog::Catalog;
use crate::invalidation::{InvalidateError, Invalidator, parse_table};
use crate::telemetry::names;

use super::AdminState;

/// Largest request body accepted; a well-formed request is well under 1 KiB.
pub const MAX_BODY: usize = 64 << 10;

/// What the invalidation endpoint needs from the application.
#[derive(Clone)]
pub struct InvalidationHandle {
    pub invalidator: Arc<Invalidator>,
    pub catalog: Arc<Catalog>,
}

/// Who asked for a flush (log field only; the metric does not split by it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Http,
    Signal,
    Console,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Signal => "SIGUSR1",
            Self::Console => "console",
        }
    }
}

/// Flushes the whole cache (new epoch, entries freed), logs and counts it. Returns the epoch.
pub fn flush_all(invalidator: &Invalidator, trigger: Trigger) -> u64 {
    let epoch = invalidator.flush_all();
    count("all", true);
    info!(
        epoch,
        via = trigger.as_str(),
        "manual invalidation: whole cache flushed"
    );
    epoch
}

/// Bumps one table's version (a manual invalidation), logs and counts it: the number of tags
/// bumped, or why nothing was.
pub async fn invalidate_table(
    handle: &InvalidationHandle,
    database: &str,
    table: &str,
    trigger: Trigger,
) -> Result<usize, InvalidateError> {
    let outcome = handle
        .invalidator
        .invalidate_table(&handle.catalog, database, table)
        .await;
    match &outcome {
        Ok(tags) => {
            count("table", true);
            info!(%database, %table, tags, via = trigger.as_str(), "manual invalidation: relation bumped");
        }
        Err(e) => {
            count("table", false);
            warn!(%database, %table, error = %e, via = trigger.as_str(), "manual invalidation failed");
        }
    }
    outcome
}

fn count(scope: &'static str, ok: bool) {
    let result = if ok { "ok" } else { "error" };
    metrics::counter!(names::ADMIN_INVALIDATIONS, "scope" => scope, "result" => result)
        .increment(1);
}

/// The body: `{"all": true}` or `{"database": "app", "table": "public.accounts"}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    all: Option<bool>,
    database: Option<String>,
    table: Option<String>,
}

/// A validated request.
#[derive(Debug, PartialEq, Eq)]
enum Scope {
    All,
    Table { database: String, table: String },
}

const USAGE: &str =
    r#"expected {"all": true} or {"database": "<name>", "table": "<name or schema.name>"}"#;

/// Why a body is refused (400), without I/O.
fn parse(body: &[u8]) -> Result<Scope, String> {
    let req: Request =
        serde_json::from_slice(body).map_err(|e| format!("invalid JSON body ({e}); {USAGE}"))?;
    match req {
        Request {
            all: Some(true),
            database: None,
            table: None,
        } => Ok(Scope::All),
        Request {
            all: Some(true), ..
        } => Err(format!(
            "\"all\": true cannot be combined with \"database\" or \"table\"; {USAGE}"
        )),
        Request {
            all: None | Some(false),
            database: Some(database),
            table: Some(table),
        } => {
            if database.is_empty() {
                return Err("\"database\" must not be empty".to_owned());
            }
            if parse_table(&table).is_none() {
                return Err(format!(
                    "\"table\" {table:?} is not a table name (name or schema.name; quote \
                     identifiers with \"\" as in SQL)"
                ));
            }
            Ok(Scope::Table { database, table })
        }
        Request {
            database: None,
            table: Some(_),
            ..
        } => Err(format!("missing \"database\"; {USAGE}")),
        Request {
            database: Some(_),
            table: None,
            ..
        } => Err(format!("missing \"table\"; {USAGE}")),
        Request { .. } => Err(USAGE.to_owned()),
    }
}

#[derive(Serialize)]
#[serde(tag = "invalidated", rename_all = "lowercase")]
enum Done<'a> {
    All {
        epoch: u64,
    },
    Table {
        database: &'a str,
        table: &'a str,
        tags: usize,
    },
}

#[derive(Serialize)]
struct Failure<'a> {
    error: &'a str,
}

/// `body` as a JSON response that no cache may keep.
pub(super) fn json<T: Serialize>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_string(body) {
        Ok(text) => (
            status,
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            text,
        )
            .into_response(),
        // Strings and integers always serialise; the status still tells the caller.
        Err(e) => (status, format!("could not encode the response: {e}\n")).into_response(),
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    json(status, &Failure { error: message })
}

/// The body of a POST, or the status and message refusing it: over MAX_BODY (413), a broken
/// body stream (400). Its `Content-Type` was checked before (`guard`: only
/// `application/json`, which a web page cannot send cross-site).
fn json_body(body: Result<Bytes, BytesRejection>) -> Result<Bytes, (StatusCode, String)> {
    body.map_err(|rejection| (rejection.status(), rejection.body_text()))
}

/// `POST /invalidate`.
pub(super) async fn invalidate(
    State(state): State<AdminState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match json_body(body) {
        Ok(b) => b,
        Err((status, message)) => return error(status, &message),
    };
    let scope = match parse(&body) {
        Ok(s) => s,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    let handle = &state.invalidation;
    match scope {
        Scope::All => {
            let epoch = flush_all(&handle.invalidator, Trigger::Http);
            json(StatusCode::OK, &Done::All { epoch })
        }
        Scope::Table { database, table } => {
            match invalidate_table(handle, &database, &table, Trigger::Http).await {
                Ok(tags) => json(
                    StatusCode::OK,
                    &Done::Table {
                        database: &database,
                        table: &table,
                        tags,
                    },
                ),
                Err(e) => error(status_of(&e), &e.to_string()),
            }
        }
    }
}

/// `POST /flush`: empties the whole cache (a new epoch; every instance's and the shared
/// tier's entries too when Redis is configured), like `{"all": true}` on `/invalidate`. The
/// body may be empty or `{}`; it must be sent as `application/json` all the same (the guard
/// refuses any other type: a web page cannot send that one cross-site).
pub(super) async fn flush(
    State(state): State<AdminState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match json_body(body) {
        Ok(b) => b,
        Err((status, message)) => return error(status, &message),
    };
    if !body.trim_ascii().is_empty() && body.trim_ascii() != b"{}" {
        return error(StatusCode::BAD_REQUEST, "expected an empty body or {}");
    }
    let epoch = flush_all(&state.invalidation.invalidator, Trigger::Http);
    json(
        StatusCode::OK,
        &serde_json::json!({ "flushed": true, "epoch": epoch }),
    )
}

/// 404 for what does not exist (as far as pgmemo can know); 503 when the catalog could not be
/// consulted — retrying later may succeed, and nothing was invalidated.
fn status_of(e: &InvalidateError) -> StatusCode {
    match e {
        InvalidateError::NoSuchRelation { .. } | InvalidateError::UnknownDatabase(_) => {
            StatusCode::NOT_FOUND
        }
        InvalidateError::Catalog(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(database: &str, table: &str) -> Scope {
        Scope::Table {
            database: database.to_owned(),
            table: table.to_owned(),
        }
    }

    #[test]
    fn accepts_the_two_documented_shapes() {
        assert_eq!(parse(br#"{"all": true}"#), Ok(Scope::All));
        assert_eq!(
            parse(br#"{"database": "app", "table": "public.accounts"}"#),
            Ok(table("app", "public.accounts"))
        );
        assert_eq!(
            parse(br#"{"all": false, "database": "app", "table": "\"Odd.Name\""}"#),
            Ok(table("app", "\"Odd.Name\""))
        );
    }

    #[test]
    fn refuses_everything_else_with_a_reason() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "invalid JSON"),
            (b"not json", "invalid JSON"),
            (b"[]", "invalid JSON"),
            (br#"{"all": "yes"}"#, "invalid JSON"),
            (br#"{"all": true, "extra": 1}"#, "unknown field"),
            (br#"{}"#, "expected"),
            (br#"{"all": false}"#, "expected"),
            (br#"{"table": "t"}"#, "missing \"database\""),
            (br#"{"database": "app"}"#, "missing \"table\""),
            (br#"{"all": true, "database": "app"}"#, "cannot be combined"),
            (br#"{"database": "", "table": "t"}"#, "must not be empty"),
            (
                br#"{"database": "app", "table": "a.b.c"}"#,
                "not a table name",
            ),
            (br#"{"database": "app", "table": ""}"#, "not a table name"),
            (br#"{"database": "app", "table": 5}"#, "invalid JSON"),
        ];
        for (body, want) in cases {
            let got = parse(body).expect_err(&String::from_utf8_lossy(body));
            assert!(
                got.contains(want),
                "{:?}: {got}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
