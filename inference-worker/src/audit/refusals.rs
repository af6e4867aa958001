//! Refused requests (no API key, or a wrong one) are counted per interval instead of being
//! recorded one by one. Anyone who reaches the port can send them, so one record each would
//! let an unauthenticated caller write as many records as it sends requests, and push the
//! real ones out of any retention window. One `refused-requests` record per endpoint and
//! status per interval (`--audit-refusal-interval-secs`) says how many there were and since
//! when; requests of authenticated callers are still recorded one by one.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::SystemTime;

use super::record::RequestRecord;

/// The refusals of the current interval.
#[derive(Debug, Default)]
pub struct RefusedRequests {
    window: Mutex<Window>,
}

#[derive(Debug, Default)]
struct Window {
    since: Option<SystemTime>,
    counts: BTreeMap<(&'static str, u16), u64>,
}

impl RefusedRequests {
    /// Counts one refused request to `endpoint` answered with `status`.
    pub fn count(&self, endpoint: &'static str, status: u16) {
        let mut window = self.window.lock().unwrap_or_else(|p| p.into_inner());
        window.since.get_or_insert_with(SystemTime::now);
        *window.counts.entry((endpoint, status)).or_default() += 1;
    }

    /// The records of the interval so far (none when nothing was refused), and a new interval.
    /// `pod` names the pod, as request records do.
    pub fn take(&self, pod: &str) -> Vec<RequestRecord> {
        let window = std::mem::take(&mut *self.window.lock().unwrap_or_else(|p| p.into_inner()));
        let Some(since) = window.since else { return Vec::new() };
        let since = humantime::format_rfc3339_millis(since).to_string();
        let now = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        window
            .counts
            .into_iter()
            .map(|((endpoint, status), count)| RequestRecord {
                kind: "refused-requests",
                time: now.clone(),
                endpoint,
                pod: pod.to_owned(),
                status,
                count: Some(count),
                since: Some(since.clone()),
                ..RequestRecord::empty()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_one_record_per_endpoint_and_status_and_the_interval_starts_again() {
        let refused = RefusedRequests::default();
        assert!(refused.take("p").is_empty());
        for _ in 0..3 {
            refused.count("chat.completions", 401);
        }
        refused.count("embeddings", 401);
        let records = refused.take("p");
        let summary: Vec<(&str, u16, Option<u64>)> = records.iter().map(|r| (r.endpoint, r.status, r.count)).collect();
        assert_eq!(summary, [("chat.completions", 401, Some(3)), ("embeddings", 401, Some(1))]);
        assert!(records.iter().all(|r| r.kind == "refused-requests" && r.since.is_some() && r.pod == "p"));
        assert!(refused.take("p").is_empty(), "a new interval starts empty");
    }
}
