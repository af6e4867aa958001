//! Concurrency limit with a bounded queue: up to `max_concurrent` requests run, up to
//! `max_queued` wait (for at most `queue_timeout`), the rest get 503 with `Retry-After`.
//! Backpressure here keeps latency bounded instead of letting a GPU's queue grow unseen.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::api::ApiError;

pub struct Admission {
    permits: Arc<Semaphore>,
    waiting: AtomicUsize,
    max_queued: usize,
    queue_timeout: Duration,
}

impl Admission {
    pub fn new(max_concurrent: usize, max_queued: usize, queue_timeout: Duration) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max_concurrent.max(1))),
            waiting: AtomicUsize::new(0),
            max_queued,
            queue_timeout,
        }
    }

    pub fn queued(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    pub async fn admit(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return Ok(permit);
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.max_queued {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(ApiError::overloaded("The server is at capacity and its queue is full: retry later.", 1));
        }
        let acquired = tokio::time::timeout(self.queue_timeout, self.permits.clone().acquire_owned()).await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        match acquired {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) => Err(ApiError::unavailable("The server is shutting down.")),
            Err(_) => Err(ApiError::overloaded(
                format!(
                    "The request waited {} s in the queue without a free slot: retry later.",
                    self.queue_timeout.as_secs()
                ),
                self.queue_timeout.as_secs().max(1),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn queue_then_refuse() {
        let a = Admission::new(1, 1, Duration::from_millis(50));
        let first = a.admit().await.unwrap();
        // Second waits in the queue and times out; while it waits a third is refused at once.
        let (second, third) = tokio::join!(a.admit(), async {
            tokio::task::yield_now().await;
            a.admit().await
        });
        assert_eq!(second.unwrap_err().status, 503);
        let third = third.unwrap_err();
        assert_eq!(third.status, 503);
        assert!(third.message.contains("queue is full"), "{}", third.message);
        drop(first);
        assert!(a.admit().await.is_ok());
    }
}
