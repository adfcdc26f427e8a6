//! Client-side helpers: tokio-postgres configs and connections to any address (a
//! `PgServer` directly or a `Proxy`), with the connection task spawned, optionally
//! forwarding asynchronous messages (NOTIFY, notices) to the test.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use tokio::sync::mpsc;
use tokio_postgres::error::DbError;
use tokio_postgres::{AsyncMessage, Client, Config, NoTls};

use super::tls::TestCa;

/// How many asynchronous messages may wait for a test before the connection task
/// stops reading (bounded so a test that never drains cannot grow memory).
const ASYNC_MESSAGE_CAPACITY: usize = 1024;

/// A tokio-postgres config for `addr`. An empty `password` means "send none" (trust).
pub fn pg_config(addr: SocketAddr, user: &str, password: &str, db: &str) -> Config {
    let mut config = Config::new();
    config
        .host(addr.ip().to_string())
        .port(addr.port())
        .user(user)
        .dbname(db)
        .connect_timeout(Duration::from_secs(10));
    if !password.is_empty() {
        config.password(password);
    }
    config
}

/// Connects without TLS and spawns the connection task; panics with the error on failure.
pub async fn connect(addr: SocketAddr, user: &str, password: &str, db: &str) -> Client {
    try_connect(addr, user, password, db)
        .await
        .unwrap_or_else(|e| panic!("connect {user}@{addr}/{db}: {e} ({e:?})"))
}

/// Connects without TLS and spawns the connection task, returning the error to the test.
pub async fn try_connect(
    addr: SocketAddr,
    user: &str,
    password: &str,
    db: &str,
) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = pg_config(addr, user, password, db).connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("test connection ended with error: {e}");
        }
    });
    Ok(client)
}

/// Connects over TLS (sslmode=require, server verified against `ca`).
pub async fn try_connect_tls(
    addr: SocketAddr,
    user: &str,
    password: &str,
    db: &str,
    ca: &TestCa,
) -> Result<Client, tokio_postgres::Error> {
    let mut config = pg_config(addr, user, password, db);
    config.ssl_mode(tokio_postgres::config::SslMode::Require);
    let (client, connection) = config.connect(ca.make_tls_connect()).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("test TLS connection ended with error: {e}");
        }
    });
    Ok(client)
}

/// Asynchronous messages (notifications, notices) received on one connection.
pub struct AsyncMessages {
    rx: mpsc::Receiver<AsyncMessage>,
}

impl AsyncMessages {
    /// The next message, or `None` if none arrives within `timeout` or the connection ended.
    pub async fn recv_timeout(&mut self, timeout: Duration) -> Option<AsyncMessage> {
        tokio::time::timeout(timeout, self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// Waits for the next notification, skipping notices; panics if none within `timeout`.
    pub async fn expect_notification(&mut self, timeout: Duration) -> tokio_postgres::Notification {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv_timeout(left).await {
                Some(AsyncMessage::Notification(n)) => return n,
                Some(_) => continue,
                None => panic!("no notification within {timeout:?}"),
            }
        }
    }

    /// Waits for the next notice, skipping notifications; panics if none within `timeout`.
    pub async fn expect_notice(&mut self, timeout: Duration) -> DbError {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv_timeout(left).await {
                Some(AsyncMessage::Notice(n)) => return n,
                Some(_) => continue,
                None => panic!("no notice within {timeout:?}"),
            }
        }
    }
}

/// Connects like [`connect`] but drives the connection through `poll_message`, so
/// NotificationResponse and NoticeResponse reach the test instead of being dropped.
pub async fn connect_with_messages(
    addr: SocketAddr,
    user: &str,
    password: &str,
    db: &str,
) -> (Client, AsyncMessages) {
    let (client, mut connection) = pg_config(addr, user, password, db)
        .connect(NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {user}@{addr}/{db}: {e} ({e:?})"));
    let (tx, rx) = mpsc::channel(ASYNC_MESSAGE_CAPACITY);
    tokio::spawn(async move {
        let mut stream = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = stream.next().await {
            match message {
                Ok(message) => {
                    if tx.send(message).await.is_err() {
                        // The test dropped its receiver; keep driving the connection.
                        continue;
                    }
                }
                Err(e) => {
                    eprintln!("test connection ended with error: {e}");
                    break;
                }
            }
        }
    });
    (client, AsyncMessages { rx })
}

/// The server error inside a tokio-postgres error; panics (with the error) if it is not one.
pub fn db_error(e: &tokio_postgres::Error) -> &DbError {
    e.as_db_error()
        .unwrap_or_else(|| panic!("expected a server error, got: {e} ({e:?})"))
}

/// The whole output of a `COPY ... TO STDOUT`.
pub async fn copy_out_all(client: &Client, sql: &str) -> Vec<u8> {
    let stream = client
        .copy_out(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let chunks: Vec<bytes::Bytes> = stream
        .try_collect()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    chunks.concat()
}

/// Sleeps until `done` bytes are due at `rate` bytes/s since `started`: paces a
/// deliberately slow reader.
pub async fn pace(started: std::time::Instant, done: usize, rate: f64) {
    let due = Duration::from_secs_f64(done as f64 / rate);
    if let Some(wait) = due.checked_sub(started.elapsed()) {
        tokio::time::sleep(wait).await;
    }
}

/// `batch_execute` that panics with the SQL on error (test shorthand).
pub async fn batch(client: &Client, sql: &str) {
    if let Err(e) = client.batch_execute(sql).await {
        panic!("{sql}: {e} ({e:?})");
    }
}
