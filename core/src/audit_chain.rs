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
    let mut state = ChainState::default();
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
}
