//! The tamper-evident audit log format shared by the operator's control-plane audit and
//! the worker's request audit, and its verifier (`kubectl taimatsu audit verify`).
//!
//! A log is JSON lines. Each line is one sealed record:
//!
//! ```json
//! {"seq":7,"prev":"<hex sha256 of record 6>","hash":"<hex sha256 of this record>","record":{…}}
//! ```
//!
//! `hash = sha256("taimatsu-audit-v1\n" + seq + "\n" + prev + "\n" + <record bytes exactly as written>)`.
//! Sequence numbers start at 1 and increase by one; the first record's `prev` is [`GENESIS`].
//! So a changed byte breaks that record's hash, and a deleted, inserted or reordered
//! record breaks the sequence or the `prev` link of the record after it. Cutting records
//! off the *end* leaves a valid shorter chain: compare the last `seq`/`hash` with a copy
//! kept elsewhere (the stdout sink, a log store) to detect that.
//!
//! A crash can leave a final line without its newline. Such a line was never completely
//! written, so it was never acknowledged: [`ChainState::resume`] drops it before appending,
//! and [`verify`] reports it as an incomplete tail instead of a broken chain.

use std::io::BufRead;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

/// `prev` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const DOMAIN: &[u8] = b"taimatsu-audit-v1\n";

/// Where a chain stands: the next record links to this.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainState {
    /// Sequence number of the last sealed record (0 before the first).
    pub last_seq: u64,
    /// Hash of the last sealed record ([`GENESIS`] before the first).
    pub last_hash: String,
}

impl Default for ChainState {
    fn default() -> Self {
        Self { last_seq: 0, last_hash: GENESIS.to_owned() }
    }
}

#[derive(Serialize)]
struct SealedOut<'a> {
    seq: u64,
    prev: &'a str,
    hash: &'a str,
    record: &'a RawValue,
}

#[derive(Deserialize)]
struct SealedIn<'a> {
    seq: u64,
    prev: String,
    hash: String,
    #[serde(borrow)]
    record: &'a RawValue,
}

fn record_hash(seq: u64, prev: &str, record: &str) -> String {
    let mut h = Sha256::new();
    h.update(DOMAIN);
    h.update(seq.to_string().as_bytes());
    h.update(b"\n");
    h.update(prev.as_bytes());
    h.update(b"\n");
    h.update(record.as_bytes());
    hex::encode(h.finalize())
}

impl ChainState {
    /// Seals `record` as the next link and returns the line to append (with its `\n`).
    /// The state advances only here, so a caller that fails to write must not reuse it.
    pub fn seal<T: Serialize>(&mut self, record: &T) -> Result<String, serde_json::Error> {
        let raw = serde_json::value::to_raw_value(record)?;
        let seq = self.last_seq + 1;
        let hash = record_hash(seq, &self.last_hash, raw.get());
        let mut line = serde_json::to_string(&SealedOut { seq, prev: &self.last_hash, hash: &hash, record: &raw })?;
        line.push('\n');
        self.last_seq = seq;
        self.last_hash = hash;
        Ok(line)
    }

    /// Reads an existing log to continue its chain. Returns the state and the byte length
    /// of the complete lines: the caller truncates the file to it, dropping a half-written
    /// tail left by a crash. A log that does not verify is an error: appending to a broken
    /// chain would hide the break.
    pub fn resume(log: &[u8]) -> Result<(Self, u64), VerifyError> {
        let report = verify(log)?;
        let state = ChainState { last_seq: report.records, last_hash: report.last_hash };
        Ok((state, report.complete_bytes))
    }
}

/// A verified log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    /// Complete, valid records.
    pub records: u64,
    /// Hash of the last record ([`GENESIS`] for an empty log).
    pub last_hash: String,
    /// Bytes of complete lines.
    pub complete_bytes: u64,
    /// A final line without its newline (a write cut short by a crash) was ignored.
    pub incomplete_tail: bool,
}

/// The first bad record of a log.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {problem}")]
pub struct VerifyError {
    /// 1-based line number.
    pub line: u64,
    pub problem: String,
}

/// Verifies a whole log (see the module docs) and names the first bad line.
pub fn verify(log: &[u8]) -> Result<VerifyReport, VerifyError> {
    walk(ChainState::default(), log)
}

/// Verifies a segment that continues a chain from `start` (a later leader's file begins
/// mid-chain) and returns where it ends. A torn last line is ignored, as in [`verify`].
pub fn verify_from(start: &ChainState, log: &[u8]) -> Result<ChainState, VerifyError> {
    let report = walk(start.clone(), log)?;
    // `records` is the last sequence number reached, which for a full log is the count.
    Ok(ChainState { last_seq: report.records, last_hash: report.last_hash })
}

fn walk(start: ChainState, log: &[u8]) -> Result<VerifyReport, VerifyError> {
    let mut state = start;
    let mut offset = 0u64;
    let mut reader = log;
    let mut line_no = 0u64;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).unwrap_or(0);
        if n == 0 {
            break;
        }
        line_no += 1;
        if buf.last() != Some(&b'\n') {
            return Ok(VerifyReport {
                records: state.last_seq,
                last_hash: state.last_hash,
                complete_bytes: offset,
                incomplete_tail: true,
            });
        }
        let bad = |problem: String| VerifyError { line: line_no, problem };
        let text = std::str::from_utf8(&buf[..n - 1]).map_err(|_| bad("not UTF-8".into()))?;
        let sealed: SealedIn<'_> =
            serde_json::from_str(text).map_err(|e| bad(format!("not a sealed audit record: {e}")))?;
        let expected_seq = state.last_seq + 1;
        if sealed.seq != expected_seq {
            return Err(bad(format!(
                "sequence {} where {expected_seq} was expected: a record was deleted, inserted or moved",
                sealed.seq
            )));
        }
        if sealed.prev != state.last_hash {
            return Err(bad(format!(
                "prev {} does not match the hash of record {} ({}): the chain was altered",
                sealed.prev, state.last_seq, state.last_hash
            )));
        }
        let computed = record_hash(sealed.seq, &sealed.prev, sealed.record.get());
        if computed != sealed.hash {
            return Err(bad(format!(
                "record {} has hash {} but its content hashes to {computed}: the record was modified",
                sealed.seq, sealed.hash
            )));
        }
        state.last_seq = sealed.seq;
        state.last_hash = sealed.hash;
        offset += n as u64;
    }
    Ok(VerifyReport {
        records: state.last_seq,
        last_hash: state.last_hash,
        complete_bytes: offset,
        incomplete_tail: false,
    })
}

/// Segments of one chain, merged in sequence order: what [`merge_segments`] returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MergedChain {
    /// The complete lines of every segment, each sequence number once, in order.
    pub log: Vec<u8>,
    /// Segments whose last line was cut short by a crash.
    pub incomplete_tails: usize,
}

/// The first problem found while merging segments.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MergeError {
    #[error("segment {segment}, line {line}: not a sealed audit record: {problem}")]
    Unreadable { segment: usize, line: u64, problem: String },
    #[error(
        "record {seq} exists in two different versions (segments {first} and {second}): the chain forked or a copy was altered"
    )]
    Fork { seq: u64, first: usize, second: usize },
    #[error("records {from} to {to} are in no segment: they were deleted, or a segment is missing")]
    Gap { from: u64, to: u64 },
}

/// Merges several files of one chain — the operator writes one per replica that has led,
/// and every leader continues the single chain anchored in the API server — into one log
/// for [`verify`]. The same record in two segments is fine if byte-identical; two different
/// records with one sequence number are a fork; a sequence number in no segment is a gap.
pub fn merge_segments(segments: &[&[u8]]) -> Result<MergedChain, MergeError> {
    #[derive(Deserialize)]
    struct SeqOnly {
        seq: u64,
    }
    let mut by_seq: std::collections::BTreeMap<u64, (usize, &[u8])> = std::collections::BTreeMap::new();
    let mut incomplete_tails = 0;
    for (segment, bytes) in segments.iter().enumerate() {
        for (index, line) in bytes.split_inclusive(|b| *b == b'\n').enumerate() {
            if line.last() != Some(&b'\n') {
                incomplete_tails += 1;
                continue;
            }
            let unreadable =
                |problem: String| MergeError::Unreadable { segment: segment + 1, line: index as u64 + 1, problem };
            let parsed: SeqOnly = serde_json::from_slice(line).map_err(|e| unreadable(e.to_string()))?;
            match by_seq.get(&parsed.seq) {
                Some((first, existing)) if *existing != line => {
                    return Err(MergeError::Fork { seq: parsed.seq, first: first + 1, second: segment + 1 });
                }
                Some(_) => {}
                None => {
                    by_seq.insert(parsed.seq, (segment, line));
                }
            }
        }
    }
    let mut log = Vec::new();
    for (expected, (seq, (_, line))) in (1..).zip(by_seq) {
        if seq != expected {
            return Err(MergeError::Gap { from: expected, to: seq - 1 });
        }
        log.extend_from_slice(line);
    }
    Ok(MergedChain { log, incomplete_tails })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn log_of(n: u64) -> String {
        let mut state = ChainState::default();
        (1..=n).map(|i| state.seal(&json!({ "event": "test", "i": i, "note": "ünïcode" })).unwrap()).collect()
    }

    #[test]
    fn valid_chain_verifies() {
        let log = log_of(5);
        let report = verify(log.as_bytes()).unwrap();
        assert_eq!(report.records, 5);
        assert!(!report.incomplete_tail);
        assert_eq!(report.complete_bytes, log.len() as u64);
    }

    #[test]
    fn empty_log_is_valid() {
        assert_eq!(verify(b"").unwrap().records, 0);
    }

    #[test]
    fn changed_byte_is_named() {
        let log = log_of(4).replacen("\"i\":3", "\"i\":9", 1);
        let err = verify(log.as_bytes()).unwrap_err();
        assert_eq!(err.line, 3);
        assert!(err.problem.contains("modified"), "{err}");
    }

    #[test]
    fn deleted_record_is_named() {
        let log: Vec<&str> = log_of(4).leak().split_inclusive('\n').collect();
        let without_second: String = [log[0], log[2], log[3]].concat();
        let err = verify(without_second.as_bytes()).unwrap_err();
        assert_eq!(err.line, 2);
        assert!(err.problem.contains("deleted"), "{err}");
    }

    #[test]
    fn reordered_records_are_detected() {
        let log: Vec<&str> = log_of(3).leak().split_inclusive('\n').collect();
        let swapped: String = [log[0], log[2], log[1]].concat();
        assert_eq!(verify(swapped.as_bytes()).unwrap_err().line, 2);
    }

    #[test]
    fn rehashed_forgery_breaks_the_next_link() {
        // An attacker who edits record 2 and recomputes its hash still breaks record 3's prev.
        let mut lines: Vec<String> = log_of(3).lines().map(str::to_owned).collect();
        let mut v: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
        v["record"]["i"] = json!(42);
        let record = serde_json::to_string(&v["record"]).unwrap();
        let prev = v["prev"].as_str().unwrap().to_owned();
        v["hash"] = json!(record_hash(2, &prev, &record));
        lines[1] = serde_json::to_string(&v).unwrap();
        let forged = lines.join("\n") + "\n";
        let err = verify(forged.as_bytes()).unwrap_err();
        assert_eq!(err.line, 3);
    }

    #[test]
    fn half_written_tail_is_reported_and_dropped_on_resume() {
        let full = log_of(3);
        let cut = &full[..full.len() - 10];
        let report = verify(cut.as_bytes()).unwrap();
        assert!(report.incomplete_tail);
        assert_eq!(report.records, 2);
        let (mut state, keep) = ChainState::resume(cut.as_bytes()).unwrap();
        let mut resumed = cut[..keep as usize].to_owned();
        resumed.push_str(&state.seal(&json!({ "event": "after-crash" })).unwrap());
        assert_eq!(verify(resumed.as_bytes()).unwrap().records, 3);
    }
    #[test]
    fn segments_of_one_chain_merge_and_verify() {
        let lines: Vec<String> = log_of(5).split_inclusive('\n').map(str::to_owned).collect();
        // Replica A wrote 1–3, replica B (the next leader) 3–5 after recovering record 3.
        let a = lines[..3].concat();
        let b = lines[2..].concat();
        let merged = merge_segments(&[b.as_bytes(), a.as_bytes()]).unwrap();
        assert_eq!(verify(&merged.log).unwrap().records, 5);
    }

    #[test]
    fn a_fork_and_a_gap_are_named() {
        let lines: Vec<String> = log_of(4).split_inclusive('\n').map(str::to_owned).collect();
        let mut other = ChainState::default();
        let forked: String = (1..=2).map(|i| other.seal(&json!({ "other": i })).unwrap()).collect();
        let err = merge_segments(&[lines.concat().as_bytes(), forked.as_bytes()]).unwrap_err();
        assert_eq!(err, MergeError::Fork { seq: 1, first: 1, second: 2 });
        let holes = [lines[0].as_str(), lines[3].as_str()].concat();
        assert_eq!(merge_segments(&[holes.as_bytes()]).unwrap_err(), MergeError::Gap { from: 2, to: 3 });
    }
}
