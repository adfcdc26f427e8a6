//! Runs one console command: the rows it answers with, or its error. Every view reads state
//! pgmemo already keeps (configuration, change streams, the shared tier, the statistics);
//! the actions go through the same functions as the HTTP API and the signals.

use std::time::Duration;

use bytes::BytesMut;

use super::command::{self, Command, HELP};
use crate::admin::rows::{Table, Type, command_complete};
use crate::admin::{InvalidationHandle, Trigger};
use crate::context::AppContext;
use crate::error::ClientError;
use crate::invalidation::InvalidateError;
use crate::protocol::response::put_frame;
use crate::protocol::tags::backend;

/// How long `RELOAD` waits for the reload it asked for.
const RELOAD_WAIT: Duration = Duration::from_secs(10);

/// Runs `text` for admin `user`, appending its answer (rows and CommandComplete, or an
/// ErrorResponse) to `out`.
pub async fn run(ctx: &AppContext, user: &str, text: &str, out: &mut BytesMut) {
    let answer = match command::parse(text) {
        Ok(cmd) => execute(ctx, user, cmd).await,
        Err(e) => Err(ClientError::console_syntax(e.0)),
    };
    match answer {
        Ok(Answer::Rows(table, tag)) => table.encode(out, tag),
        Ok(Answer::Done(tag)) => command_complete(out, &tag),
        Ok(Answer::Empty) => put_frame(out, backend::EMPTY_QUERY_RESPONSE, &[]),
        Err(e) => out.extend_from_slice(&e.encode()),
    }
}

enum Answer {
    Rows(Table, &'static str),
    Done(String),
    /// EmptyQueryResponse.
    Empty,
}

async fn execute(ctx: &AppContext, user: &str, cmd: Command) -> Result<Answer, ClientError> {
    Ok(match cmd {
        Command::Empty => Answer::Empty,
        Command::Help => Answer::Rows(help(), "SHOW"),
        Command::ShowConfig => Answer::Rows(config(ctx), "SHOW"),
        Command::ShowCdc => Answer::Rows(crate::admin::views::cdc(ctx), "SHOW"),
        Command::ShowShared => Answer::Rows(crate::admin::views::shared(ctx), "SHOW"),
        Command::ShowQueries => Answer::Rows(crate::admin::views::queries(ctx), "SHOW"),
        Command::ShowTables => Answer::Rows(crate::admin::views::tables(ctx), "SHOW"),
        Command::ShowStats => Answer::Rows(crate::admin::views::stats(ctx), "SHOW"),
        Command::Flush => {
            let epoch = crate::admin::flush_all(&ctx.services.invalidator, Trigger::Console);
            tracing::info!(%user, epoch, "admin console: FLUSH");
            Answer::Done("FLUSH".into())
        }
        Command::InvalidateTable { database, table } => {
            let handle = InvalidationHandle {
                invalidator: ctx.services.invalidator.clone(),
                catalog: ctx.services.catalog.clone(),
            };
            let tags = crate::admin::invalidate_table(&handle, &database, &table, Trigger::Console)
                .await
                .map_err(|e| match e {
                    InvalidateError::NoSuchRelation { .. }
                    | InvalidateError::UnknownDatabase(_) => {
                        ClientError::console_unknown(e.to_string())
                    }
                    InvalidateError::Catalog(_) => ClientError::console_not_now(e.to_string()),
                })?;
            tracing::info!(%user, %database, %table, tags, "admin console: INVALIDATE TABLE");
            Answer::Done(format!("INVALIDATE {tags}"))
        }
        Command::Reload => match ctx.reloads.request(RELOAD_WAIT).await {
            Ok(()) => Answer::Done("RELOAD".into()),
            Err(Some(why)) => return Err(ClientError::console_reload_rejected(why)),
            Err(None) => {
                return Err(ClientError::console_not_now(
                    "the reload did not finish in time (or SIGHUP is not handled); see pgmemo's log",
                ));
            }
        },
        Command::ExplainCache => {
            return Err(ClientError::console_not_now(
                "EXPLAIN CACHE answers for a session's own database and settings: connect to \
                 the database the statement is for and run it there",
            ));
        }
    })
}

fn help() -> Table {
    let mut t = Table::new(&[("command", Type::Text), ("what", Type::Text)]);
    for (cmd, what) in HELP {
        t.push(vec![(*cmd).into(), (*what).into()]);
    }
    t
}

/// The running configuration as `key = value` rows (TOML paths; lists and tables of lists
/// as JSON), secrets redacted as `--print-config` does.
fn config(ctx: &AppContext) -> Table {
    let mut t = Table::new(&[("key", Type::Text), ("value", Type::Text)]);
    let value = serde_json::to_value(ctx.config().redacted()).unwrap_or_default();
    let mut rows = Vec::new();
    flatten("", &value, &mut rows);
    for (k, v) in rows {
        t.push(vec![k.into(), v.into()]);
    }
    t
}

fn flatten(prefix: &str, value: &serde_json::Value, out: &mut Vec<(String, String)>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        serde_json::Value::String(s) => out.push((prefix.to_owned(), s.clone())),
        serde_json::Value::Null => out.push((prefix.to_owned(), String::new())),
        other => out.push((prefix.to_owned(), other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_flattened_to_dotted_keys() {
        let v = serde_json::json!({"cache": {"ttl": "60s", "redis": null}, "rules": [{"table": "t"}], "n": 3});
        let mut rows = Vec::new();
        flatten("", &v, &mut rows);
        assert!(rows.contains(&("cache.ttl".into(), "60s".into())));
        assert!(rows.contains(&("cache.redis".into(), String::new())));
        assert!(rows.contains(&("rules".into(), r#"[{"table":"t"}]"#.into())));
        assert!(rows.contains(&("n".into(), "3".into())));
    }
}
