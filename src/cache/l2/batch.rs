//! Batching of Redis reads on the lookup path: every request queued while a batch is in
//! flight goes out together in the next one (one round trip, one command or pipeline), so
//! under load Redis and the client library see one call per round trip instead of one per
//! lookup. A request only ever joins a batch sent *after* it was queued, so what it reads is
//! never older than the request (what `strict` consistency needs).
//!
//! Bounded: the queue holds `capacity` requests (beyond: refused at once, the caller treats
//! it as Redis being unavailable) and a batch takes at most `max_batch`.

use std::future::Future;

use tokio::sync::{mpsc, oneshot};

type Request<Q, A> = (Q, oneshot::Sender<A>);

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
    pub fn spawn<F, Fut>(capacity: usize, max_batch: usize, run: F) -> Batcher<Q, A>
    where
        F: Fn(Vec<Q>) -> Fut + Send + 'static,
        Fut: Future<Output = Vec<A>> + Send,
    {
        let (tx, mut rx) = mpsc::channel::<Request<Q, A>>(capacity.max(1));
        let max_batch = max_batch.max(1);
        tokio::spawn(async move {
            let mut queries = Vec::with_capacity(max_batch);
            let mut replies = Vec::with_capacity(max_batch);
            while let Some((q, reply)) = rx.recv().await {
                queries.push(q);
                replies.push(reply);
                while queries.len() < max_batch {
                    match rx.try_recv() {
                        Ok((q, reply)) => {
                            queries.push(q);
                            replies.push(reply);
                        }
                        Err(_) => break,
                    }
                }
                let answers = run(std::mem::take(&mut queries)).await;
                for (reply, answer) in replies.drain(..).zip(answers) {
                    // The caller may have given up (timeout, session gone): fine.
                    let _ = reply.send(answer);
                }
                replies.clear();
            }
        });
        Batcher { tx }
    }

    /// Queues `q` and waits for its answer; `None` when the queue is full or the batch
    /// gave no answer for it.
    pub async fn call(&self, q: Q) -> Option<A> {
        let (reply, answer) = oneshot::channel();
        self.tx.try_send((q, reply)).ok()?;
        answer.await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_share_batches_and_each_gets_its_answer() {
        let batches = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&batches);
        let b = Batcher::spawn(64, 16, move |qs: Vec<u32>| {
            counted.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                qs.into_iter().map(|q| q * 2).collect()
            }
        });
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
        let b = Batcher::spawn(1, 1, |qs: Vec<u32>| async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            qs.into_iter().skip(1).collect()
        });
        let first = tokio::spawn({
            let b = b.clone();
            async move { b.call(1).await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let second = tokio::spawn({
            let b = b.clone();
            async move { b.call(2).await }
        });
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(b.call(3).await, None, "queue of one is full");
        assert_eq!(first.await.expect("task"), None, "no answer given for it");
        assert_eq!(second.await.expect("task"), None);
    }
}
