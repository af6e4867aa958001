//! CPU cost of the request audit per request, for `benchmarks/worker.md` (target: < 5 µs).
//!
//! ```text
//! cargo run --release -p taimatsu-inference-worker --example audit_cost -- [--records 100000] [--rounds 3]
//! ```
//!
//! Per record it does what the worker does on its request path and in its audit writer:
//! SHA-256 of a ~2 KB prompt and of a ~1 KB response (the worker hashes both as it goes),
//! builds a [`RequestRecord`] with realistic fields (RFC 3339 time, request id, caller key
//! id, digest, …) and seals it into the hash chain with [`ChainState::seal`]. The file
//! write is not included (it is buffered, off the request path). Two variants are timed:
//! `full` (hashing + record + seal) and `seal_only` (record + seal, the hashes precomputed),
//! and the peer baseline `sha256_only` (the two hashes alone), so the cost that is the
//! audit's own is visible. Results are printed as `key=value` lines.

use std::hint::black_box;
use std::time::{Instant, SystemTime};

use sha2::{Digest, Sha256};
use taimatsu_core::audit_chain::ChainState;
use taimatsu_inference_worker::audit::RequestRecord;

fn text(len: usize, seed: u64) -> String {
    let words = ["the", "model", "answers", "questions", "about", "cluster", "policy", "and", "audit", "records"];
    let mut out = String::with_capacity(len + 16);
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    while out.len() < len {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        out.push_str(words[(x >> 33) as usize % words.len()]);
        out.push(' ');
    }
    out.truncate(len);
    out
}

fn sha_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn record(i: u64, prompt_sha256: String, response_sha256: String) -> RequestRecord {
    RequestRecord {
        kind: "request",
        time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        request_id: format!("req-{i:016x}"),
        caller: Some("key-3f9a1c2b".to_owned()),
        endpoint: "/v1/chat/completions",
        model: "smollm2-135m-instruct".to_owned(),
        model_digest: "sha256:5b0f8a3d0f2e9c1a7d6b4e3f2a1c0b9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b".to_owned(),
        revision: "rev-7".to_owned(),
        pod: "smollm2-worker-6d8f9c7b5-x2x4q".to_owned(),
        status: 200,
        latency_ms: 123.456 + (i % 100) as f64,
        prompt_tokens: 512,
        completion_tokens: 256,
        prompt_sha256,
        response_sha256,
        finish_reason: Some("stop".to_owned()),
        prompt: None,
        response: None,
        count: None,
        since: None,
    }
}

fn main() {
    let mut records: u64 = 100_000;
    let mut rounds = 3;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().expect("flag needs a value");
        match flag.as_str() {
            "--records" => records = value.parse().expect("--records N"),
            "--rounds" => rounds = value.parse().expect("--rounds N"),
            other => panic!("unknown flag {other}"),
        }
    }
    // A handful of distinct texts so the hashing is not of one cache-hot buffer only.
    let prompts: Vec<String> = (0..16).map(|s| text(2048, s)).collect();
    let responses: Vec<String> = (0..16).map(|s| text(1024, 100 + s)).collect();
    let pre_p = sha_hex(prompts[0].as_bytes());
    let pre_r = sha_hex(responses[0].as_bytes());
    println!("records={records}");
    println!("prompt_bytes={} response_bytes={}", prompts[0].len(), responses[0].len());

    for round in 1..=rounds {
        // sha256_only: the two content hashes alone.
        let start = Instant::now();
        for i in 0..records {
            let k = (i % 16) as usize;
            black_box(sha_hex(black_box(prompts[k].as_bytes())));
            black_box(sha_hex(black_box(responses[k].as_bytes())));
        }
        let sha_ns = start.elapsed().as_nanos() as f64 / records as f64;

        // full: hashes + record + seal.
        let mut chain = ChainState::default();
        let mut bytes = 0usize;
        let start = Instant::now();
        for i in 0..records {
            let k = (i % 16) as usize;
            let rec = record(i, sha_hex(prompts[k].as_bytes()), sha_hex(responses[k].as_bytes()));
            let line = chain.seal(&rec).expect("seal");
            bytes += line.len();
            black_box(line);
        }
        let full_ns = start.elapsed().as_nanos() as f64 / records as f64;

        // seal_only: record (with precomputed hashes) + seal.
        let mut chain = ChainState::default();
        let start = Instant::now();
        for i in 0..records {
            let rec = record(i, pre_p.clone(), pre_r.clone());
            black_box(chain.seal(&rec).expect("seal"));
        }
        let seal_ns = start.elapsed().as_nanos() as f64 / records as f64;

        println!(
            "round={round} full_ns_per_record={full_ns:.0} seal_only_ns_per_record={seal_ns:.0} sha256_only_ns_per_record={sha_ns:.0} line_bytes={}",
            bytes / records as usize
        );
    }
}
