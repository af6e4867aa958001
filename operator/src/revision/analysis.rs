//! Rollout analysis, the pure part: the worker's request counters and latency histogram
//! read from its Prometheus text, and the verdict on a window's difference.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use taimatsu_crds::v1alpha1::AnalysisSpec;

/// What the analysis reads from one or more workers' `/metrics`, summed over pods.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Requests answered, all status classes.
    pub requests: f64,
    /// Requests answered with a 5xx status.
    pub errors: f64,
    /// Cumulative latency histogram: upper bound in seconds (`+Inf` as `f64::MAX`) → count.
    pub buckets: Vec<(f64, f64)>,
}

impl Sample {
    /// Reads `taimatsu_worker_requests_total` and `taimatsu_worker_request_duration_seconds`
    /// from one worker's Prometheus text, summed over endpoints.
    pub fn parse(text: &str) -> Sample {
        let mut sample = Sample::default();
        let mut buckets: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
        for line in text.lines() {
            let Some((series, value)) = line.rsplit_once(' ') else { continue };
            let Ok(value) = value.parse::<f64>() else { continue };
            if let Some(labels) = series.strip_prefix("taimatsu_worker_requests_total{") {
                sample.requests += value;
                if label(labels, "status_class") == Some("5xx") {
                    sample.errors += value;
                }
            } else if let Some(labels) = series.strip_prefix("taimatsu_worker_request_duration_seconds_bucket{") {
                let le = match label(labels, "le") {
                    Some("+Inf") => f64::MAX,
                    Some(v) => v.parse().unwrap_or(f64::MAX),
                    None => continue,
                };
                let entry = buckets.entry(le.to_bits()).or_insert((le, 0.0));
                entry.1 += value;
            }
        }
        let mut list: Vec<(f64, f64)> = buckets.into_values().collect();
        list.sort_by(|a, b| a.0.total_cmp(&b.0));
        sample.buckets = list;
        sample
    }

    /// Sums samples of several pods.
    pub fn add(&mut self, other: &Sample) {
        self.requests += other.requests;
        self.errors += other.errors;
        for (le, count) in &other.buckets {
            match self.buckets.iter_mut().find(|(l, _)| l == le) {
                Some(b) => b.1 += count,
                None => self.buckets.push((*le, *count)),
            }
        }
        self.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    }

    /// What happened between `before` and `self` (a restarted pod's counters start again
    /// from zero; a negative difference counts as what the later sample holds).
    pub fn since(&self, before: &Sample) -> Sample {
        let diff = |now: f64, then: f64| if now >= then { now - then } else { now };
        let buckets = self
            .buckets
            .iter()
            .map(|(le, count)| {
                let then = before.buckets.iter().find(|(l, _)| l == le).map_or(0.0, |b| b.1);
                (*le, diff(*count, then))
            })
            .collect();
        Sample { requests: diff(self.requests, before.requests), errors: diff(self.errors, before.errors), buckets }
    }

    /// The 95th-percentile latency in milliseconds: the upper bound of the bucket that holds
    /// it (so an estimate from above), or None without requests.
    pub fn p95_ms(&self) -> Option<f64> {
        let total = self.buckets.last().map(|b| b.1)?;
        if total <= 0.0 {
            return None;
        }
        let bound = self.buckets.iter().find(|(_, count)| *count >= 0.95 * total).map(|b| b.0)?;
        Some(if bound == f64::MAX { f64::INFINITY } else { bound * 1000.0 })
    }
}

fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    labels.trim_end_matches('}').split(',').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key.trim() == name).then(|| value.trim().trim_matches('"'))
    })
}

/// The verdict on a window: why it fails, if it does.
pub fn judge(spec: &AnalysisSpec, window: &Sample) -> Result<String, String> {
    let mut seen = Vec::new();
    if let Some(max) = spec.max_error_rate_percent {
        if window.requests > 0.0 {
            let rate = 100.0 * window.errors / window.requests;
            if rate > f64::from(max) {
                return Err(format!(
                    "{rate:.1}% of {} requests failed with 5xx over the analysis window; spec.rollout.analysis.maxErrorRatePercent is {max}",
                    window.requests
                ));
            }
            seen.push(format!("error rate {rate:.1}%"));
        } else {
            seen.push("no requests to judge the error rate by".to_owned());
        }
    }
    if let Some(max) = spec.max_p95_latency_ms {
        match window.p95_ms() {
            Some(p95) if p95 > f64::from(max) => {
                return Err(format!(
                    "p95 latency ≤ {p95:.0} ms bucket over the analysis window exceeds spec.rollout.analysis.maxP95LatencyMs {max}"
                ));
            }
            Some(p95) => seen.push(format!("p95 latency within the {p95:.0} ms bucket")),
            None => seen.push("no requests to judge the latency by".to_owned()),
        }
    }
    Ok(seen.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = r#"# HELP taimatsu_worker_requests Requests by endpoint and status class.
# TYPE taimatsu_worker_requests counter
taimatsu_worker_requests_total{endpoint="chat",status_class="2xx"} 18
taimatsu_worker_requests_total{endpoint="chat",status_class="5xx"} 2
taimatsu_worker_requests_total{endpoint="models",status_class="2xx"} 5
taimatsu_worker_request_duration_seconds_bucket{le="0.1",endpoint="chat"} 10
taimatsu_worker_request_duration_seconds_bucket{le="1.0",endpoint="chat"} 19
taimatsu_worker_request_duration_seconds_bucket{le="+Inf",endpoint="chat"} 20
taimatsu_worker_request_duration_seconds_bucket{le="0.1",endpoint="models"} 5
taimatsu_worker_request_duration_seconds_bucket{le="1.0",endpoint="models"} 5
taimatsu_worker_request_duration_seconds_bucket{le="+Inf",endpoint="models"} 5
"#;

    fn spec(errors: Option<i32>, p95: Option<i32>) -> AnalysisSpec {
        AnalysisSpec {
            window_seconds: 10,
            max_error_rate_percent: errors,
            max_p95_latency_ms: p95,
            smoke_prompts: vec![],
        }
    }

    #[test]
    fn counters_and_buckets_are_summed_over_endpoints() {
        let s = Sample::parse(METRICS);
        assert_eq!((s.requests, s.errors), (25.0, 2.0));
        assert_eq!(s.buckets, vec![(0.1, 15.0), (1.0, 24.0), (f64::MAX, 25.0)]);
        assert_eq!(s.p95_ms(), Some(1000.0));
    }

    #[test]
    fn the_window_is_judged_on_its_difference() {
        let before = Sample::parse(METRICS);
        // 20 more requests: 10 under 100 ms, 10 between 100 ms and 1 s.
        let after = Sample { requests: 45.0, errors: 2.0, buckets: vec![(0.1, 25.0), (1.0, 44.0), (f64::MAX, 45.0)] };
        let window = after.since(&before);
        assert_eq!((window.requests, window.errors), (20.0, 0.0));
        assert_eq!(window.p95_ms(), Some(1000.0));
        assert!(judge(&spec(Some(1), Some(1000)), &window).is_ok());
        let err = judge(&spec(None, Some(500)), &window).unwrap_err();
        assert!(err.contains("maxP95LatencyMs 500"), "{err}");
        let err = judge(&spec(Some(5), None), &Sample::parse(METRICS)).unwrap_err();
        assert!(err.starts_with("8.0% of 25 requests failed"), "{err}");
    }

    #[test]
    fn no_traffic_passes_with_a_note() {
        assert_eq!(
            judge(&spec(Some(1), Some(100)), &Sample::default()).unwrap(),
            "no requests to judge the error rate by, no requests to judge the latency by"
        );
    }
}
