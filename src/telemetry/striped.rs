//! Counters bumped on the hot path by every session worker without sharing a cache line: one
//! stripe per thread (threads take stripes round robin), summed when read. A counter shared
//! by two cores moves its cache line between them on every increment, which at cache-hit
//! rates costs more than the work being counted.
//!
//! The exported Prometheus counter of the same name is set from the sums by [`sync`], which
//! the admin server calls before rendering `/metrics`, so a scrape is exact. Counters are
//! registered process-wide by name and labels; instances with the same name and labels are
//! summed (a counter dropped with its owner keeps its last exported value: Prometheus
//! counters never go down).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

const STRIPES: usize = 16;

type Label = (&'static str, &'static str);

/// One stripe on its own cache line (128 bytes: adjacent-line prefetch pairs lines).
#[repr(align(128))]
#[derive(Default)]
struct Stripe(AtomicU64);

static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static MY_STRIPE: usize = NEXT_STRIPE.fetch_add(1, Ordering::Relaxed) % STRIPES;
}

/// Registered counters, for [`sync`].
static REGISTRY: Mutex<Vec<Weak<Striped>>> = Mutex::new(Vec::new());

/// A counter striped per thread, exported as `name{labels}`.
pub struct Striped {
    stripes: [Stripe; STRIPES],
    name: &'static str,
    labels: Vec<Label>,
}

impl Striped {
    /// A new counter at zero, registered for export.
    pub fn register(name: &'static str, labels: &[Label]) -> Arc<Self> {
        let counter = Arc::new(Self {
            stripes: Default::default(),
            name,
            labels: labels.to_vec(),
        });
        let mut registry = REGISTRY.lock().unwrap_or_else(PoisonError::into_inner);
        registry.retain(|w| w.strong_count() > 0);
        registry.push(Arc::downgrade(&counter));
        counter
    }

    pub fn add(&self, n: u64) {
        let i = MY_STRIPE.try_with(|i| *i).unwrap_or(0);
        if let Some(stripe) = self.stripes.get(i) {
            stripe.0.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn inc(&self) {
        self.add(1);
    }

    /// The sum over every thread.
    pub fn get(&self) -> u64 {
        self.stripes
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .fold(0u64, u64::wrapping_add)
    }
}

/// Sets every exported counter from the striped sums (before a `/metrics` render).
pub fn sync() {
    let live: Vec<Arc<Striped>> = {
        let registry = REGISTRY.lock().unwrap_or_else(PoisonError::into_inner);
        registry.iter().filter_map(Weak::upgrade).collect()
    };
    let mut sums: Vec<(&'static str, &[Label], u64)> = Vec::new();
    for c in &live {
        match sums
            .iter_mut()
            .find(|(n, l, _)| *n == c.name && *l == c.labels.as_slice())
        {
            Some(entry) => entry.2 = entry.2.wrapping_add(c.get()),
            None => sums.push((c.name, c.labels.as_slice(), c.get())),
        }
    }
    for (name, labels, sum) in sums {
        let labels: Vec<metrics::Label> = labels
            .iter()
            .map(|(k, v)| metrics::Label::new(*k, *v))
            .collect();
        metrics::counter!(name, labels).absolute(sum);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_increments_from_every_thread() {
        let c = Striped::register("pgmemo_test_striped_total", &[]);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..1000 {
                        c.inc();
                    }
                });
            }
        });
        c.add(5);
        assert_eq!(c.get(), 8005);
    }
}
