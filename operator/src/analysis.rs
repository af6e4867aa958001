//! Rollout analysis against the new revision's pods: `spec.rollout.analysis`.
//!
//! Once every pod of the revision is available, the operator reads the workers' metrics
//! (the baseline), sends each smoke prompt to each pod (every answer must be non-empty),
//! and after `windowSeconds` reads the metrics again: the window's 5xx share and p95
//! latency — smoke prompts and real traffic alike — must stay within the thresholds. The
//! state between reconciles lives in an annotation of the revision record, so an operator
//! restart or a leader change continues the same analysis. This module probes and judges;
//! the rollout executor stores the state it returns.

use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::json;
use taimatsu_core::AddressScope;
use taimatsu_crds::v1alpha1::AnalysisSpec;

use crate::build::labels::{API_PORT, METRICS_PORT};
use crate::error::Error;
use crate::revision::RevisionRecord;
use crate::revision::analysis::{Sample, judge};
use crate::revision::plan::Verdict;

#[derive(Serialize, Deserialize)]
struct State {
    started: String,
    baseline: Sample,
}

/// The HTTP client of every analysis: one connection pool for the operator's lifetime,
/// rather than a client (and its TLS setup) per reconcile.
static PROBES: std::sync::LazyLock<Option<reqwest::Client>> = std::sync::LazyLock::new(|| probe_client().ok());

fn probe_client() -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder().timeout(Duration::from_secs(120)).build()
}

/// Where an analysis stands, and the state to store on the record when it just started.
pub struct Outcome {
    pub verdict: Verdict,
    /// The started analysis (start time and metrics baseline) for the revision record.
    pub started: Option<String>,
}

impl From<Verdict> for Outcome {
    fn from(verdict: Verdict) -> Self {
        Outcome { verdict, started: None }
    }
}

/// Runs or continues the analysis `spec` of `record`, whose `pods` are all available,
/// probing only pod IPs inside `scope`.
pub async fn analyse(
    spec: Option<&AnalysisSpec>,
    scope: &AddressScope,
    record: &RevisionRecord,
    pods: &[Pod],
) -> Result<Outcome, Error> {
    let Some(spec) = spec else { return Ok(Verdict::Passed(String::new()).into()) };
    let ips = match probe_targets(pods, scope) {
        Ok(ips) if ips.is_empty() => return Ok(Verdict::Waiting(Duration::from_secs(2)).into()),
        Ok(ips) => ips,
        Err(why) => return Ok(Verdict::Failed(why).into()),
    };
    // Built once; should that ever fail, each analysis tries again and reports the error.
    let http = match PROBES.as_ref() {
        Some(http) => http.clone(),
        None => probe_client().map_err(probe_error)?,
    };
    let http = &http;
    let window = Duration::from_secs(u64::try_from(spec.window_seconds).unwrap_or(60));
    let state = record.analysis.as_deref().and_then(|s| serde_json::from_str::<State>(s).ok());
    let Some(state) = state else {
        let baseline = match scrape(http, &ips).await {
            Ok(s) => s,
            Err(why) => return Ok(Verdict::Failed(why).into()),
        };
        if let Err(why) = smoke(http, &ips, &record.snapshot.model_name, spec).await {
            return Ok(Verdict::Failed(why).into());
        }
        let state = State { started: Timestamp::now().to_string(), baseline };
        let started = Some(serde_json::to_string(&state).unwrap_or_default());
        return Ok(Outcome { verdict: Verdict::Waiting(window), started });
    };
    let started: Timestamp = state.started.parse().unwrap_or_else(|_| Timestamp::now());
    let elapsed = Duration::try_from(Timestamp::now().duration_since(started)).unwrap_or_default();
    if elapsed < window {
        return Ok(Verdict::Waiting(window - elapsed).into());
    }
    let now = match scrape(http, &ips).await {
        Ok(s) => s,
        Err(why) => return Ok(Verdict::Failed(why).into()),
    };
    Ok(match judge(spec, &now.since(&state.baseline)) {
        Ok(seen) => Verdict::Passed(seen),
        Err(why) => Verdict::Failed(why),
    }
    .into())
}

/// The addresses to probe: every reported pod IP, each checked against `scope` before
/// anything is sent, so a pod status naming another address (forged, or a simulated pod
/// elsewhere) fails the analysis without a single packet to it.
fn probe_targets(pods: &[Pod], scope: &AddressScope) -> Result<Vec<String>, String> {
    let mut ips = Vec::new();
    for pod in pods {
        let Some(reported) = pod.status.as_ref().and_then(|s| s.pod_ip.as_deref()) else { continue };
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let ip: IpAddr = reported
            .parse()
            .map_err(|_| format!("pod {name} reports {reported:?} as its IP, which is not an address"))?;
        scope
            .check(ip)
            .map_err(|e| format!("pod {name} was not contacted: its IP {e} (the operator's --analysis-pod-cidrs)"))?;
        // IPv6 in brackets, for the URLs built from it.
        ips.push(if ip.is_ipv6() { format!("[{ip}]") } else { ip.to_string() });
    }
    Ok(ips)
}

/// The metrics of every pod, summed.
async fn scrape(http: &reqwest::Client, ips: &[String]) -> Result<Sample, String> {
    let mut total = Sample::default();
    for ip in ips {
        let url = format!("http://{ip}:{METRICS_PORT}/metrics");
        let text = async { http.get(&url).send().await?.error_for_status()?.text().await }
            .await
            .map_err(|e| format!("the metrics of pod {ip} could not be read: {e}"))?;
        total.add(&Sample::parse(&text));
    }
    Ok(total)
}

/// Sends every smoke prompt to every pod; each answer must be non-empty.
async fn smoke(http: &reqwest::Client, ips: &[String], model: &str, spec: &AnalysisSpec) -> Result<(), String> {
    for (i, prompt) in spec.smoke_prompts.iter().enumerate() {
        for ip in ips {
            let body = json!({ "model": model, "max_tokens": 32, "messages": [{ "role": "user", "content": prompt }] });
            let url = format!("http://{ip}:{API_PORT}/v1/chat/completions");
            let answer: serde_json::Value =
                async { http.post(&url).json(&body).send().await?.error_for_status()?.json().await }
                    .await
                    .map_err(|e| format!("smoke prompt {} on pod {ip} failed: {e}", i + 1))?;
            let content = answer["choices"][0]["message"]["content"].as_str().unwrap_or_default();
            if content.trim().is_empty() {
                return Err(format!("smoke prompt {} on pod {ip} got an empty answer", i + 1));
            }
        }
    }
    Ok(())
}

fn probe_error(e: reqwest::Error) -> Error {
    Error::Kube(kube::Error::Service(Box::new(e)))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::PodStatus;
    use kube::api::ObjectMeta;

    use super::*;

    fn pod(name: &str, ip: Option<&str>) -> Pod {
        Pod {
            metadata: ObjectMeta { name: Some(name.into()), ..ObjectMeta::default() },
            status: Some(PodStatus { pod_ip: ip.map(Into::into), ..PodStatus::default() }),
            ..Pod::default()
        }
    }

    #[test]
    fn only_pod_ips_inside_the_scope_are_probed() {
        let scope = AddressScope::parse_list("127.0.0.0/16,10.85.0.0/24").unwrap();
        let pods = [pod("a", Some("127.0.1.2")), pod("b", None), pod("c", Some("10.85.0.9"))];
        assert_eq!(probe_targets(&pods, &scope), Ok(vec!["127.0.1.2".to_owned(), "10.85.0.9".to_owned()]));
        assert_eq!(
            probe_targets(&[pod("a", Some("127.0.1.2")), pod("spoofed", Some("127.99.0.7"))], &scope),
            Err("pod spoofed was not contacted: its IP 127.99.0.7 is outside 127.0.0.0/16,10.85.0.0/24 \
                 (the operator's --analysis-pod-cidrs)"
                .to_owned())
        );
    }

    #[test]
    fn unrestricted_scope_still_refuses_metadata_addresses_and_garbage() {
        let scope = AddressScope::default();
        assert_eq!(probe_targets(&[pod("v6", Some("fd00::5"))], &scope), Ok(vec!["[fd00::5]".to_owned()]));
        let refused = probe_targets(&[pod("m", Some("169.254.169.254"))], &scope).unwrap_err();
        assert!(refused.starts_with("pod m was not contacted: its IP 169.254.169.254 is link-local"), "{refused}");
        assert_eq!(
            probe_targets(&[pod("x", Some("example.com"))], &scope),
            Err("pod x reports \"example.com\" as its IP, which is not an address".to_owned())
        );
    }
}
