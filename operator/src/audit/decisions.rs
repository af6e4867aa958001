//! The decisions this replica has seen sealed in the chain it verified: its own file, its
//! own swaps and the head lines it checked. A decision is skipped as "already recorded"
//! only when its record is here, never because the head lists its id: whoever can write
//! the head ConfigMap could list the id of a decision the leader is about to take and so
//! make it act unrecorded.

use std::collections::{HashSet, VecDeque};

use serde_json::Value;

use super::head::decision_digest;

/// Decisions remembered: far more than one reconcile's retries after a crash can need (a
/// retry comes seconds later), bounded so a long-lived leader's memory stays flat.
const LIMIT: usize = 4096;

#[derive(Default)]
pub struct Decisions {
    order: VecDeque<String>,
    known: HashSet<String>,
}

impl Decisions {
    /// Whether the decision with this digest is sealed in the verified chain.
    pub fn contains(&self, digest: &str) -> bool {
        self.known.contains(digest)
    }

    /// Remembers the decision of a sealed, verified line (if it carries one).
    pub fn note_line(&mut self, line: &str) {
        let Ok(sealed) = serde_json::from_str::<Value>(line) else { return };
        if let Some(decision) = sealed["record"]["decision"].as_str() {
            self.note(decision_digest(decision));
        }
    }

    /// Remembers a decision digest.
    pub fn note(&mut self, digest: String) {
        if self.known.insert(digest.clone()) {
            self.order.push_back(digest);
        }
        while self.order.len() > LIMIT {
            if let Some(old) = self.order.pop_front() {
                self.known.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sealed_decisions_are_known_and_the_oldest_are_forgotten() {
        let mut decisions = Decisions::default();
        decisions.note_line(
            r#"{"seq":1,"prev":"0","hash":"1","record":{"event":"e","decision":"uid:2:revision-created:2"}}"#,
        );
        decisions.note_line(r#"{"seq":2,"prev":"1","hash":"2","record":{"event":"admission"}}"#);
        assert!(decisions.contains(&decision_digest("uid:2:revision-created:2")));
        assert!(!decisions.contains(&decision_digest("uid:2:rollout-started:2")));
        for i in 0..LIMIT {
            decisions.note(format!("d{i}"));
        }
        assert!(!decisions.contains(&decision_digest("uid:2:revision-created:2")));
        assert!(decisions.contains("d0") && decisions.contains(&format!("d{}", LIMIT - 1)));
    }
}
