//! Batching of Redis reads on the lookup path: every request queued while a batch is in
//! flight goes out together in the next one (one round trip, one command or pipeline), so
//! under load Redis and the client library see one call per round trip instead of one per
//! lookup. A request only ever joins a batch sent *after* it was queued, so what it reads is
//! never older than the request (what `strict` consistency needs).
//!
//! Bounded: the queue holds `capacity` requests (beyond: refused at once, the caller treats
//! it as Redis being unavailable), a batch takes at most `max_batch`, at most
//! `MAX_IN_FLIGHT` batches are out at once, and a request still queued after `max_wait` is
//! answered with nothing instead of joining a batch. With `run` bounded by a timeout, a call
//! therefore waits at most about `max_wait` plus that timeout — without a timer per call:
//! registering one that is due before the runtime's next wake-up makes it wake its driver
//! (an eventfd write and an extra poll), which on the lookup path cost more than the
//! lookup's own work.

use std::future::Future;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::{mpsc, oneshot};

use crate::tasks::Tasks;

/// Batches one batcher has in flight at most.
const MAX_IN_FLIGHT: usize = 4;

type Request<Q, A> = (Q, oneshot::Sender<A>, Instant);

/// A handle to a batching task; cheap to clone.
pub struct Batcher<Q, A> {
    tx: mpsc::Sender<Request<Q, A>>,
}

impl<Q, A> Clone for Batcher<Q, A> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
        }
    }
}

impl<Q: Send + 'static, A: Send + 'static> Batcher<Q, A> {
    /// Spawns the task: `run` answers one batch, one answer per request in order (missing
    /// answers leave their requests unanswered, which their callers see as `None`). The task
    /// ends when every handle is dropped.
    pub fn spawn<F, Fut>(
        tasks: &Tasks,
        capacity: usize,
        max_batch: usize,
        max_wait: Duration,
        run: F,
    ) -> Batcher<Q, A>
    where
        F: Fn(Vec<Q>) -> Fut + Send + 'static,
        Fut: Future<Output = Vec<A>> + Send,
    {
        let (tx, mut rx) = mpsc::channel::<Request<Q, A>>(capacity.max(1));
        let max_batch = max_batch.max(1);
        tasks.spawn("l2-batcher", async move {
            // Batches in flight at once: a request queued while one is out goes in the next
            // one right away (pipelined on the connection) instead of waiting for the reply.
            let mut in_flight = FuturesUnordered::new();
            let mut open = true;
            while open || !in_flight.is_empty() {
                tokio::select! {
                    req = rx.recv(), if open && in_flight.len() < MAX_IN_FLIGHT => {
                        let Some(first) = req else {
                            open = false;
                            continue;
                        };
                        let now = Instant::now();
                        let mut queries = Vec::new();
                        let mut replies = Vec::new();
                        let mut next = Some(first);
                        while let Some((q, reply, queued)) = next.take() {
                            // Waited too long: dropping the sender answers "nothing".
                            if now.saturating_duration_since(queued) <= max_wait {
                                queries.push(q);
                                replies.push(reply);
                            }
                            if queries.len() < max_batch {
                                next = rx.try_recv().ok();
                            }
                        }
                        if queries.is_empty() {
                            continue;
                        }
                        let answering = run(queries);
                        in_flight.push(async move {
                            let answers = answering.await;
                            for (reply, answer) in replies.into_iter().zip(answers) {
                                // The caller may have given up (timeout, session gone): fine.
                                let _ = reply.send(answer);
                            }
                        });
                    }
                    Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
                }
            }
        });
        Batcher { tx }
    }

    /// Queues `q` and waits for its answer; `None` when the queue is full, it waited past
    /// `max_wait` in the queue, or the batch gave no answer for it.
    pub async fn call(&self, q: Q) -> Option<A> {
        let (reply, answer) = oneshot::channel();
        self.tx.try_send((q, reply, Instant::now())).ok()?;
        answer.await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_share_batches_and_each_gets_its_answer() {
        let batches = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&batches);
        let b = Batcher::spawn(
            &Tasks::new(),
            64,
            16,
            Duration::from_secs(5),
            move |qs: Vec<u32>| {
                counted.fetch_add(1, Ordering::SeqCst);
                async move {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    qs.into_iter().map(|q| q * 2).collect()
                }
            },
        );
        let calls: Vec<_> = (0..40u32)
            .map(|i| {
                let b = b.clone();
                tokio::spawn(async move { (i, b.call(i).await) })
            })
            .collect();
        for c in calls {
            let (i, answer) = c.await.expect("task");
            assert_eq!(answer, Some(i * 2));
        }
        let n = batches.load(Ordering::SeqCst);
        assert!(n < 40, "requests were not batched: {n} batches");
    }

    #[tokio::test]
    async fn a_full_queue_refuses_and_a_short_answer_is_none() {
        let b = Batcher::spawn(
            &Tasks::new(),
            1,
            1,
            Duration::from_secs(5),
            |_: Vec<u32>| async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                Vec::<u32>::new()
            },
        );
        // MAX_IN_FLIGHT batches out, one more queued: the next is refused at once.
        let mut waiting = Vec::new();
        for i in 0..=MAX_IN_FLIGHT as u32 {
            let b = b.clone();
            waiting.push(tokio::spawn(async move { b.call(i).await }));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let asked = std::time::Instant::now();
        assert_eq!(b.call(99).await, None, "queue of one is full");
        assert!(
            asked.elapsed() < Duration::from_millis(100),
            "refused at once, not answered late"
        );
        for w in waiting {
            assert_eq!(w.await.expect("task"), None, "no answer given for it");
        }
    }
}

#[cfg(test)]
mod wait_tests {
    use super::*;

    #[tokio::test]
    async fn a_request_queued_past_max_wait_is_answered_with_nothing() {
        // Each batch takes 300 ms; a request queued behind a full set of batches waits
        // longer than max_wait (100 ms) and gets nothing, at once when its turn comes,
        // instead of a batch of its own.
        let b = Batcher::spawn(
            &Tasks::new(),
            64,
            1,
            Duration::from_millis(100),
            |qs: Vec<u32>| async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                qs
            },
        );
        let mut out = Vec::new();
        for i in 0..MAX_IN_FLIGHT as u32 {
            let b = b.clone();
            out.push(tokio::spawn(async move { b.call(i).await }));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        let started = Instant::now();
        assert_eq!(b.call(99).await, None, "waited past max_wait");
        let waited = started.elapsed();
        assert!(
            waited < Duration::from_millis(450),
            "answered when its turn came, not after a batch of its own: {waited:?}"
        );
        for (i, o) in out.into_iter().enumerate() {
            assert_eq!(
                o.await.expect("task"),
                Some(i as u32),
                "the others are answered"
            );
        }
        assert_eq!(b.call(7).await, Some(7), "a fresh request is served");
    }
}
