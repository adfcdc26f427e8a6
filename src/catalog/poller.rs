//! The catalog poller: re-fingerprints everything tracked, compares with the stored
//! prints and reports which relation tags changed and which changes need an epoch bump
//! (functions, names, schemas, roles, settings). A poll that fails reports an epoch bump
//! too: changes since the last good poll cannot be ruled out. Any reported change bumps
//! the catalog generation, so memoised answers are recomputed.
//!
//! A future for the server to spawn (`run`); nothing here spawns.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_postgres::error::SqlState;

use super::conn::Lease;
use super::error::CatalogError;
use super::track::{Change, EpochCause, Prints};
use super::{Catalog, lock};

/// Polls one [`Catalog`]'s tracked set.
pub struct Poller {
    catalog: Arc<Catalog>,
}

/// The shortest interval `run` accepts (a zero interval would spin).
const MIN_INTERVAL: Duration = Duration::from_millis(10);

impl Poller {
    pub fn new(catalog: Arc<Catalog>) -> Self {
        Self { catalog }
    }

    /// One poll of every database with tracked items. Empty = nothing changed.
    pub async fn poll_once(&self) -> Vec<Change> {
        let mut out = Vec::new();
        self.poll_where(|_| true, |changes| out = changes).await;
        out
    }

    /// One poll of the databases with tracked items that `include` accepts (those whose
    /// side connections may be open: a database no client uses is not polled, and its
    /// prints are kept for the poll that comes when one does). An unwatched database that
    /// `include` accepts is watched again once polled, or at once when nothing of it is
    /// tracked. `sink` gets the changes (even none) before any database is watched again:
    /// its cache must not be used before they are applied.
    pub async fn poll_where(&self, include: impl Fn(&str) -> bool, sink: impl FnOnce(Vec<Change>)) {
        let catalog = &self.catalog;
        let (snapshot, mut shared_due) = {
            let all = lock(&catalog.tracked).snapshot();
            let shared = all.iter().any(|(_, want)| want.shared);
            let snapshot: Vec<_> = all.into_iter().filter(|(db, _)| include(db)).collect();
            (snapshot, shared)
        };
        // Databases watched again once the changes are applied.
        let mut done = Vec::new();
        for db in catalog.unwatched() {
            if include(&db) && !snapshot.iter().any(|(d, _)| *d == db) {
                done.push(db);
            }
        }
        let mut changes = Vec::new();
        for (db, mut want) in snapshot {
            // The shared catalogs are read through whichever database answers first.
            want.shared = shared_due;
            let polled = catalog
                .call(&db, async |lease: &mut Lease| {
                    Prints::fetch(lease, &want).await
                })
                .await;
            match polled {
                Ok(prints) => {
                    shared_due &= !want.shared;
                    changes.extend(lock(&catalog.tracked).apply(&db, prints));
                    done.push(db);
                }
                Err(e) if database_is_gone(&e) => {
                    lock(&catalog.tracked).forget_database(&db);
                    catalog.forget_database(&db);
                    changes.push(Change::Epoch {
                        db: Some(db),
                        cause: EpochCause::DatabaseDropped,
                    });
                }
                Err(e) => {
                    tracing::warn!(db = %db, error = %e, "catalog poll failed");
                    changes.push(Change::Epoch {
                        db: Some(db),
                        cause: EpochCause::PollFailed(e.to_string()),
                    });
                }
            }
        }
        // Names are shed only with a generation bump (answers that relied on them go too):
        // after changes, or when they crowd their bound.
        let mut tracked = lock(&catalog.tracked);
        if !changes.is_empty() {
            tracked.forget_unused_names();
            catalog.bump_generation_with(&mut tracked);
        } else if tracked.names_crowded() && tracked.forget_unused_names() > 0 {
            catalog.bump_generation_with(&mut tracked);
        }
        drop(tracked);
        sink(changes);
        for db in done {
            catalog.mark_watched(&db);
        }
    }

    /// Polls every `interval` forever, handing each non-empty batch of changes to `sink`
    /// (which bumps tags and the epoch). Cancel by dropping the future.
    pub async fn run(self, interval: Duration, mut sink: impl FnMut(Vec<Change>)) {
        let mut ticker = tokio::time::interval(interval.max(MIN_INTERVAL));
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let changes = self.poll_once().await;
            if !changes.is_empty() {
                sink(changes);
            }
        }
    }
}

fn database_is_gone(e: &CatalogError) -> bool {
    match e {
        CatalogError::Connect { source, .. } => {
            source.code() == Some(&SqlState::INVALID_CATALOG_NAME)
        }
        _ => false,
    }
}
