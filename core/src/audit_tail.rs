//! What a copy of a chain's last lines (the operator's audit head in the API server) proves
//! to a replica that has verified the chain up to some record of its own.
//!
//! Whoever can write the head can write anything into it, so nothing in it is read: every
//! line is verified as a link of [`crate::audit_chain`] (its hash recomputed, each line
//! linking to the one before), and the lines are then checked against the chain the replica
//! verified itself (its file, or the head it swapped last). A tail that contradicts that
//! chain (a record it knows with another hash, or a head behind it) is refused; lines after
//! it are used only when they continue it link by link.

use serde::Deserialize;

use crate::audit_chain::{ChainState, VerifyError, verify_from};

/// Consecutive sealed lines of one chain, each verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedTail {
    /// Where the chain stood before the first line (the last line's state for an empty tail).
    pub before: ChainState,
    /// Where it stands after the last line.
    pub last: ChainState,
    /// Each line with its sequence number and hash, oldest first, each ending in `\n`.
    lines: Vec<(u64, String, String)>,
}

/// How a tail contradicts the chain a replica verified.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Contradiction {
    /// The tail ends before the replica's last record: the head was reset or rolled back.
    #[error("the head is at record {tail_seq} but this replica has verified the chain up to record {known_seq}")]
    Behind { known_seq: u64, tail_seq: u64 },
    /// The tail holds a record the replica knows, with another hash: a rewritten history.
    #[error("the head's record {seq} has hash {tail_hash}, but the chain this replica verified has {known_hash} there")]
    Forked { seq: u64, known_hash: String, tail_hash: String },
}

#[derive(Deserialize)]
struct Link {
    seq: u64,
    prev: String,
    hash: String,
}

/// Verifies `text` (complete lines) as consecutive links of one chain: every hash is
/// recomputed, every `prev` and sequence number checked. An empty text is the empty chain.
pub fn verify_tail(text: &str) -> Result<VerifiedTail, VerifyError> {
    let bad = |line: u64, problem: String| VerifyError { line, problem };
    let Some(first) = text.lines().next() else {
        return Ok(VerifiedTail { before: ChainState::default(), last: ChainState::default(), lines: Vec::new() });
    };
    if !text.ends_with('\n') {
        return Err(bad(text.lines().count() as u64, "the last line has no newline: it is incomplete".into()));
    }
    let link: Link = serde_json::from_str(first).map_err(|e| bad(1, format!("not a sealed audit record: {e}")))?;
    if link.seq == 0 {
        return Err(bad(1, "sequence 0: sequence numbers start at 1".into()));
    }
    let before = ChainState { last_seq: link.seq - 1, last_hash: link.prev };
    let last = verify_from(&before, text.as_bytes())?;
    let lines = text
        .split_inclusive('\n')
        .map(|l| {
            // Parsed above by verify_from: each line is a sealed record.
            let link: Link = serde_json::from_str(l).map_err(|e| bad(0, e.to_string()))?;
            Ok((link.seq, link.hash, l.to_owned()))
        })
        .collect::<Result<Vec<_>, VerifyError>>()?;
    Ok(VerifiedTail { before, last, lines })
}

impl VerifiedTail {
    /// The tail's lines after `known` (a state the caller verified itself), when the tail
    /// holds `known`'s record or links to it; `None` when it starts later (records sealed
    /// elsewhere lie between, which this tail cannot show); an error when it contradicts
    /// `known`.
    pub fn after(&self, known: &ChainState) -> Result<Option<String>, Contradiction> {
        if known.last_seq > self.last.last_seq {
            return Err(Contradiction::Behind { known_seq: known.last_seq, tail_seq: self.last.last_seq });
        }
        if known.last_seq < self.before.last_seq {
            return Ok(None);
        }
        let hash_there = if known.last_seq == self.before.last_seq {
            &self.before.last_hash
        } else {
            self.lines
                .iter()
                .find(|(seq, _, _)| *seq == known.last_seq)
                .map(|(_, h, _)| h)
                .unwrap_or(&self.last.last_hash)
        };
        if *hash_there != known.last_hash {
            return Err(Contradiction::Forked {
                seq: known.last_seq,
                known_hash: known.last_hash.clone(),
                tail_hash: hash_there.clone(),
            });
        }
        Ok(Some(self.lines.iter().filter(|(seq, _, _)| *seq > known.last_seq).map(|(_, _, l)| l.as_str()).collect()))
    }

    /// Every line, oldest first.
    pub fn lines(&self) -> impl Iterator<Item = &str> {
        self.lines.iter().map(|(_, _, l)| l.as_str())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn chain(n: u64) -> (Vec<String>, Vec<ChainState>) {
        let mut state = ChainState::default();
        let mut states = vec![state.clone()];
        let lines = (1..=n)
            .map(|i| {
                let line = state.seal(&json!({ "event": "e", "i": i })).unwrap();
                states.push(state.clone());
                line
            })
            .collect();
        (lines, states)
    }

    #[test]
    fn a_tail_that_continues_the_known_chain_yields_the_lines_after_it() {
        let (lines, states) = chain(5);
        let tail = verify_tail(&lines[2..].concat()).unwrap();
        assert_eq!((tail.before.clone(), tail.last.clone()), (states[2].clone(), states[5].clone()));
        assert_eq!(tail.after(&states[2]).unwrap(), Some(lines[2..].concat()));
        assert_eq!(tail.after(&states[4]).unwrap(), Some(lines[4].clone()));
        assert_eq!(tail.after(&states[5]).unwrap(), Some(String::new()));
        assert_eq!(tail.after(&states[1]).unwrap(), None, "records 2 are in no line of this tail");
    }

    #[test]
    fn an_edited_sequence_number_or_hash_is_refused() {
        let (lines, _) = chain(3);
        for (key, value) in [("seq", json!(9)), ("hash", json!("ab".repeat(32)))] {
            let mut v: Value = serde_json::from_str(&lines[2]).unwrap();
            v[key] = value;
            let edited = [lines[1].clone(), serde_json::to_string(&v).unwrap() + "\n"].concat();
            assert!(verify_tail(&edited).is_err(), "an edited {key} verifies");
        }
    }

    #[test]
    fn a_planted_line_with_a_made_up_hash_is_refused() {
        let (lines, states) = chain(2);
        let planted = json!({ "seq": 3, "prev": states[2].last_hash, "hash": "cd".repeat(32),
                              "record": { "event": "admission", "user": "alice" } });
        let err = verify_tail(&[lines[1].clone(), planted.to_string() + "\n"].concat()).unwrap_err();
        assert_eq!(err.line, 2);
    }

    #[test]
    fn a_rewritten_known_record_and_a_head_behind_are_contradictions() {
        let (lines, states) = chain(3);
        let mut other = states[1].clone();
        let rewritten: String =
            [other.seal(&json!({ "event": "forged" })).unwrap(), other.seal(&json!({ "event": "e" })).unwrap()]
                .concat();
        let tail = verify_tail(&rewritten).unwrap();
        assert!(matches!(tail.after(&states[2]), Err(Contradiction::Forked { seq: 2, .. })));
        let tail = verify_tail(&lines[..2].concat()).unwrap();
        assert_eq!(tail.after(&states[3]), Err(Contradiction::Behind { known_seq: 3, tail_seq: 2 }));
        assert_eq!(
            verify_tail("").unwrap().after(&states[3]),
            Err(Contradiction::Behind { known_seq: 3, tail_seq: 0 })
        );
        assert_eq!(verify_tail("").unwrap().after(&states[0]), Ok(Some(String::new())));
    }
}
