//! Delta debugging of a mismatching conversation: drop chunks of steps (halves, quarters,
//! ... single steps) while the two sides still differ, within a bounded number of trials,
//! so the report shows the few steps that matter.

use super::Pair;
use super::compare::Diff;
use super::conversation::Step;

/// At most this many re-runs per mismatch (each resets and runs cold and warm on both sides).
const MAX_TRIALS: usize = 300;

/// The smallest failing sub-sequence found, and its first difference.
pub async fn minimise(
    pair: &Pair,
    mut steps: Vec<Step>,
) -> (Vec<Step>, Option<(&'static str, Diff)>) {
    let mut last = pair.check(&steps).await.diff;
    if last.is_none() {
        // Not reproducible on its own (it depended on something else): report it as is.
        return (steps, None);
    }
    let mut n = 2usize;
    let mut trials = 0;
    while steps.len() >= 2 && trials < MAX_TRIALS {
        let chunk = steps.len().div_ceil(n);
        let mut reduced = false;
        let mut start = 0;
        while start < steps.len() && trials < MAX_TRIALS {
            let end = (start + chunk).min(steps.len());
            let candidate: Vec<Step> = steps[..start]
                .iter()
                .chain(&steps[end..])
                .cloned()
                .collect();
            trials += 1;
            if let Some(d) = pair.check(&candidate).await.diff {
                steps = candidate;
                last = Some(d);
                reduced = true;
                break;
            }
            start = end;
        }
        if reduced {
            n = (n - 1).max(2);
        } else if n >= steps.len() {
            break;
        } else {
            n = (n * 2).min(steps.len());
        }
    }
    (steps, last)
}
