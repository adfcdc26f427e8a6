//! Following the client's CPU: when workers are pinned one per CPU (see `workers`),
//! a session whose client keeps sending from another worker's CPU moves to that worker at
//! its next idle point, so the client thread and the worker serving it share a CPU. This
//! decides when; the relay finds the idle point and `session` does the move.

/// Client reads between two looks at the socket's incoming CPU (a `getsockopt` each).
const CHECK_EVERY: u32 = 64;
/// Looks in a row that must name the same other worker before the session moves: a client
/// thread the scheduler is merely passing through another CPU should not drag its sessions.
const STRIKES: u8 = 3;

/// One session's follow state, on the worker `worker`.
#[derive(Debug)]
pub struct Follow {
    worker: usize,
    reads: u32,
    candidate: usize,
    strikes: u8,
}

impl Follow {
    pub fn new(worker: usize) -> Self {
        Self {
            worker,
            reads: 0,
            candidate: worker,
            strikes: 0,
        }
    }

    /// A read from the client.
    pub fn on_read(&mut self) {
        self.reads = self.reads.saturating_add(1);
    }

    /// Whether it is time to look at the incoming CPU (the caller then calls [`decide`]).
    ///
    /// [`decide`]: Follow::decide
    pub fn due(&self) -> bool {
        self.reads >= CHECK_EVERY
    }

    /// With `target` the worker on the CPU the client's packets arrive on (if any): the
    /// worker to move to now, if the last [`STRIKES`] looks all named it.
    pub fn decide(&mut self, target: Option<usize>) -> Option<usize> {
        self.reads = 0;
        match target {
            Some(t) if t != self.worker => {
                if t == self.candidate {
                    self.strikes = self.strikes.saturating_add(1);
                } else {
                    self.candidate = t;
                    self.strikes = 1;
                }
                (self.strikes >= STRIKES).then_some(t)
            }
            _ => {
                self.strikes = 0;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn look(f: &mut Follow, target: Option<usize>) -> Option<usize> {
        for _ in 0..CHECK_EVERY {
            f.on_read();
        }
        assert!(f.due());
        f.decide(target)
    }

    #[test]
    fn moves_only_after_consecutive_looks_at_one_other_worker() {
        let mut f = Follow::new(0);
        assert!(!f.due());
        assert_eq!(look(&mut f, Some(1)), None);
        assert_eq!(look(&mut f, Some(1)), None);
        assert_eq!(look(&mut f, Some(1)), Some(1));
    }

    #[test]
    fn a_look_at_home_or_elsewhere_resets() {
        let mut f = Follow::new(0);
        look(&mut f, Some(1));
        look(&mut f, Some(1));
        assert_eq!(look(&mut f, Some(0)), None, "back home");
        assert_eq!(look(&mut f, Some(1)), None);
        assert_eq!(look(&mut f, Some(2)), None, "another candidate starts over");
        assert_eq!(look(&mut f, Some(2)), None);
        assert_eq!(look(&mut f, None), None, "unknown CPU");
        assert_eq!(look(&mut f, Some(2)), None);
    }
}
