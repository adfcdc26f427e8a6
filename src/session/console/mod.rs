//! The admin console: a client that connects to the virtual database `pgmemo` talks to pgmemo
//! itself, in PgBouncer's fashion (`psql -d pgmemo`, then `SHOW STATS`, `FLUSH`, ...). Its
//! login is checked by PostgreSQL exactly as a session's is (pgmemo relays the exchange to a
//! connection on the upstream URL's database and closes it once the role is known), or, with
//! `admin.password` set, by pgmemo itself (`login`: SCRAM-SHA-256); only roles listed in
//! `admin.roles` get in. Commands come as simple Queries; results are typed
//! rows ([`crate::admin::rows::Table`]), so scripts can read them. The extended protocol is refused (each
//! group gets one error, then its Sync's ReadyForQuery), as PgBouncer's console does.

pub mod command;
mod exec;
pub mod login;

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tracing::{debug, info};

use crate::context::AppContext;
use crate::error::ClientError;
use crate::net::Stream;
use crate::session::Signal;

pub use command::explain_cache;

/// The database name that reaches the console instead of PostgreSQL.
pub const DATABASE: &str = "pgmemo";

/// Largest message the console reads; a command is a line of text.
const MAX_MESSAGE: usize = 64 << 10;

/// Whether `user` may use the console under the running configuration.
pub fn admits(ctx: &AppContext, user: &str) -> bool {
    ctx.config().admin.roles.iter().any(|r| r == user)
}

/// Serves an authenticated admin (`user`) until it terminates, goes away, or pgmemo drains
/// for shutdown (the client then gets 57P01, as from PostgreSQL). The client has already had
/// its ReadyForQuery (relayed from PostgreSQL with the login).
pub async fn serve(ctx: Arc<AppContext>, mut client: Stream, user: String, drain: Signal) {
    info!(%user, "admin console session");
    // After an extended-protocol message was refused, everything up to Sync is discarded,
    // as PostgreSQL discards messages after an error in an extended group.
    let mut skipping_to_sync = false;
    loop {
        let read = tokio::select! {
            () = drain.token().cancelled() => {
                super::farewell(&mut client, &ClientError::admin_shutdown()).await;
                return;
            }
            r = crate::session::auth::read_frame(&mut client, MAX_MESSAGE) => r,
        };
        let frame = match read {
            Ok(f) => f,
            Err(crate::session::auth::ReadError::Frame(e)) => {
                debug!(error = %e, "admin console: bad frame");
                super::farewell(
                    &mut client,
                    &ClientError::console_message_too_large(MAX_MESSAGE),
                )
                .await;
                return;
            }
            Err(e) => {
                debug!(error = ?e, "admin console: client gone");
                return;
            }
        };
        let tag = frame.first().copied().unwrap_or_default();
        let mut out = BytesMut::new();
        match tag {
            b'X' => return,
            b'S' => {
                skipping_to_sync = false;
                ready(&mut out);
            }
            _ if skipping_to_sync => {}
            b'Q' => {
                if admits(&ctx, &user) {
                    exec::run(&ctx, &user, &query_text(&frame), &mut out).await;
                } else {
                    // Removed from admin.roles by a reload since it logged in.
                    out.extend_from_slice(&ClientError::console_not_admin(&user).encode());
                    ready(&mut out);
                    let _ = write(&mut client, &out).await;
                    return;
                }
                ready(&mut out);
            }
            // Flush; and COPY messages outside a COPY, which PostgreSQL ignores too.
            b'H' | b'd' | b'c' | b'f' => {}
            b'P' | b'B' | b'D' | b'E' | b'C' => {
                skipping_to_sync = true;
                out.extend_from_slice(&ClientError::console_extended_protocol().encode());
            }
            b'F' => {
                // A function call is not part of an extended group: no Sync follows.
                out.extend_from_slice(&ClientError::console_extended_protocol().encode());
                ready(&mut out);
            }
            other => {
                let e = ClientError::protocol_violation(format!(
                    "unexpected message type {:?} on the admin console",
                    char::from(other)
                ));
                super::farewell(&mut client, &e).await;
                return;
            }
        }
        if !out.is_empty() && write(&mut client, &out).await.is_err() {
            return;
        }
    }
}

/// Writes and flushes (over TLS the last bytes could otherwise stay in the session's buffer
/// while both sides wait).
async fn write(client: &mut Stream, bytes: &[u8]) -> std::io::Result<()> {
    client.write_all(bytes).await?;
    client.flush().await
}

/// The Query's text, without its terminating NUL; lossy, since commands are ASCII.
fn query_text(frame: &[u8]) -> String {
    let body = frame.get(5..).unwrap_or_default();
    let body = body.strip_suffix(b"\0").unwrap_or(body);
    String::from_utf8_lossy(body).into_owned()
}

fn ready(out: &mut BytesMut) {
    out.extend_from_slice(crate::protocol::response::READY_IDLE);
}
