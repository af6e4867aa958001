//! This replica's file of the chain (a segment: a later leader's file starts mid-chain):
//! opened after checking it link by link and a torn last line cut. (The lines a crash left
//! out are repaired from the head, once verified: `ControlPlaneAudit::commit`.)

use serde_json::Value;
use taimatsu_core::audit_chain::{ChainState, GENESIS};
use tracing::warn;

use super::AuditError;
use super::decisions::Decisions;

/// Opens this replica's segment for appending, after checking it and cutting a torn tail;
/// notes the decisions its records carry.
pub fn open_segment(
    path: &std::path::Path,
    decisions: &mut Decisions,
) -> Result<(std::fs::File, ChainState), AuditError> {
    let shown = path.display().to_string();
    let io = |source| AuditError::File { path: shown.clone(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let existing = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(io(e)),
    };
    // A segment may start anywhere in the chain (a later leader's file starts mid-chain),
    // so it is checked link by link from its own first record.
    let (state, keep) =
        resume_segment(&existing).map_err(|problem| AuditError::Broken { path: shown.clone(), problem })?;
    // Verified above: these records are in the chain, and a retried decision among them is
    // not recorded again.
    for line in existing[..keep as usize].split(|b| *b == b'\n') {
        decisions.note_line(&String::from_utf8_lossy(line));
    }
    let file = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(io)?;
    if keep < existing.len() as u64 {
        warn!(path = %shown, "dropping a torn last audit line left by a crash");
        file.set_len(keep).map_err(io)?;
    }
    Ok((file, state))
}

/// Where a segment's chain stands and the length of its complete lines.
fn resume_segment(bytes: &[u8]) -> Result<(ChainState, u64), String> {
    let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let Some(first) = bytes[..complete].split(|b| *b == b'\n').next().filter(|l| !l.is_empty()) else {
        return Ok((ChainState::default(), complete as u64));
    };
    let v: Value = serde_json::from_slice(first).map_err(|e| format!("line 1: {e}"))?;
    let start = ChainState {
        last_seq: v["seq"].as_u64().unwrap_or(1).saturating_sub(1),
        last_hash: v["prev"].as_str().unwrap_or(GENESIS).to_owned(),
    };
    let state = taimatsu_core::audit_chain::verify_from(&start, &bytes[..complete]).map_err(|e| e.to_string())?;
    Ok((state, complete as u64))
}
