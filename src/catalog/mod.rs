//! Upstream knowledge, read through pgmemo's own side connections (DESIGN §1.5, §2): name
//! resolution under a session's search_path, relation facts and the cacheable-kind rule,
//! what views read and evaluate, partition/inheritance trees, FK actions, rewrite rules,
//! user triggers, function volatility, and a poller that fingerprints everything it has
//! handed out and reports what changed.
//!
//! Every answer is memoised per catalog generation (bumped whenever the poller sees a
//! change, or an answer finds a tracked relation name moved before the poller did) in
//! bounded memos. Every relation or function an answer hands out is tracked and
//! its fingerprint baseline is taken in the same snapshot as the answer, so a change made
//! afterwards is always seen by the next poll. Any error means "not cacheable" to callers
//! (or an epoch bump where a write's reach is unknown); nothing here panics or spawns.
//!
//! Not modelled exactly (documented where it matters): the session's own temporary schema
//! is invisible from a side connection (`Resolved::temp_shadow` says when it could shadow a
//! name); an I/O coercion inside a view counts every type the view mentions; function
//! calls count every overload of the written arity unless exact argument types are given.

mod bodies;
mod conn;
pub use conn::Driver as SideDriver;
mod error;
mod expand;
pub mod login;
mod lookups;
mod memo;
mod nodetree;
mod poller;
mod prints;
mod relations;
mod resolve;
mod rowid;
mod search_path;
mod settings;
mod track;
mod types;
mod weights;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use conn::{DbPool, Lease};
use memo::{Memo, Weights};
use track::{Limits, Prints, Tracked, Want};

pub use error::CatalogError;
pub use poller::Poller;
pub use prints::Aspect;
pub use rowid::RowIdentity;
pub use settings::SettingNames;
pub use track::{Change, EpochCause};
pub use types::{
    BodySource, EpochReason, FuncArgs, FuncBody, FuncFacts, FuncRef, Inheritance, NotCacheable,
    Oid, Persistence, ReadSet, RelKind, RelName, RelationFacts, Resolved, UserTrigger, ViewSources,
    Volatility, WriteSet,
};

/// How the catalog connects and how much it may hold.
#[derive(Debug, Clone)]
pub struct CatalogConfig {
    /// Host, port, user, password of the side connections (the database is set per call).
    pub connect: tokio_postgres::Config,
    /// How side connections reach the server: pgmemo's upstream dialer (TCP or a Unix
    /// socket, then TLS as `upstream.url`'s sslmode says), so they are as protected as the
    /// sessions' own. `None`: tokio-postgres connects by itself, without TLS (tests).
    pub dialer: Option<Arc<crate::upstream::Upstream>>,
    /// Side connections per database.
    pub connections_per_database: usize,
    pub connect_timeout: Duration,
    /// Bound on one whole catalog call (also the side connections' statement_timeout).
    pub call_timeout: Duration,
    /// Databases with side connections at once.
    pub max_databases: usize,
    /// Entries per memo (resolution, volatility, reads, writes).
    pub memo_entries: usize,
    /// Bytes per memo (keys hold names from client SQL): see `cache.max_memory` in README.
    pub memo_bytes: usize,
    /// Relations (and relation names) tracked by the poller, over all databases.
    pub max_tracked_relations: usize,
    /// Functions (and function names) tracked by the poller, over all databases.
    pub max_tracked_functions: usize,
    /// Relations one read or write expansion may reach before it gives up.
    pub max_expansion: usize,
}

impl CatalogConfig {
    pub fn new(connect: tokio_postgres::Config) -> Self {
        Self {
            connect,
            dialer: None,
            connections_per_database: 2,
            connect_timeout: Duration::from_secs(5),
            call_timeout: Duration::from_secs(5),
            max_databases: 64,
            memo_entries: 10_000,
            memo_bytes: 2 << 20,
            max_tracked_relations: 10_000,
            max_tracked_functions: 10_000,
            max_expansion: 1_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PathKey {
    db: String,
    user: String,
    search_path: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SetKey {
    db: String,
    oids: Vec<Oid>,
}

impl SetKey {
    fn new(db: &str, oids: &[Oid]) -> Self {
        let set: BTreeSet<Oid> = oids.iter().copied().collect();
        Self {
            db: db.to_owned(),
            oids: set.into_iter().collect(),
        }
    }
}

/// The bit of `db` in `Catalog::unwatched_bits`.
fn db_bit(db: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    db.hash(&mut h);
    1 << (h.finish() % 64)
}

/// How long a name that resolved to no relation is believed absent: a relation created
/// directly on PostgreSQL (which no poll notices) becomes cacheable within this time.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(5);

/// A memoised resolution, with when it was made if some name found no relation.
type Resolution = (Arc<[Resolved]>, Option<std::time::Instant>);

struct Memos {
    /// With the time a resolution that found no relation for some name was made: those are
    /// retried after [`NEGATIVE_TTL`] (a table created directly is not seen by the poller).
    resolve: Memo<(PathKey, Vec<RelName>), Resolution>,
    functions: Memo<(PathKey, Vec<FuncRef>), Arc<[FuncFacts]>>,
    reads: Memo<SetKey, Arc<ReadSet>>,
    writes: Memo<SetKey, Arc<WriteSet>>,
    bodies: Memo<SetKey, Arc<[FuncBody]>>,
    rows: Memo<SetKey, Option<Arc<RowIdentity>>>,
}

/// The catalog service (share it in an `Arc`; every method takes `&self`).
pub struct Catalog {
    config: CatalogConfig,
    pools: Mutex<HashMap<String, Arc<DbPool>>>,
    generation: AtomicU64,
    memos: Mutex<Memos>,
    tracked: Mutex<Tracked>,
    /// Custom setting names per database, with the generation they were read at.
    setting_names: Mutex<HashMap<String, (u64, SettingNames)>>,
    /// Databases whose side connections were closed (no client session used them) and
    /// that no poll has checked since: nothing watched their catalogs meanwhile, so their
    /// cache is not used and their memos are not trusted until a poll has compared the
    /// stored prints (see `side` and `watched`). Bounded by `max_databases` (only
    /// databases that had a pool enter it).
    unwatched: Mutex<HashSet<String>>,
    /// One bit per unwatched database (its name's hash modulo 64), so `watched` is one
    /// load for a database that is not unwatched (the lookup path asks it every time).
    unwatched_bits: AtomicU64,
}

/// A poisoned lock only means another caller panicked mid-update of plain data; the
/// catalog's maps stay usable (at worst an answer is recomputed).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Catalog {
    pub fn new(config: CatalogConfig) -> Self {
        let (n, bytes) = (config.memo_entries, config.memo_bytes);
        let limits = Limits {
            relations: config.max_tracked_relations,
            functions: config.max_tracked_functions,
        };
        Self {
            config,
            pools: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(1),
            memos: Mutex::new(Memos {
                resolve: Memo::new(
                    n,
                    bytes,
                    Weights {
                        key: weights::resolve_key,
                        value: weights::resolution,
                    },
                ),
                functions: Memo::new(
                    n,
                    bytes,
                    Weights {
                        key: weights::functions_key,
                        value: weights::function_facts,
                    },
                ),
                reads: Memo::new(
                    n,
                    bytes,
                    Weights {
                        key: weights::set_key,
                        value: weights::read_set,
                    },
                ),
                writes: Memo::new(
                    n,
                    bytes,
                    Weights {
                        key: weights::set_key,
                        value: weights::write_set,
                    },
                ),
                bodies: Memo::new(
                    n,
                    bytes,
                    Weights {
                        key: weights::set_key,
                        value: weights::bodies,
                    },
                ),
                rows: Memo::new(
                    n,
                    bytes,
                    Weights {
                        key: weights::set_key,
                        value: |v| v.as_ref().map_or(0, |r| r.weight()),
                    },
                ),
            }),
            tracked: Mutex::new(Tracked::new(limits)),
            setting_names: Mutex::new(HashMap::new()),
            unwatched: Mutex::new(HashSet::new()),
            unwatched_bits: AtomicU64::new(0),
        }
    }

    /// Whether `db`'s catalog is watched: false after its side connections were closed and
    /// before the next poll of it (changes made meanwhile may not be seen yet). Sessions of
    /// such a database neither use nor fill the cache.
    pub fn watched(&self, db: &str) -> bool {
        self.unwatched_bits.load(Ordering::Acquire) & db_bit(db) == 0
            || !lock(&self.unwatched).contains(db)
    }

    /// Databases that have side connections (or a pool that may open them).
    pub fn open_databases(&self) -> Vec<String> {
        lock(&self.pools).keys().cloned().collect()
    }

    /// Closes `db`'s side connections (waiting for calls in flight, each bounded by the
    /// call timeout); the next call reopens them. Its tracked prints are kept, and, when it
    /// has some, it is unwatched until the next poll of it (which compares them). Returns
    /// whether it had tracked items (results cached from it could depend on them).
    pub async fn close_database(&self, db: &str) -> bool {
        let pool = lock(&self.pools).remove(db);
        let Some(pool) = pool else {
            return false;
        };
        let tracked = lock(&self.tracked).has_database(db);
        if tracked {
            let mut unwatched = lock(&self.unwatched);
            unwatched.insert(db.to_owned());
            self.unwatched_bits.store(
                unwatched.iter().fold(0, |b, d| b | db_bit(d)),
                Ordering::Release,
            );
        }
        pool.close().await;
        tracked
    }

    /// `db` was polled (or has nothing to poll): watched again.
    fn mark_watched(&self, db: &str) {
        if self.unwatched_bits.load(Ordering::Acquire) & db_bit(db) == 0 {
            return;
        }
        let mut unwatched = lock(&self.unwatched);
        unwatched.remove(db);
        self.unwatched_bits.store(
            unwatched.iter().fold(0, |b, d| b | db_bit(d)),
            Ordering::Release,
        );
    }

    /// Forgets what is tracked of unwatched databases that no longer exist (dropped or
    /// renamed while nothing watched them), asking through a side connection to `via`, so
    /// neither set grows with databases that come and go. A later database of the same
    /// name starts afresh: memoised answers go (generation), and results cached for the old
    /// one are keyed by its OID.
    pub async fn forget_gone(&self, via: &str) -> Result<(), CatalogError> {
        let candidates = self.unwatched();
        if candidates.is_empty() {
            return Ok(());
        }
        let names = self
            .call(via, async |lease: &mut Lease| {
                let rows = lease
                    .query("SELECT datname::text FROM pg_catalog.pg_database", &[])
                    .await?;
                Ok(rows
                    .iter()
                    .filter_map(|r| r.try_get::<_, String>(0).ok())
                    .collect::<HashSet<String>>())
            })
            .await?;
        let mut forgot = false;
        for db in candidates.iter().filter(|db| !names.contains(*db)) {
            lock(&self.tracked).forget_database(db);
            self.mark_watched(db);
            forgot = true;
        }
        if forgot {
            // Memoised answers for a name that may come back as another database.
            self.bump_generation();
        }
        Ok(())
    }

    /// Unwatched databases, for the poller to check first.
    pub fn unwatched(&self) -> Vec<String> {
        if self.unwatched_bits.load(Ordering::Acquire) == 0 {
            return Vec::new();
        }
        lock(&self.unwatched).iter().cloned().collect()
    }

    /// Whether memoised answers for `db` may be used: not while it is unwatched (a name
    /// may have moved while nothing watched; a fresh answer also re-checks tracked names).
    fn memo_ok(&self, db: &str) -> bool {
        self.watched(db)
    }

    /// How side connections reach the server (host, port, role; the database is per call).
    pub fn connect_config(&self) -> &tokio_postgres::Config {
        &self.config.connect
    }

    /// A side client on `config` (another database or application name than the catalog's
    /// own), reached as the catalog's own connections are ([`CatalogConfig::dialer`]); the
    /// caller drives the returned connection future.
    pub async fn open_side(
        &self,
        config: &tokio_postgres::Config,
        timeout: Duration,
    ) -> Result<(tokio_postgres::Client, SideDriver), CatalogError> {
        conn::open(self.config.dialer.as_deref(), config, timeout).await
    }

    /// The catalog generation: part of every memo key; bumped by each poll that reports
    /// changes (callers may fold it into their own analysis memos).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Drops every memoised answer (DDL committed through pgmemo: names may resolve
    /// differently now). The poller would see the change too, but only after its interval.
    pub fn invalidate_memos(&self) {
        self.bump_generation();
    }

    fn bump_generation(&self) {
        self.bump_generation_with(&mut lock(&self.tracked));
    }

    /// Advances the generation with the tracked set already locked. What names carried is
    /// forgotten first: an answer that starts under the new generation records afresh what
    /// it meets, and one that recorded before belongs to the old generation (its memo is
    /// dropped, see `Memo::insert`).
    fn bump_generation_with(&self, tracked: &mut Tracked) {
        tracked.new_generation();
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// (relations, functions) currently tracked by the poller.
    pub fn tracked(&self) -> (usize, usize) {
        lock(&self.tracked).counts()
    }

    fn pool(&self, db: &str) -> Result<Arc<DbPool>, CatalogError> {
        let mut pools = lock(&self.pools);
        if let Some(pool) = pools.get(db) {
            return Ok(pool.clone());
        }
        if pools.len() >= self.config.max_databases {
            return Err(CatalogError::TooManyDatabases(self.config.max_databases));
        }
        let pool = Arc::new(DbPool::new(
            db,
            &self.config.connect,
            self.config.dialer.clone(),
            self.config.connections_per_database,
            self.config.connect_timeout,
            self.config.call_timeout,
        ));
        pools.insert(db.to_owned(), pool.clone());
        Ok(pool)
    }

    fn forget_database(&self, db: &str) {
        lock(&self.pools).remove(db);
        lock(&self.setting_names).remove(db);
        self.mark_watched(db);
    }

    /// Runs `work` in one read-only snapshot on a side connection of `db`, within the
    /// call timeout.
    async fn call<T>(
        &self,
        db: &str,
        work: impl AsyncFnOnce(&mut Lease) -> Result<T, CatalogError>,
    ) -> Result<T, CatalogError> {
        let pool = self.pool(db)?;
        let call = async {
            let mut lease = pool.begin().await?;
            match work(&mut lease).await {
                Ok(out) => {
                    lease.commit().await?;
                    Ok(out)
                }
                Err(e) => {
                    lease.rollback().await;
                    Err(e)
                }
            }
        };
        match tokio::time::timeout(self.config.call_timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(CatalogError::Timeout {
                db: db.to_owned(),
                timeout: self.config.call_timeout,
            }),
        }
    }

    /// Like `call`, and tracks what the answer hands out, with baselines from the same
    /// snapshot.
    ///
    /// The relation names the answer met are printed in the same snapshot: if one now
    /// carries other relations than when an answer of this generation first met it (a table
    /// dropped and re-created directly, which no poll has reported yet), answers memoised
    /// in this generation (plans of other sessions included) may name the old relations
    /// while this one names the new: a write would bump one OID and a read key on the
    /// other. The generation advances before this answer is returned, so every memoised
    /// answer is recomputed before it is used again (issue 15 item 7).
    async fn call_tracked<T>(
        &self,
        db: &str,
        work: impl AsyncFnOnce(&mut Lease) -> Result<(T, Want), CatalogError>,
    ) -> Result<T, CatalogError> {
        let (value, moved) = self
            .call(db, async |lease: &mut Lease| {
                let (value, mut want) = work(lease).await?;
                want.namespaces = true;
                want.shared = true;
                let (missing, known) = {
                    let tracked = lock(&self.tracked);
                    let missing = tracked.missing(db, &want)?;
                    (missing, tracked.tracked_names(db, &want.rel_names))
                };
                let baseline = Prints::fetch(lease, &missing).await?;
                let mut now = prints::relation_names(lease, &known).await?;
                now.extend(baseline.rel_names.iter().map(|(n, d)| (n.clone(), *d)));
                let mut tracked = lock(&self.tracked);
                tracked.insert(db, baseline)?;
                Ok((value, tracked.moved_names(db, now)))
            })
            .await?;
        if moved {
            tracing::info!(db, "catalog: a tracked relation name moved; memos dropped");
            self.bump_generation();
        }
        Ok(value)
    }

    fn path_key(&self, db: &str, search_path: &str, current_user: &str) -> PathKey {
        PathKey {
            db: db.to_owned(),
            user: current_user.to_owned(),
            search_path: search_path.to_owned(),
        }
    }

    // The building blocks below answer directly (no memo, no tracking): for inspection
    // and tests. Callers that turn answers into tags use `resolve`, `reads` and `writes`.
}
