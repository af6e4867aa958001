//! The few vLLM metrics the worker folds into its own: requests running and waiting, and
//! KV-cache usage (`vllm:kv_cache_usage_perc`; vLLM before 0.9 called it
//! `vllm:gpu_cache_usage_perc`). Values are summed over label sets (data-parallel engines).

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct VllmLoad {
    pub running: f64,
    pub waiting: f64,
    pub kv_cache_usage: Option<f64>,
}

/// Reads the Prometheus text exposition; unknown lines are ignored.
pub fn parse(text: &str) -> VllmLoad {
    let mut load = VllmLoad::default();
    let mut kv_new: Option<f64> = None;
    let mut kv_old: Option<f64> = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((name_labels, value)) = line.rsplit_once(' ') else { continue };
        let Ok(value) = value.trim().parse::<f64>() else { continue };
        let name = name_labels.split('{').next().unwrap_or_default();
        match name {
            "vllm:num_requests_running" => load.running += value,
            "vllm:num_requests_waiting" => load.waiting += value,
            // Usage is a ratio per engine: report the fullest one.
            "vllm:kv_cache_usage_perc" => kv_new = Some(kv_new.map_or(value, |v| v.max(value))),
            "vllm:gpu_cache_usage_perc" => kv_old = Some(kv_old.map_or(value, |v| v.max(value))),
            _ => {}
        }
    }
    load.kv_cache_usage = kv_new.or(kv_old);
    load
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vllm_v1_metrics() {
        let load = parse(include_str!("testdata/vllm-v1-metrics.txt"));
        assert_eq!(load, VllmLoad { running: 3.0, waiting: 7.0, kv_cache_usage: Some(0.4375) });
    }

    #[test]
    fn reads_the_pre_0_9_cache_metric_name() {
        let load = parse(include_str!("testdata/vllm-v0-metrics.txt"));
        assert_eq!(load, VllmLoad { running: 1.0, waiting: 0.0, kv_cache_usage: Some(0.91) });
    }

    #[test]
    fn missing_metrics_are_zero_and_unknown() {
        assert_eq!(parse("# nothing\nother_metric 3\n"), VllmLoad::default());
    }
}
