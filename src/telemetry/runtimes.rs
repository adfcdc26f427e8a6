//! Tasks alive on pgmemo's tokio runtimes (the main one and each session worker's), exported
//! as `pgmemo_runtime_alive_tasks{runtime}` when `/metrics` is scraped. A task leaked per
//! session, reconnect or reload shows here long before memory or thread counts move, so a
//! soak watches this gauge for growth.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use tokio::runtime::Handle;

use super::names;

/// The runtimes counted: (registration id, `runtime` label, handle).
static REGISTRY: Mutex<Vec<(u64, &'static str, Handle)>> = Mutex::new(Vec::new());
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// Keeps a runtime counted until dropped.
pub struct Registration(u64);

/// Counts the tasks of `handle`'s runtime under the label `runtime` (runtimes with the same
/// label are summed) until the returned registration is dropped.
pub fn register(runtime: &'static str, handle: Handle) -> Registration {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let mut registry = REGISTRY.lock().unwrap_or_else(PoisonError::into_inner);
    registry.push((id, runtime, handle));
    Registration(id)
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut registry = REGISTRY.lock().unwrap_or_else(PoisonError::into_inner);
        registry.retain(|(id, _, _)| *id != self.0);
    }
}

/// Alive tasks per `runtime` label, over the registered runtimes.
pub fn alive_tasks() -> BTreeMap<&'static str, usize> {
    let registry = REGISTRY.lock().unwrap_or_else(PoisonError::into_inner);
    let mut sums = BTreeMap::new();
    for (_, runtime, handle) in registry.iter() {
        *sums.entry(*runtime).or_insert(0) += handle.metrics().num_alive_tasks();
    }
    sums
}

/// Sets the gauge from the runtimes' current counts; the admin server calls it before
/// rendering `/metrics`, so a scrape is current.
pub fn sync() {
    for (runtime, n) in alive_tasks() {
        metrics::gauge!(names::RUNTIME_ALIVE_TASKS, "runtime" => runtime).set(n as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_a_runtimes_tasks_until_unregistered() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let registration = register("test-runtime", rt.handle().clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = rt.spawn(async move {
            let _ = rx.await;
        });
        assert_eq!(alive_tasks().get("test-runtime"), Some(&1));
        tx.send(()).unwrap();
        rt.block_on(task).unwrap();
        assert_eq!(alive_tasks().get("test-runtime"), Some(&0));
        drop(registration);
        assert_eq!(alive_tasks().get("test-runtime"), None);
    }
}
