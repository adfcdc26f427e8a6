//! `/behind/dead-letters`: the write-behind writes the database refused (see
//! `behind::dead`). `GET` lists them as JSON; `POST .../{id}/retry` queues one again (it is
//! applied after what is queued now) and `POST .../{id}/drop` forgets it. 404 when
//! write-behind is not configured or the letter does not exist.

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AdminState;

pub async fn list(State(state): State<AdminState>) -> Response {
    match &state.behind {
        Some(b) => match serde_json::to_vec_pretty(&b.dead.list()) {
            Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
        },
        None => not_configured(),
    }
}

pub async fn retry(State(state): State<AdminState>, Path(id): Path<u64>) -> Response {
    let Some(b) = &state.behind else {
        return not_configured();
    };
    match b.retry_dead(id).await {
        Ok(true) => (StatusCode::OK, "queued again\n").into_response(),
        Ok(false) => (StatusCode::NOT_FOUND, "no such dead letter\n").into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
    }
}

pub async fn drop_letter(State(state): State<AdminState>, Path(id): Path<u64>) -> Response {
    let Some(b) = &state.behind else {
        return not_configured();
    };
    match b.dead.remove(id) {
        Ok(true) => (StatusCode::OK, "dropped\n").into_response(),
        Ok(false) => (StatusCode::NOT_FOUND, "no such dead letter\n").into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

fn not_configured() -> Response {
    (
        StatusCode::NOT_FOUND,
        "write-behind is not configured (behind.journal_dir or cache.redis)\n",
    )
        .into_response()
}
