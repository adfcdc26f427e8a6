//! Session worker threads: each runs a single-threaded tokio runtime (one event loop per CPU,
//! like PgBouncer's loop but on every core). An accepted connection is handed to one worker,
//! round robin, and its session lives there: both of its sockets are driven by the same
//! thread, so relaying a message costs no cross-thread wake-up.
//!
//! With one worker per CPU and `server.pin_workers` on (Linux), worker `i` is pinned to the
//! `i`-th CPU pgmemo may run on. A session can then follow its client: when the client's
//! packets keep arriving on another worker's CPU (the kernel's `SO_INCOMING_CPU`: for a
//! local client, the CPU its thread runs on), the session moves to that worker at an idle
//! point (see `session::relay`). A client thread and the worker serving it then wake each
//! other on one CPU instead of across CPUs, which on a loaded box (and in VMs, where
//! cross-CPU wake-ups are expensive) is the larger part of a cache hit's cost.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

use tokio::sync::mpsc;
use tracing::{error, warn};

pub mod affinity;

/// A session to start on a worker, built there (so its sockets register with that worker's
/// reactor).
pub type Job = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// Jobs queued per worker before `submit` waits: accepts are cheap to hold back.
const QUEUE: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("cannot start session worker thread: {0}")]
    Spawn(std::io::Error),
    #[error("all session workers have stopped")]
    Stopped,
}

pub struct Workers {
    queues: Vec<mpsc::Sender<Job>>,
    next: AtomicUsize,
    /// The CPU each worker is pinned to (empty when not pinned).
    cpus: Vec<usize>,
}

thread_local! {
    /// The index of the worker running on this thread.
    static CURRENT: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The worker this thread is, if it is one.
pub fn current() -> Option<usize> {
    CURRENT.with(Cell::get)
}

impl Workers {
    /// Starts `n` workers (`0` = one per CPU), pinned one per CPU when `pin` is set and
    /// there are exactly as many workers as CPUs pgmemo may use. They stop when the pool is
    /// dropped and their sessions have ended.
    pub fn start(n: usize, pin: bool) -> Result<Self, WorkerError> {
        let n = if n == 0 {
            thread::available_parallelism().map_or(1, |p| p.get())
        } else {
            n
        };
        let allowed = affinity::allowed_cpus();
        let cpus = if pin && n > 1 && allowed.len() == n {
            allowed
        } else {
            Vec::new()
        };
        let mut queues = Vec::with_capacity(n);
        for i in 0..n {
            let (tx, rx) = mpsc::channel::<Job>(QUEUE);
            let cpu = cpus.get(i).copied();
            thread::Builder::new()
                .name(format!("pgmemo-worker-{i}"))
                .spawn(move || {
                    if let Some(cpu) = cpu
                        && let Err(e) = affinity::pin_current_thread(cpu)
                    {
                        warn!(worker = i, cpu, error = %e, "cannot pin session worker");
                    }
                    CURRENT.with(|c| c.set(Some(i)));
                    run_worker(rx)
                })
                .map_err(WorkerError::Spawn)?;
            queues.push(tx);
        }
        Ok(Self {
            queues,
            next: AtomicUsize::new(0),
            cpus,
        })
    }

    /// The worker pinned to `cpu`, when workers are pinned.
    pub fn worker_on_cpu(&self, cpu: usize) -> Option<usize> {
        self.cpus.iter().position(|c| *c == cpu)
    }

    /// Whether workers are pinned (sessions may then follow their clients' CPUs).
    pub fn pinned(&self) -> bool {
        !self.cpus.is_empty()
    }

    pub fn len(&self) -> usize {
        self.queues.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queues.is_empty()
    }

    /// Hands `job` to the next worker (or to worker `prefer % n`); falls over to the others if
    /// one has stopped.
    pub async fn submit(&self, mut job: Job, prefer: Option<usize>) -> Result<(), WorkerError> {
        let start = prefer.unwrap_or_else(|| self.next.fetch_add(1, Ordering::Relaxed));
        for k in 0..self.queues.len() {
            let Some(q) = self.queues.get((start + k) % self.queues.len()) else {
                continue;
            };
            match q.send(job).await {
                Ok(()) => return Ok(()),
                Err(mpsc::error::SendError(back)) => job = back,
            }
        }
        Err(WorkerError::Stopped)
    }
}

fn run_worker(mut rx: mpsc::Receiver<Job>) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start a session worker runtime");
            return;
        }
    };
    let _counted = crate::telemetry::runtimes::register("workers", rt.handle().clone());
    let tasks = tokio_util::task::TaskTracker::new();
    rt.block_on(async {
        while let Some(job) = rx.recv().await {
            tasks.spawn(job());
        }
        // The pool is gone (pgmemo is stopping): let the sessions here finish; the server
        // bounds that with its shutdown deadline.
        tasks.close();
        tasks.wait().await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn jobs_run_on_worker_threads() {
        let workers = Workers::start(2, false).unwrap();
        assert!(!workers.pinned());
        assert_eq!(current(), None, "the test thread is not a worker");
        assert_eq!(workers.len(), 2);
        let (tx, mut rx) = mpsc::channel(4);
        for _ in 0..4 {
            let tx = tx.clone();
            workers
                .submit(
                    Box::new(move || {
                        Box::pin(async move {
                            let name = thread::current().name().map(str::to_owned);
                            let _ = tx.send(name).await;
                        })
                    }),
                    None,
                )
                .await
                .unwrap();
        }
        let mut names = Vec::new();
        for _ in 0..4 {
            names.push(rx.recv().await.flatten().unwrap());
        }
        names.sort();
        assert_eq!(
            names,
            [
                "pgmemo-worker-0",
                "pgmemo-worker-0",
                "pgmemo-worker-1",
                "pgmemo-worker-1"
            ]
        );
        let _ = Arc::new(workers);
    }
}
