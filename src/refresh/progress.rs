//! Where warming is (issue 19), for `/readyz`: pgmemo reports ready only once the warming
//! at start-up has ended or `warming.timeout` has passed, so an orchestrator sends clients
//! to an instance whose cache already holds the warmed results. Warming after a whole-cache
//! flush or another whole-cache invalidation is reported too, but never makes a running
//! instance unready (taking it out of service because its cache was flushed would turn a
//! flush into an outage).

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;

/// The warming part of `/readyz`'s body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WarmingReport {
    /// `off` (nothing to warm), `running`, `done`, or `timed_out` (`warming.timeout` passed
    /// before every query ran).
    pub state: &'static str,
    /// Whether this run holds readiness back (only the one at start-up does, until it ends
    /// or times out).
    pub gates_readiness: bool,
    /// Why it runs: `start`, `flush` or `invalidation`; `null` before the first run.
    pub trigger: Option<&'static str>,
    /// Queries of this run: in all, finished (whatever their result), and stored.
    pub queries: usize,
    pub finished: usize,
    pub stored: usize,
}

impl Default for WarmingReport {
    /// Nothing to warm (yet).
    fn default() -> Self {
        Self {
            state: "off",
            gates_readiness: false,
            trigger: None,
            queries: 0,
            finished: 0,
            stored: 0,
        }
    }
}

#[derive(Debug)]
struct State {
    report: WarmingReport,
    /// When a gating run stops gating whatever its progress.
    deadline: Option<Instant>,
}

/// Warming's progress, shared by the warming task (which writes it) and `/readyz`.
#[derive(Debug)]
pub struct WarmingProgress {
    state: Mutex<State>,
}

impl Default for WarmingProgress {
    fn default() -> Self {
        Self {
            state: Mutex::new(State {
                report: WarmingReport::default(),
                deadline: None,
            }),
        }
    }
}

/// Why a warming run starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// pgmemo started (`warming.at_start`): gates readiness.
    Start,
    /// The whole cache was flushed: does not gate readiness.
    Flush,
    /// Another whole-cache invalidation (DDL through pgmemo, a change stream resynchronised,
    /// a catalog or server configuration change): does not gate readiness.
    Invalidation,
}

impl Trigger {
    /// The label in `/readyz` and in `pgmemo_warm_runs_total`.
    pub fn label(self) -> &'static str {
        match self {
            Trigger::Start => "start",
            Trigger::Flush => "flush",
            Trigger::Invalidation => "invalidation",
        }
    }
}

impl WarmingProgress {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A run of `queries` starts, bounded by `timeout`.
    pub fn begin(&self, trigger: Trigger, queries: usize, timeout: Duration) {
        let gates = trigger == Trigger::Start;
        let mut s = self.lock();
        s.report = WarmingReport {
            state: "running",
            gates_readiness: gates,
            trigger: Some(trigger.label()),
            queries,
            finished: 0,
            stored: 0,
        };
        s.deadline = gates.then(|| Instant::now() + timeout);
    }

    /// One query of the run finished (`stored`: its result is in the cache).
    pub fn finished_one(&self, stored: bool) {
        let mut s = self.lock();
        s.report.finished += 1;
        s.report.stored += usize::from(stored);
    }

    /// The run ended: every query ran, or (`timed_out`) the timeout cut it short.
    pub fn end(&self, timed_out: bool) {
        let mut s = self.lock();
        s.report.state = if timed_out { "timed_out" } else { "done" };
        s.report.gates_readiness = false;
        s.deadline = None;
    }

    /// The report now. A gating run whose timeout has passed no longer gates, even before
    /// its task has noticed (readiness must not depend on a task being scheduled).
    pub fn report(&self) -> WarmingReport {
        let mut s = self.lock();
        if s.deadline.is_some_and(|d| Instant::now() >= d) {
            s.report.state = "timed_out";
            s.report.gates_readiness = false;
            s.deadline = None;
        }
        s.report.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_run_gates_until_it_ends_and_a_flush_run_never() {
        let p = WarmingProgress::default();
        assert!(!p.report().gates_readiness);
        assert_eq!(p.report().state, "off");
        p.begin(Trigger::Start, 2, Duration::from_secs(60));
        assert!(p.report().gates_readiness);
        p.finished_one(true);
        p.finished_one(false);
        let r = p.report();
        assert_eq!((r.finished, r.stored, r.state), (2, 1, "running"));
        p.end(false);
        let r = p.report();
        assert!(!r.gates_readiness);
        assert_eq!(r.state, "done");

        p.begin(Trigger::Flush, 1, Duration::from_secs(60));
        let r = p.report();
        assert!(!r.gates_readiness);
        assert_eq!((r.state, r.trigger), ("running", Some("flush")));

        p.begin(Trigger::Invalidation, 1, Duration::from_secs(60));
        let r = p.report();
        assert!(!r.gates_readiness, "only the start-up run gates");
        assert_eq!((r.state, r.trigger), ("running", Some("invalidation")));
    }

    #[test]
    fn the_timeout_ends_the_gate_by_itself() {
        let p = WarmingProgress::default();
        p.begin(Trigger::Start, 1, Duration::from_millis(20));
        assert!(p.report().gates_readiness);
        std::thread::sleep(Duration::from_millis(40));
        let r = p.report();
        assert!(!r.gates_readiness);
        assert_eq!(r.state, "timed_out");
        // The task's own end, later, keeps it so.
        p.end(true);
        assert_eq!(p.report().state, "timed_out");
    }
}
