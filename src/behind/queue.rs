//! A database's durable queue, of either kind: the local [`Journal`] (numbered by this
//! process, applied by it) or the shared [`StreamQueue`] (numbered by Redis, applied by the
//! lease holder among the instances). Both give dense increasing numbers, which is all the
//! flusher's ordering and the progress row rely on.

use std::sync::Arc;

use bytes::Bytes;

use super::journal::{Journal, JournalError};
use super::stream::{StreamError, StreamQueue};

#[derive(Clone)]
pub(crate) enum Queue {
    Journal(Arc<Journal>),
    Stream(Arc<StreamQueue>),
}

/// One write appended: its number, and (stream) the queue incarnation it was numbered in.
pub(crate) struct Appended {
    pub seq: u64,
    pub id: Option<String>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum QueueError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Stream(#[from] StreamError),
}

impl Queue {
    /// Appends one record; resolves once it is durable (journal) or Redis has it (stream).
    /// The record is queued by this call (journal: numbered in call order).
    pub(crate) fn append(
        &self,
        record: Bytes,
    ) -> impl std::future::Future<Output = Result<Appended, QueueError>> + Send + 'static + use<>
    {
        let fut: std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<Appended, QueueError>> + Send>,
        > = match self {
            Queue::Journal(j) => {
                let f = j.append(record);
                Box::pin(async move {
                    Ok(Appended {
                        seq: f.await?,
                        id: None,
                    })
                })
            }
            Queue::Stream(s) => {
                let f = s.append(record);
                Box::pin(async move {
                    let (seq, id) = f.await?;
                    Ok(Appended { seq, id: Some(id) })
                })
            }
        };
        fut
    }

    pub(crate) fn stream(&self) -> Option<&Arc<StreamQueue>> {
        match self {
            Queue::Stream(s) => Some(s),
            Queue::Journal(_) => None,
        }
    }
}
