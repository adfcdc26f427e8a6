//! Sources of bumps, in one place (DESIGN §2): writes committed through pgmemo (sessions call
//! [`Invalidator::bump`] at the ordering point I2), prepared transactions parked under their
//! gid until COMMIT PREPARED, the catalog poller's changes (including server configuration
//! reloads, which sessions learn of through [`Invalidator::config_generation`]), and manual
//! flushes (admin API, SIGUSR1). The cache itself only knows tags; this module maps database
//! names to the OIDs tags carry, as sessions learn them from their settings probe.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use metrics::Counter;
use tracing::{info, warn};

use crate::cache::l2::tier::SharedTier;
use crate::cache::{Cache, Dep, EpochCause, Stripe, Tag};
use crate::catalog::{self, Catalog, CatalogError, Change, RelName};
use crate::telemetry::names;

/// Prepared transactions whose written tags are remembered; beyond it, COMMIT PREPARED of a
/// forgotten gid bumps the epoch (the same as a gid pgmemo never saw).
const MAX_PARKED: usize = 4096;
/// Databases whose OID is remembered (one entry per database sessions connect to).
const MAX_DATABASES: usize = 4096;

/// What a transaction wrote, as far as bumps go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Written {
    /// Relations written with rows not known by key: every counter of theirs moves.
    pub tags: Vec<Tag>,
    /// Rows written, known by key (relation, stripe; sorted, unique): the relation's table
    /// counter and the row's stripe move, not its table-wide counter. At most
    /// [`MAX_ROWS`](crate::cache::rows::MAX_ROWS) per relation; beyond, the relation joins
    /// `tags`.
    pub rows: Vec<(Tag, Stripe)>,
    pub epoch: Option<EpochCause>,
    /// Relations written that are `write = "through"` tables (sorted, unique): at commit the
    /// most recently stored results depending on them are refreshed, not only invalidated.
    /// Each is also in `tags` or `rows`, which say what the write invalidates.
    pub through: Vec<Tag>,
}

impl Written {
    pub fn is_empty(&self) -> bool {
        self.tags.is_empty() && self.rows.is_empty() && self.epoch.is_none()
    }

    /// Adds `other`'s effects (tags kept sorted and unique; the first epoch cause wins).
    pub fn merge(&mut self, tags: &[Tag], epoch: Option<EpochCause>) {
        for t in tags {
            if let Err(at) = self.tags.binary_search(t) {
                self.tags.insert(at, *t);
            }
        }
        // A relation written table-wide needs no rows of its own.
        if !tags.is_empty() {
            let all = &self.tags;
            self.rows.retain(|(t, _)| all.binary_search(t).is_err());
        }
        if self.epoch.is_none() {
            self.epoch = epoch;
        }
    }

    /// Adds known rows. A relation with more than `MAX_ROWS` rows here is written
    /// table-wide instead (the bound keeps a transaction's record small).
    pub fn merge_rows(&mut self, rows: &[(Tag, Stripe)]) {
        for row in rows {
            if self.tags.binary_search(&row.0).is_ok() {
                continue;
            }
            if let Err(at) = self.rows.binary_search(row) {
                self.rows.insert(at, *row);
            }
            let of_tag = self.rows.iter().filter(|(t, _)| *t == row.0).count();
            if of_tag > crate::cache::rows::MAX_ROWS {
                self.merge(&[row.0], None);
            }
        }
    }

    /// Adds write-through relations (kept sorted and unique), so a transaction's record
    /// holds every one its statements wrote. Separate from [`Written::merge`], whose callers
    /// pass tags that are not all written relations (views, foreign-key closure).
    pub fn merge_through(&mut self, tags: &[Tag]) {
        for t in tags {
            if let Err(at) = self.through.binary_search(t) {
                self.through.insert(at, *t);
            }
        }
    }

    /// Adds everything `other` wrote.
    pub fn merge_written(&mut self, other: &Written) {
        self.merge(&other.tags, other.epoch);
        self.merge_rows(&other.rows);
        self.merge_through(&other.through);
    }

    /// The counters these writes move (see [`crate::cache::Dep`]).
    pub fn deps(&self) -> Vec<Dep> {
        let mut deps = Vec::with_capacity(2 * (self.tags.len() + self.rows.len()));
        for t in &self.tags {
            deps.push(Dep::Table(*t));
            deps.push(Dep::Wide(*t));
        }
        for (t, stripe) in &self.rows {
            deps.push(Dep::Table(*t));
            deps.push(Dep::Row(*stripe));
        }
        deps.sort_unstable();
        deps.dedup();
        deps
    }
}

/// Where a bump came from (metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Write,
    Prepared,
    Catalog,
    Admin,
    /// A transaction committed on PostgreSQL, seen in its change stream.
    Cdc,
}

impl Source {
    const ALL: [Source; 5] = [
        Self::Write,
        Self::Prepared,
        Self::Catalog,
        Self::Admin,
        Self::Cdc,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::Write => "write",
            Self::Prepared => "prepared",
            Self::Catalog => "catalog",
            Self::Admin => "admin",
            Self::Cdc => "cdc",
        }
    }
}

/// A bump to apply in the shared tier: [`SharedBump::apply`] returns once Redis has it or it
/// was recorded for retry (bounded by the tier's timeout). Dropped before it finished (the
/// session went away while its acknowledgement was held), it is recorded for retry.
pub struct SharedBump {
    tier: Arc<SharedTier>,
    tags: Vec<Dep>,
    epoch: bool,
    done: bool,
}

impl SharedBump {
    pub async fn apply(mut self) {
        self.tier.bump(&self.tags, self.epoch).await;
        self.done = true;
    }
}

impl Drop for SharedBump {
    fn drop(&mut self) {
        if !self.done {
            self.tier.record(&self.tags, self.epoch);
        }
    }
}

/// The staleness checker's proof that it catches broken row precision (cargo feature
/// `race-hooks`, `PGMEMO_FAULT_SKIP_WIDE=1`): writes with unknown rows do not move the
/// table-wide counters, so reads pinned to rows go stale. Always off in a real build.
#[cfg(feature = "race-hooks")]
fn skip_wide_fault() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("PGMEMO_FAULT_SKIP_WIDE").is_ok_and(|v| v == "1"))
}

#[cfg(not(feature = "race-hooks"))]
fn skip_wide_fault() -> bool {
    false
}

/// Applies `bump` in the background (no acknowledgement waits for it).
fn spawn_or_record(bump: SharedBump) {
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            let tasks = bump.tier.tasks().clone();
            tasks.spawn_on(&rt, "l2-bump", bump.apply());
        }
        // Dropping it records it for the retry.
        Err(_) => drop(bump),
    }
}

/// Whether warming runs again after an epoch bump of `cause` (every epoch bump makes every
/// cached result unreachable): after the rare whole-cache events — DDL through pgmemo, a
/// change stream resynchronised (start, reconnect, a stopped stream restarted), catalog
/// changes the poller cannot pin to relations, a server configuration reload. Not after
/// the causes that come with ordinary writes (side effects without a change stream,
/// unparsed, untracked or re-resolved writes, an unknown gid, a streamed transaction too
/// large or not resolved): they recur at the rate of writes, and each run would re-run
/// every warm query for results the next such write drops. Not after `SideClosed`: it
/// follows the last client leaving, and warming would open the side connections again
/// (and close them, bump, warm...). `Admin` has its own signal (`flushes`); `TagLimit` is
/// bumped by the version table itself, never through here.
fn rewarms_after(cause: EpochCause) -> bool {
    match cause {
        EpochCause::Ddl
        | EpochCause::CdcResync
        | EpochCause::CatalogFunction
        | EpochCause::CatalogRole
        | EpochCause::CatalogObject
        | EpochCause::ConfigReload => true,
        EpochCause::UnparsedWrite
        | EpochCause::SideEffects
        | EpochCause::ResolutionChanged
        | EpochCause::UnknownGid
        | EpochCause::Untracked
        | EpochCause::CdcOverflow
        | EpochCause::CdcUnresolved
        | EpochCause::SideClosed
        | EpochCause::Admin
        | EpochCause::TagLimit => false,
    }
}

/// Why a manual table invalidation failed.
#[derive(Debug, thiserror::Error)]
pub enum InvalidateError {
    #[error("no relation {table} in database {database}")]
    NoSuchRelation { database: String, table: String },
    #[error("database {0} has no known OID yet (no session has used it through pgmemo)")]
    UnknownDatabase(String),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

/// The bump side of the cache, shared by sessions, the poller and the admin API.
pub struct Invalidator {
    cache: Arc<Cache>,
    /// The shared tier: every bump is applied there too.
    shared: Option<Arc<SharedTier>>,
    catalog: Arc<Catalog>,
    databases: Mutex<HashMap<String, u32>>,
    parked: Mutex<HashMap<(u32, String), Written>>,
    /// Server configuration reloads seen (see [`config_generation`](Self::config_generation)).
    config_generation: AtomicU64,
    counters: [Counter; 5],
    /// Invalidations by granularity: relations written table-wide, rows written by key.
    granularity: [Counter; 2],
    /// Moves at every whole-cache flush (to its epoch): warming runs again after one.
    flushes: tokio::sync::watch::Sender<u64>,
    /// Counts the other whole-cache invalidations warming runs again after (see
    /// [`rewarms_after`]).
    rewarms: tokio::sync::watch::Sender<u64>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Invalidator {
    pub fn new(cache: Arc<Cache>, catalog: Arc<Catalog>, shared: Option<Arc<SharedTier>>) -> Self {
        Self {
            cache,
            shared,
            catalog,
            databases: Mutex::new(HashMap::new()),
            parked: Mutex::new(HashMap::new()),
            config_generation: AtomicU64::new(0),
            counters: Source::ALL
                .map(|s| metrics::counter!(names::CACHE_TAG_BUMPS, "source" => s.as_str())),
            granularity: ["table", "row"]
                .map(|g| metrics::counter!(names::CACHE_INVALIDATIONS, "granularity" => g)),
            flushes: tokio::sync::watch::Sender::new(0),
            rewarms: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Sees every whole-cache flush from now on (the value: the flush's epoch).
    pub fn flushes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.flushes.subscribe()
    }

    /// Sees every epoch bump of this instance that warming runs again after (see
    /// [`rewarms_after`]) from now on (the value: how many there were).
    pub fn rewarms(&self) -> tokio::sync::watch::Receiver<u64> {
        self.rewarms.subscribe()
    }

    pub fn cache(&self) -> &Arc<Cache> {
        &self.cache
    }

    /// Advances with every server configuration reload the poller sees. A session probed
    /// under an older value may hold a fingerprint that no longer matches its settings (a
    /// reloaded setting it did not SET): it neither looks up nor stores until probed again.
    pub fn config_generation(&self) -> u64 {
        self.config_generation.load(Ordering::Acquire)
    }

    /// Remembers a database's OID (from a session's settings probe).
    pub fn learn_database(&self, name: &str, oid: u32) {
        let mut dbs = lock(&self.databases);
        if dbs.get(name) == Some(&oid) {
            return;
        }
        if dbs.len() >= MAX_DATABASES {
            dbs.clear();
        }
        dbs.insert(name.to_owned(), oid);
    }

    pub fn database_oid(&self, name: &str) -> Option<u32> {
        lock(&self.databases).get(name).copied()
    }

    /// Applies a committed write (I2: call after the commit is reported, before relaying its
    /// acknowledgement). With a shared tier the bump is applied there in the background; a
    /// session that relays the acknowledgement uses [`bump_held`](Self::bump_held) instead.
    pub fn bump(&self, written: &Written, source: Source) {
        if let Some(shared) = self.bump_local(written, source) {
            spawn_or_record(shared);
        }
    }

    /// As [`bump`](Self::bump), returning the shared tier's bump for the caller to await
    /// before relaying the acknowledgement (`None` without a tier or nothing to bump).
    pub fn bump_held(&self, written: &Written, source: Source) -> Option<SharedBump> {
        self.bump_local(written, source)
    }

    /// How far [`bump`](Self::bump) moves each local counter for `written` (sorted by
    /// counter): one increment per table, table-wide and row counter of each relation or
    /// row written, summed. A recomputation sent before a write it runs behind keys its
    /// result on its snapshot moved by exactly these (see `session::cache_side::pipelined`);
    /// it must mirror `bump_local`, which a unit test checks.
    pub fn increments(written: &Written) -> Vec<(Dep, u64)> {
        let mut bumps: Vec<Dep> = Vec::with_capacity(2 * (written.tags.len() + written.rows.len()));
        for t in &written.tags {
            bumps.push(Dep::Table(*t));
            if !skip_wide_fault() {
                bumps.push(Dep::Wide(*t));
            }
        }
        for (t, stripe) in &written.rows {
            bumps.extend([Dep::Table(*t), Dep::Row(*stripe)]);
        }
        bumps.sort_unstable();
        let mut out: Vec<(Dep, u64)> = Vec::with_capacity(bumps.len());
        for dep in bumps {
            match out.last_mut() {
                Some((last, n)) if *last == dep => *n += 1,
                _ => out.push((dep, 1)),
            }
        }
        out
    }

    fn bump_local(&self, written: &Written, source: Source) -> Option<SharedBump> {
        if !written.tags.is_empty() {
            if skip_wide_fault() {
                // Deliberately broken (tests only): table-wide writes leave pinned reads alone.
                let tables: Vec<Dep> = written.tags.iter().map(|t| Dep::Table(*t)).collect();
                self.cache.versions().bump_deps(&tables);
            } else {
                self.cache.versions().bump(&written.tags);
            }
            self.counter(source).increment(written.tags.len() as u64);
            let [table, _] = &self.granularity;
            table.increment(written.tags.len() as u64);
        }
        if !written.rows.is_empty() {
            self.cache.versions().bump_rows(&written.rows);
            // Their relations' versions moved too (the table counter).
            let mut relations: Vec<Tag> = written.rows.iter().map(|(t, _)| *t).collect();
            relations.dedup();
            self.counter(source).increment(relations.len() as u64);
            let [_, row] = &self.granularity;
            row.increment(written.rows.len() as u64);
        }
        if let Some(cause) = written.epoch {
            self.cache.versions().bump_epoch(cause);
            if rewarms_after(cause) {
                self.rewarms.send_modify(|n| *n = n.wrapping_add(1));
            }
        }
        let tier = self.shared.as_ref()?;
        if written.is_empty() {
            return None;
        }
        let mut deps = written.deps();
        if skip_wide_fault() {
            deps.retain(|d| !matches!(d, Dep::Wide(_)));
        }
        Some(SharedBump {
            tier: Arc::clone(tier),
            tags: deps,
            epoch: written.epoch.is_some(),
            done: false,
        })
    }

    /// As [`bump_epoch`](Self::bump_epoch), returning the shared tier's bump for the caller
    /// to await (a change stream must not report itself consistent before Redis has it).
    pub fn bump_epoch_held(&self, cause: EpochCause) -> Option<SharedBump> {
        self.bump_held(
            &Written {
                epoch: Some(cause),
                ..Written::default()
            },
            Source::Write,
        )
    }

    /// Bumps the epoch here and in the shared tier (every instance's results become
    /// unreachable): for causes that stand for a write (a resynchronised change stream,
    /// effects that could not be followed).
    pub fn bump_epoch(&self, cause: EpochCause) {
        self.bump(
            &Written {
                epoch: Some(cause),
                ..Written::default()
            },
            Source::Write,
        );
    }

    // One counter per `Source::ALL` entry; a position in `ALL` is always in range.
    #[allow(clippy::indexing_slicing)]
    fn counter(&self, source: Source) -> &Counter {
        let i = Source::ALL.iter().position(|s| *s == source).unwrap_or(0);
        &self.counters[i]
    }

    /// PREPARE TRANSACTION succeeded: its writes wait for COMMIT PREPARED.
    pub fn park(&self, db: u32, gid: &str, written: Written) {
        let mut parked = lock(&self.parked);
        if parked.len() >= MAX_PARKED && !parked.contains_key(&(db, gid.to_owned())) {
            // Forgetting is safe: COMMIT PREPARED of an unknown gid bumps the epoch.
            warn!(
                limit = MAX_PARKED,
                "too many prepared transactions tracked; forgetting them all"
            );
            parked.clear();
        }
        parked
            .entry((db, gid.to_owned()))
            .or_default()
            .merge_written(&written);
    }

    /// COMMIT PREPARED succeeded: bump what was parked, or the epoch for an unknown gid
    /// (prepared before pgmemo started, through another path, or forgotten). Returns the
    /// shared tier's bump, to await before relaying the acknowledgement.
    pub fn commit_prepared(&self, db: u32, gid: &str) -> Option<SharedBump> {
        let parked = lock(&self.parked).remove(&(db, gid.to_owned()));
        match parked {
            Some(written) => self.bump_held(&written, Source::Prepared),
            None => self.bump_epoch_held(EpochCause::UnknownGid),
        }
    }

    /// ROLLBACK PREPARED succeeded: nothing was written.
    pub fn rollback_prepared(&self, db: u32, gid: &str) {
        lock(&self.parked).remove(&(db, gid.to_owned()));
    }

    /// Every cached result becomes unreachable and its memory is freed, and what the catalog
    /// memoised is dropped (admin API, SIGUSR1): after DDL done directly on Postgres, this
    /// applies it at once instead of at the next catalog poll.
    pub fn flush_all(&self) -> u64 {
        self.catalog.invalidate_memos();
        let epoch = self.cache.flush(EpochCause::Admin);
        if let Some(tier) = &self.shared {
            // Every instance's results, and the L2's.
            spawn_or_record(SharedBump {
                tier: Arc::clone(tier),
                tags: Vec::new(),
                epoch: true,
                done: false,
            });
        }
        info!(epoch, "cache flushed");
        self.flushes.send_replace(epoch);
        epoch
    }

    /// Bumps one relation (and what a write to it reaches: partitions, views' bases, FK
    /// actions) in `database`; `table` is `name` or `schema.name` (unquoted identifiers
    /// are lower-cased as in SQL), resolved under `search_path = public`. Returns the tags
    /// bumped.
    pub async fn invalidate_table(
        &self,
        catalog: &Catalog,
        database: &str,
        table: &str,
    ) -> Result<usize, InvalidateError> {
        let db_oid = self
            .database_oid(database)
            .ok_or_else(|| InvalidateError::UnknownDatabase(database.to_owned()))?;
        let name = parse_table(table).ok_or_else(|| InvalidateError::NoSuchRelation {
            database: database.to_owned(),
            table: table.to_owned(),
        })?;
        let resolved = catalog
            .resolve(database, &[name], "public", "postgres")
            .await?;
        let oid = resolved
            .first()
            .and_then(|r| r.relation.as_ref())
            .map(|f| f.oid)
            .ok_or_else(|| InvalidateError::NoSuchRelation {
                database: database.to_owned(),
                table: table.to_owned(),
            })?;
        let set = catalog.writes(database, &[oid]).await?;
        let mut tags: Vec<Tag> = set
            .tags
            .iter()
            .map(|&rel| Tag { db: db_oid, rel })
            .collect();
        tags.push(Tag {
            db: db_oid,
            rel: oid,
        });
        tags.sort_unstable();
        tags.dedup();
        let written = Written {
            tags,
            ..Written::default()
        };
        self.bump(&written, Source::Admin);
        Ok(written.tags.len())
    }

    /// What the catalog poller saw: relation changes bump their tags; the rest bumps the
    /// epoch. A change in a database whose OID is unknown bumps the epoch too.
    pub fn apply_catalog(&self, changes: Vec<Change>) {
        let mut written = Written::default();
        for change in changes {
            match change {
                Change::Relation { db, oid, aspects } => match self.database_oid(&db) {
                    Some(db_oid) => {
                        info!(%db, oid, ?aspects, "catalog change: relation bumped");
                        written.merge(
                            &[Tag {
                                db: db_oid,
                                rel: oid,
                            }],
                            None,
                        );
                    }
                    None => written.merge(&[], Some(EpochCause::CatalogRole)),
                },
                Change::Epoch { db, cause } => {
                    info!(?db, ?cause, "catalog change: epoch bumped");
                    if matches!(
                        cause,
                        catalog::EpochCause::ConfigReload | catalog::EpochCause::Objects
                    ) {
                        // Objects include policies, views and functions: the custom settings
                        // a session's probe must read may have changed (catalog::settings).
                        // Before the epoch moves: a session that reads the new epoch then
                        // also sees this and neither stores nor looks up before its probe.
                        self.config_generation.fetch_add(1, Ordering::AcqRel);
                    }
                    let cause = match cause {
                        catalog::EpochCause::Function { .. }
                        | catalog::EpochCause::FunctionNames(_) => EpochCause::CatalogFunction,
                        catalog::EpochCause::Objects => EpochCause::CatalogObject,
                        catalog::EpochCause::ConfigReload => EpochCause::ConfigReload,
                        _ => EpochCause::CatalogRole,
                    };
                    written.merge(&[], Some(cause));
                }
            }
        }
        self.bump(&written, Source::Catalog);
    }
}

/// `name` or `schema.name`, each part an identifier (unquoted: lower-cased; `"quoted"`:
/// kept).
pub fn parse_table(text: &str) -> Option<RelName> {
    let mut parts = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let (part, after) = if let Some(q) = rest.strip_prefix('"') {
            let mut out = String::new();
            let mut chars = q.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                if c == '"' {
                    if q.get(i + 1..).is_some_and(|r| r.starts_with('"')) {
                        out.push('"');
                        chars.next();
                    } else {
                        end = Some(i + 1);
                        break;
                    }
                } else {
                    out.push(c);
                }
            }
            (out, q.get(end?..)?)
        } else {
            let end = rest.find('.').unwrap_or(rest.len());
            let word = rest.get(..end)?.trim();
            if word.is_empty() {
                return None;
            }
            (word.to_lowercase(), rest.get(end..)?)
        };
        parts.push(part);
        rest = match after.strip_prefix('.') {
            Some(r) => r,
            None if after.trim().is_empty() => "",
            None => return None,
        };
    }
    match parts.as_slice() {
        [name] => Some(RelName::new(None, name)),
        [schema, name] => Some(RelName::new(Some(schema), name)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offline() -> Invalidator {
        let secret = crate::cache::KeySecret::generate().unwrap();
        let cache = Arc::new(Cache::new(crate::cache::CacheLimits::with_secret(secret)));
        let mut pg = tokio_postgres::Config::new();
        pg.host("127.0.0.1").port(1).user("postgres");
        let catalog = Arc::new(Catalog::new(crate::catalog::CatalogConfig::new(pg)));
        Invalidator::new(cache, catalog, None)
    }

    #[test]
    fn warming_is_told_of_rare_whole_cache_invalidations_only() {
        let inv = offline();
        let mut rewarms = inv.rewarms();
        let epoch = |cause| Written {
            epoch: Some(cause),
            ..Written::default()
        };
        for cause in [EpochCause::SideEffects, EpochCause::Untracked] {
            inv.bump(&epoch(cause), Source::Write);
        }
        inv.bump_epoch(EpochCause::SideClosed);
        assert!(!rewarms.has_changed().unwrap(), "write-rate causes");
        let before = inv.cache().versions().epoch();
        inv.bump(&epoch(EpochCause::Ddl), Source::Write);
        assert_eq!(inv.cache().versions().epoch(), before + 1);
        assert!(rewarms.has_changed().unwrap());
        assert_eq!(*rewarms.borrow_and_update(), 1);
        inv.bump_epoch(EpochCause::CdcResync);
        assert_eq!(*rewarms.borrow_and_update(), 2);
        inv.flush_all();
        assert!(
            !rewarms.has_changed().unwrap(),
            "a flush has its own signal"
        );
    }

    #[test]
    fn table_names_parse_like_sql_identifiers() {
        assert_eq!(
            parse_table("Accounts"),
            Some(RelName::new(None, "accounts"))
        );
        assert_eq!(
            parse_table("app.\"Mixed.Case\""),
            Some(RelName::new(Some("app"), "Mixed.Case"))
        );
        assert_eq!(
            parse_table("\"a\"\"b\".t"),
            Some(RelName::new(Some("a\"b"), "t"))
        );
        assert_eq!(parse_table(""), None);
        assert_eq!(parse_table("a.b.c"), None);
        assert_eq!(parse_table("a..b"), None);
        assert_eq!(parse_table("\"open"), None);
    }

    /// `increments` is what `bump` really does: a snapshot read before a write, moved by
    /// the write's increments, equals one read after it (rows sharing a stripe, several
    /// rows of one relation, and table-wide writes included).
    #[test]
    fn increments_mirror_the_bump() {
        use crate::cache::{Cache, CacheLimits, KeySecret};
        let cache = Arc::new(Cache::new(CacheLimits::with_secret(KeySecret::from_bytes(
            [3; 16],
        ))));
        let catalog = Arc::new(Catalog::new(crate::catalog::CatalogConfig::new(
            tokio_postgres::Config::new(),
        )));
        let inv = Invalidator::new(Arc::clone(&cache), catalog, None);
        let t = |rel| Tag { db: 1, rel };
        let mut w = Written::default();
        w.merge(&[t(4)], None);
        w.merge_rows(&[(t(7), 11), (t(7), 12), (t(8), 11)]);
        let deps: Vec<Dep> = [
            Dep::Table(t(4)),
            Dep::Wide(t(4)),
            Dep::Table(t(7)),
            Dep::Wide(t(7)),
            Dep::Table(t(8)),
            Dep::Row(11),
            Dep::Row(12),
            Dep::Row(13),
            Dep::Table(t(9)),
        ]
        .to_vec();
        // Counters start at different values.
        inv.bump(
            &Written {
                tags: vec![t(7)],
                ..Written::default()
            },
            Source::Write,
        );
        let before = cache.versions().snapshot_deps(&deps);
        inv.bump(&w, Source::Write);
        let after = cache.versions().snapshot_deps(&deps);
        assert_eq!(before.after(&Invalidator::increments(&w)), after);
        assert_ne!(before, after);
        // Another write's bump on top is not that write's.
        inv.bump(
            &Written {
                rows: vec![(t(8), 13)],
                ..Written::default()
            },
            Source::Write,
        );
        let later = cache.versions().snapshot_deps(&deps);
        assert_ne!(before.after(&Invalidator::increments(&w)), later);
    }

    #[test]
    fn written_merges_sorted_unique_and_keeps_the_first_cause() {
        let mut w = Written::default();
        w.merge(&[Tag { db: 1, rel: 5 }, Tag { db: 1, rel: 2 }], None);
        w.merge(&[Tag { db: 1, rel: 5 }], Some(EpochCause::Ddl));
        w.merge(&[], Some(EpochCause::SideEffects));
        assert_eq!(w.tags, vec![Tag { db: 1, rel: 2 }, Tag { db: 1, rel: 5 }]);
        assert_eq!(w.epoch, Some(EpochCause::Ddl));
    }

    #[test]
    fn write_through_relations_merge_sorted_and_unique() {
        let t = |rel| Tag { db: 1, rel };
        let mut stmt = Written::default();
        stmt.merge(&[t(9), t(4)], None);
        stmt.merge_through(&[t(9), t(4), t(9)]);
        assert_eq!(stmt.through, vec![t(4), t(9)]);
        let mut txn = Written::default();
        txn.merge_through(&[t(7)]);
        txn.merge_written(&stmt);
        txn.merge_written(&stmt);
        assert_eq!(txn.through, vec![t(4), t(7), t(9)]);
        // Invalidation merges leave them alone.
        txn.merge(&[t(1)], Some(EpochCause::Ddl));
        assert_eq!(txn.through, vec![t(4), t(7), t(9)]);
        assert!(Written::default().through.is_empty());
    }
}
