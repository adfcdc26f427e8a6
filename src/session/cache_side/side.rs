//! A session's part in keeping pgmemo's side connections out of the way (see `crate::side`):
//! its presence in its database while it lives, and the release of the databases a
//! statement needs free (`DROP DATABASE`, `ALTER DATABASE ... RENAME` / `SET TABLESPACE`,
//! `CREATE DATABASE ... TEMPLATE`) before the statement is forwarded, in the simple and the
//! extended protocol. The frame is held like one whose plan is computed ([`Hold::Plan`]);
//! the plan future runs the release first (`planning`), and the frame, shown again, passes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;

use super::Hold;
use crate::context::AppContext;
use crate::side::{Presence, SessionGuard};

/// The release a held frame waits for.
pub type ReleaseFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// One session's presence and pending release.
pub struct SessionSide {
    guard: SessionGuard,
    /// The text whose release ran (or runs): shown again, it passes once.
    released: Option<Bytes>,
    /// The release for the held text, taken by its plan future.
    pending: Option<(Bytes, ReleaseFuture)>,
}

impl SessionSide {
    pub fn new(presence: &Arc<Presence>, database: &str) -> Self {
        Self {
            guard: presence.enter(database),
            released: None,
            pending: None,
        }
    }

    /// For a client text about to be forwarded: a hold when it needs databases free and
    /// their release has not run for it yet.
    pub fn hold(&mut self, app: &Arc<AppContext>, sql: &[u8]) -> Option<Hold> {
        if self.released.as_deref() == Some(sql) {
            self.released = None;
            return None;
        }
        let needs = crate::sql::databases_needing_free(sql);
        if needs.is_empty() {
            return None;
        }
        let text = Bytes::copy_from_slice(sql);
        let app = Arc::clone(app);
        let db = self.guard.database().to_owned();
        let release: ReleaseFuture = Box::pin(async move {
            crate::side::release::release(&app, &db, &needs).await;
        });
        self.pending = Some((text.clone(), release));
        self.released = Some(text.clone());
        Some(Hold::Plan(text))
    }

    /// The release the plan future for `sql` runs first.
    pub fn take_release(&mut self, sql: &[u8]) -> Option<ReleaseFuture> {
        match &self.pending {
            Some((text, _)) if text.as_ref() == sql => self.pending.take().map(|(_, r)| r),
            _ => None,
        }
    }
}
