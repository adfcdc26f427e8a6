//! Side connections to one database: a small pool of tokio-postgres clients, each driven
//! inline while a catalog call runs (no spawned task: DESIGN §3 leaves spawning to
//! `server`, `session` and named background tasks). A connection that errs, times out or is
//! dropped mid-call is discarded and replaced on next use; every call runs in its own
//! read-only REPEATABLE READ transaction so its catalog reads share one snapshot.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Mutex, OwnedMutexGuard};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Row, Statement};

use super::error::CatalogError;
use crate::upstream::Upstream;

/// The connection future of a client: it must be polled for the client to make progress.
pub type Driver = Pin<Box<dyn Future<Output = Result<(), tokio_postgres::Error>> + Send>>;

struct SideConn {
    client: Client,
    driver: Driver,
    /// Prepared once per connection; keys are the module's fixed query texts, so the map
    /// is bounded by the code.
    statements: HashMap<&'static str, Statement>,
}

/// Side connections to one database.
pub(crate) struct DbPool {
    config: tokio_postgres::Config,
    dialer: Option<Arc<Upstream>>,
    connect_timeout: Duration,
    statement_timeout: Duration,
    slots: Vec<Arc<Mutex<Option<SideConn>>>>,
    next: AtomicUsize,
    /// Set by `close`: no connection is (re)opened after it.
    closed: AtomicBool,
}

impl DbPool {
    pub(crate) fn new(
        db: &str,
        base: &tokio_postgres::Config,
        dialer: Option<Arc<Upstream>>,
        size: usize,
        connect_timeout: Duration,
        statement_timeout: Duration,
    ) -> Self {
        let mut config = base.clone();
        config.dbname(db);
        if config.get_application_name().is_none() {
            config.application_name("pgmemo-catalog");
        }
        let slots = (0..size.max(1))
            .map(|_| Arc::new(Mutex::new(None)))
            .collect();
        Self {
            config,
            dialer,
            connect_timeout,
            statement_timeout,
            slots,
            next: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
        }
    }

    /// Closes every connection, waiting for calls in flight to finish with theirs (each is
    /// bounded by the call timeout), and opens none afterwards. When it returns, pgmemo
    /// holds no catalog connection to the database through this pool.
    pub(crate) async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        for slot in &self.slots {
            // Dropping the client and its driver closes the socket; the server's backend
            // exits on it (DROP DATABASE waits up to 5 s for that).
            slot.lock().await.take();
        }
    }

    /// A connection with a read-only REPEATABLE READ transaction open. A reused connection
    /// that turns out to be dead (server restart, idle disconnect) is replaced once.
    pub(crate) async fn begin(&self) -> Result<Lease, CatalogError> {
        let mut lease = self.lease().await?;
        match lease.execute(BEGIN).await {
            Ok(()) => Ok(lease),
            Err(_) if !lease.fresh => {
                let mut lease = self.lease().await?;
                lease.execute(BEGIN).await?;
                Ok(lease)
            }
            Err(e) => Err(e),
        }
    }

    async fn lease(&self) -> Result<Lease, CatalogError> {
        let n = self.slots.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let free = (0..n).find_map(|i| {
            self.slots
                .get((start + i) % n)
                .and_then(|slot| slot.clone().try_lock_owned().ok())
        });
        let mut guard = match free {
            Some(guard) => guard,
            None => match self.slots.get(start % n) {
                Some(slot) => slot.clone().lock_owned().await,
                None => return Err(CatalogError::Closed),
            },
        };
        let fresh = guard.is_none();
        if self.closed.load(Ordering::Acquire) {
            *guard = None;
            return Err(CatalogError::Closed);
        }
        if fresh {
            *guard = Some(self.connect().await?);
        }
        Ok(Lease {
            guard,
            fresh,
            finished: false,
        })
    }

    async fn connect(&self) -> Result<SideConn, CatalogError> {
        let (client, driver) =
            open(self.dialer.as_deref(), &self.config, self.connect_timeout).await?;
        let mut conn = SideConn {
            client,
            driver,
            statements: HashMap::new(),
        };
        // A server-side bound as well as pgmemo's own timeout, so an abandoned query does
        // not keep running; our queries qualify nothing, so pin the path to pg_catalog.
        let setup = format!(
            "SET statement_timeout = {}; SET lock_timeout = {0}; \
             SET search_path = pg_catalog; SET default_transaction_read_only = on",
            self.statement_timeout.as_millis().max(1)
        );
        drive(&mut conn.driver, conn.client.batch_execute(&setup)).await?;
        Ok(conn)
    }
}

const BEGIN: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY";

/// A tokio-postgres client on `config` within `timeout`: on a stream from `dialer` (TLS
/// already as `upstream.url` says; tokio-postgres is told not to negotiate it again), or,
/// without one, connected by tokio-postgres itself without TLS.
pub(crate) async fn open(
    dialer: Option<&Upstream>,
    config: &tokio_postgres::Config,
    timeout: Duration,
) -> Result<(Client, Driver), CatalogError> {
    let db = config.get_dbname().unwrap_or_default().to_owned();
    let opened = async {
        match dialer {
            Some(upstream) => {
                let stream =
                    upstream
                        .connect(timeout)
                        .await
                        .map_err(|source| CatalogError::Dial {
                            db: db.clone(),
                            source,
                        })?;
                let mut config = config.clone();
                config.ssl_mode(tokio_postgres::config::SslMode::Disable);
                let (client, connection) =
                    config.connect_raw(stream, NoTls).await.map_err(|source| {
                        CatalogError::Connect {
                            db: db.clone(),
                            source,
                        }
                    })?;
                Ok::<_, CatalogError>((client, Box::pin(connection) as Driver))
            }
            None => {
                let (client, connection) =
                    config
                        .connect(NoTls)
                        .await
                        .map_err(|source| CatalogError::Connect {
                            db: db.clone(),
                            source,
                        })?;
                Ok((client, Box::pin(connection) as Driver))
            }
        }
    };
    match tokio::time::timeout(timeout, opened).await {
        Ok(r) => r,
        Err(_) => Err(CatalogError::ConnectTimeout {
            db: db.clone(),
            timeout,
        }),
    }
}

/// Exclusive use of one side connection for one call. Dropping it before `commit`
/// (an error, a timeout, a cancelled caller) discards the connection: its state is unknown.
pub(crate) struct Lease {
    guard: OwnedMutexGuard<Option<SideConn>>,
    fresh: bool,
    finished: bool,
}

impl Lease {
    /// Runs one of the module's fixed queries (prepared once per connection).
    pub(crate) async fn query(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, CatalogError> {
        let result = self.query_inner(sql, params).await;
        self.discard_if_lost(&result);
        result
    }

    /// A lost connection is dropped at once; after an SQL error it stays usable once the
    /// caller rolls back (see `rollback`).
    fn discard_if_lost<T>(&mut self, result: &Result<T, CatalogError>) {
        if matches!(
            result,
            Err(CatalogError::ConnectionLost(_) | CatalogError::Closed)
        ) {
            *self.guard = None;
        }
    }

    async fn query_inner(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, CatalogError> {
        let conn = self.guard.as_mut().ok_or(CatalogError::Closed)?;
        let statement = match conn.statements.get(sql) {
            Some(statement) => statement.clone(),
            None => {
                let statement = drive(&mut conn.driver, conn.client.prepare(sql)).await?;
                conn.statements.insert(sql, statement.clone());
                statement
            }
        };
        drive(&mut conn.driver, conn.client.query(&statement, params)).await
    }

    async fn execute(&mut self, sql: &'static str) -> Result<(), CatalogError> {
        let conn = self.guard.as_mut().ok_or(CatalogError::Closed)?;
        let result = drive(&mut conn.driver, conn.client.batch_execute(sql)).await;
        self.discard_if_lost(&result);
        result
    }

    /// Ends the transaction and returns the connection to the pool.
    pub(crate) async fn commit(mut self) -> Result<(), CatalogError> {
        self.execute("COMMIT").await?;
        self.finished = true;
        Ok(())
    }

    /// Abandons the transaction after a failed call; the connection goes back to the pool
    /// if the rollback works (so a query error does not cost a reconnect), else it is
    /// discarded.
    pub(crate) async fn rollback(mut self) {
        if self.execute("ROLLBACK").await.is_ok() {
            self.finished = true;
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.finished {
            *self.guard = None;
        }
    }
}

/// Polls `work` and the connection together: the client only progresses while its
/// connection future is polled, and a connection that ends fails the work.
async fn drive<T>(
    driver: &mut Driver,
    work: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, CatalogError> {
    tokio::select! {
        biased;
        result = work => result.map_err(|e| {
            if e.is_closed() { CatalogError::ConnectionLost(e) } else { CatalogError::Query(e) }
        }),
        ended = driver => Err(match ended {
            Ok(()) => CatalogError::Closed,
            Err(e) => CatalogError::ConnectionLost(e),
        }),
    }
}
