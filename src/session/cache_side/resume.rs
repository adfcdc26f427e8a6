//! What a held frame carries between its showings. The relay holds one client frame at a
//! time (for a plan, another session's fill or a shared-tier read) and shows it again when
//! that ends: what it waited for is a [`Resume`], taken by the showing that uses it and
//! dropped by any other frame. On the backend side, a missed extended group has pgmemo's own
//! Describe injected and its reply stripped ([`Describe`]), and a commit's acknowledgement
//! may be held until the change stream applied it, Redis has its bump, and its background
//! write-through re-runs ended ([`AckHold`]).

use std::sync::Arc;

use super::ack::AckFuture;
use super::wait::WaitResult;
use crate::cache::tiers::SharedReady;
use crate::planner::plan::Plan;

/// What the frame at the head of the client buffer waited for.
pub(super) enum Resume {
    /// Its plan, computed off the relay's hot path.
    Plan(Arc<Plan>),
    /// Another session's fill, or a shared-tier read, ended.
    Waited(WaitResult),
    /// A shared-tier read's answer, for the lookup of this showing.
    Shared(SharedReady),
}

/// The held frame's [`Resume`], if any.
#[derive(Default)]
pub(super) struct Held(Option<Resume>);

impl Held {
    pub(super) fn set(&mut self, r: Resume) {
        self.0 = Some(r);
    }

    /// A frame that cannot use a wait's result came instead: the result is stale. A plan
    /// stays (a Parse takes it, and it is checked against the SQL when taken).
    pub(super) fn drop_waits(&mut self) {
        if !matches!(self.0, Some(Resume::Plan(_))) {
            self.0 = None;
        }
    }

    pub(super) fn take_plan(&mut self) -> Option<Arc<Plan>> {
        if !matches!(self.0, Some(Resume::Plan(_))) {
            return None;
        }
        match self.0.take() {
            Some(Resume::Plan(p)) => Some(p),
            _ => None,
        }
    }

    pub(super) fn take_waited(&mut self) -> Option<WaitResult> {
        if !matches!(self.0, Some(Resume::Waited(_))) {
            return None;
        }
        match self.0.take() {
            Some(Resume::Waited(w)) => Some(w),
            _ => None,
        }
    }

    /// A write-behind acknowledgement (see `behind`): taken before anything else is
    /// decided for the frames it answers, so that nothing (a new plan, a forward) can make
    /// the queued write run a second time.
    pub(super) fn take_queued(&mut self) -> Option<(bytes::Bytes, Arc<Plan>)> {
        if !matches!(self.0, Some(Resume::Waited(WaitResult::Queued(..)))) {
            return None;
        }
        match self.0.take() {
            Some(Resume::Waited(WaitResult::Queued(answer, plan))) => Some((answer, plan)),
            _ => None,
        }
    }

    pub(super) fn take_shared(&mut self) -> Option<SharedReady> {
        if !self.has_shared() {
            return None;
        }
        match self.0.take() {
            Some(Resume::Shared(r)) => Some(r),
            _ => None,
        }
    }

    pub(super) fn has_shared(&self) -> bool {
        matches!(self.0, Some(Resume::Shared(_)))
    }
}

/// pgmemo's own Describe behind a missed extended group's Bind, so the stored entry has the
/// RowDescription a later client may ask for even though this one did not.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) enum Describe {
    #[default]
    No,
    /// Send it after the group's Bind.
    AfterBind,
    /// Sent: its reply (RowDescription or NoData) is captured, not relayed.
    StripReply,
}

/// A commit's acknowledgement held until the change stream applied the commit, the shared
/// tier has its bump, and its write-through re-runs in the background ended (each optional,
/// chained into one future).
#[derive(Default)]
pub(super) enum AckHold {
    #[default]
    No,
    /// The relay is to hold the frame just shown and poll this first.
    Due(AckFuture),
    /// The wait ended: the next frame shown is the held one, relayed as is.
    Released,
}

impl AckHold {
    /// The wait due, if any (the state goes back to [`AckHold::No`]).
    pub(super) fn take_due(&mut self) -> Option<AckFuture> {
        match std::mem::take(self) {
            AckHold::Due(f) => Some(f),
            other => {
                *self = other;
                None
            }
        }
    }

    /// The frame shown now is the released acknowledgement (consumed).
    pub(super) fn take_released(&mut self) -> bool {
        if matches!(self, AckHold::Released) {
            *self = AckHold::No;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn plan() -> Arc<Plan> {
        Arc::new(Plan::without_context(
            Bytes::from_static(b"SELECT 1"),
            crate::planner::bypass::BypassReason::NotSelect,
        ))
    }

    #[test]
    fn a_resume_is_taken_only_by_the_showing_that_uses_it() {
        let mut held = Held::default();
        held.set(Resume::Plan(plan()));
        assert!(
            held.take_waited().is_none(),
            "a plan is not a wait's result"
        );
        assert!(held.take_shared().is_none());
        assert!(held.take_plan().is_some());
        assert!(held.take_plan().is_none(), "taken once");

        held.set(Resume::Waited(WaitResult::RunOwn));
        assert!(held.take_plan().is_none());
        assert!(matches!(held.take_waited(), Some(WaitResult::RunOwn)));
    }

    #[test]
    fn another_frame_drops_a_wait_but_keeps_a_plan() {
        let mut held = Held::default();
        held.set(Resume::Waited(WaitResult::RunOwn));
        held.drop_waits();
        assert!(
            held.take_waited().is_none(),
            "stale once another frame came"
        );
        held.set(Resume::Plan(plan()));
        held.drop_waits();
        assert!(held.take_plan().is_some(), "a Parse still takes its plan");
    }

    #[test]
    fn an_acknowledgement_is_released_once() {
        let mut ack = AckHold::default();
        assert!(ack.take_due().is_none());
        ack = AckHold::Due(Box::pin(async {}));
        assert!(!ack.take_released());
        assert!(ack.take_due().is_some());
        assert!(ack.take_due().is_none());
        ack = AckHold::Released;
        assert!(ack.take_released());
        assert!(!ack.take_released(), "the held frame is relayed once");
    }
}
