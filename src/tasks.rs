//! Named background tasks. Everything pgmemo runs in the background besides client
//! sessions (the catalog poller, the change streams and their election, the shared tier's
//! policy check, writer, subscription, lookup batchers and bump retries, the signal
//! handlers) is spawned here under a name, so that shutdown waits for all of it, bounded by
//! `server.shutdown_timeout`, and says by name what did not stop. Tasks stop on their own
//! signal (the server's shutdown token, or their handles being dropped); this registry only
//! counts and waits. Sessions have their own tracker in `server`.
//!
//! Work handed to such a task can carry a [`InFlight`] token, so that whoever handed it can
//! wait until it ended ([`Ended`]): a write's acknowledgement waits for the refreshes it
//! handed to the background refresher, and for their Redis writes.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio_util::task::TaskTracker;

/// A cloneable handle on the registry (clones share it).
#[derive(Clone)]
pub struct Tasks {
    inner: Arc<Inner>,
}

struct Inner {
    tracker: TaskTracker,
    /// Running tasks by name.
    running: Mutex<BTreeMap<&'static str, usize>>,
}

impl Default for Tasks {
    fn default() -> Self {
        Tasks {
            inner: Arc::new(Inner {
                tracker: TaskTracker::new(),
                running: Mutex::new(BTreeMap::new()),
            }),
        }
    }
}

/// Counts its task as running until the task's future is dropped (finished, or its
/// runtime shut down).
struct Running {
    inner: Arc<Inner>,
    name: &'static str,
}

impl Drop for Running {
    fn drop(&mut self) {
        let mut running = self
            .inner
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = running.get_mut(self.name) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                running.remove(self.name);
            }
        }
    }
}

impl Tasks {
    pub fn new() -> Self {
        Self::default()
    }

    /// Spawns `task` on the current runtime under `name`.
    pub fn spawn<F>(&self, name: &'static str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let running = self.running(name);
        self.inner.tracker.spawn(async move {
            let _running = running;
            task.await;
        });
    }

    /// Spawns `task` on `runtime` under `name` (from code that may run outside a runtime).
    pub fn spawn_on<F>(&self, runtime: &tokio::runtime::Handle, name: &'static str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let running = self.running(name);
        self.inner.tracker.spawn_on(
            async move {
                let _running = running;
                task.await;
            },
            runtime,
        );
    }

    fn running(&self, name: &'static str) -> Running {
        *self
            .inner
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(name)
            .or_default() += 1;
        Running {
            inner: Arc::clone(&self.inner),
            name,
        }
    }

    /// The tasks running now, by name, with how many of each.
    pub fn list(&self) -> Vec<(&'static str, usize)> {
        self.inner
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(name, n)| (*name, *n))
            .collect()
    }

    /// Waits up to `within` for every task to end (their stop signals must have been
    /// given); on timeout, the ones still running.
    pub async fn wait(&self, within: Duration) -> Result<(), Vec<(&'static str, usize)>> {
        self.inner.tracker.close();
        match tokio::time::timeout(within, self.inner.tracker.wait()).await {
            Ok(()) => Ok(()),
            Err(_) => Err(self.list()),
        }
    }
}

/// Carried by a piece of work handed to a background task (a refresh job, then the Redis
/// write of its result; clones go along with each part). The work has ended, however it
/// ended (done, failed, refused by a full queue, dropped unrun at shutdown), once every
/// clone is dropped: nothing is ever sent, the drop is the signal, so no path can forget
/// to give it. One pointer in size.
#[derive(Debug, Clone)]
pub struct InFlight {
    _sender: tokio::sync::mpsc::Sender<()>,
}

/// The waiting side of an [`InFlight`] token.
#[derive(Debug)]
pub struct Ended(tokio::sync::mpsc::Receiver<()>);

/// A token for one piece of work, and what ends when it has ended.
pub fn in_flight() -> (InFlight, Ended) {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    (InFlight { _sender: tx }, Ended(rx))
}

impl Ended {
    /// Resolves once every clone of the token was dropped.
    pub async fn wait(mut self) {
        // Nothing is ever sent: `None` comes when the last sender is gone.
        while self.0.recv().await.is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_has_ended_when_every_clone_of_its_token_is_dropped() {
        let (token, ended) = in_flight();
        let part = token.clone();
        let mut wait = Box::pin(ended.wait());
        drop(token);
        let early = tokio::time::timeout(Duration::from_millis(20), wait.as_mut()).await;
        assert!(early.is_err(), "a clone is still held");
        drop(part);
        tokio::time::timeout(Duration::from_secs(5), wait)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn tasks_are_listed_by_name_until_they_end() {
        let tasks = Tasks::new();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tasks.spawn("waiter", async move {
            let _ = rx.await;
        });
        tasks.spawn("quick", async {});
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
        assert_eq!(tasks.list(), [("waiter", 1)]);
        assert_eq!(
            tasks.wait(Duration::from_millis(20)).await,
            Err(vec![("waiter", 1)])
        );
        tx.send(()).unwrap();
        assert_eq!(tasks.wait(Duration::from_secs(5)).await, Ok(()));
        assert!(tasks.list().is_empty());
    }

    #[test]
    fn a_task_dropped_with_its_runtime_counts_as_ended() {
        let tasks = Tasks::new();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        tasks.spawn_on(rt.handle(), "forever", std::future::pending());
        assert_eq!(tasks.list(), [("forever", 1)]);
        drop(rt);
        assert!(tasks.list().is_empty());
    }
}
