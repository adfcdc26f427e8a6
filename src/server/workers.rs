//! Session worker threads: each runs a single-threaded tokio runtime (one event loop per CPU,
//! like PgBouncer's loop but on every core). An accepted connection is handed to one worker,
//! round robin, and its session lives there: both of its sockets are driven by the same
//! thread, so relaying a message costs no cross-thread wake-up.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

use tokio::sync::mpsc;
use tracing::error;

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
}

impl Workers {
    /// Starts `n` workers (`0` = one per CPU). They stop when the pool is dropped and their
    /// sessions have ended.
    pub fn start(n: usize) -> Result<Self, WorkerError> {
        let n = if n == 0 {
            thread::available_parallelism().map_or(1, |p| p.get())
        } else {
            n
        };
        let mut queues = Vec::with_capacity(n);
        for i in 0..n {
            let (tx, rx) = mpsc::channel::<Job>(QUEUE);
            thread::Builder::new()
                .name(format!("pgmemo-worker-{i}"))
                .spawn(move || run_worker(rx))
                .map_err(WorkerError::Spawn)?;
            queues.push(tx);
        }
        Ok(Self {
            queues,
            next: AtomicUsize::new(0),
        })
    }

    pub fn len(&self) -> usize {
        self.queues.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queues.is_empty()
    }

    /// Hands `job` to the next worker; falls over to the others if one has stopped.
    pub async fn submit(&self, mut job: Job) -> Result<(), WorkerError> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
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
        let workers = Workers::start(2).unwrap();
        assert_eq!(workers.len(), 2);
        let (tx, mut rx) = mpsc::channel(4);
        for _ in 0..4 {
            let tx = tx.clone();
            workers
                .submit(Box::new(move || {
                    Box::pin(async move {
                        let name = thread::current().name().map(str::to_owned);
                        let _ = tx.send(name).await;
                    })
                }))
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
