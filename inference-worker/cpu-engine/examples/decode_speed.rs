//! Decode speed of the built-in engine, for benchmark scripts.
//!
//! ```text
//! cargo run --release -p taimatsu-cpu-engine --example decode_speed -- \
//!     --model M.gguf [--threads 2] [--streams 8] [--max-tokens 128] [--context-len 1024] [--prompt TEXT] [--raw]
//! ```
//!
//! Runs one greedy stream (time to first token, decode tok/s), then `--streams` concurrent
//! ones (aggregate tok/s over the wall time from submission to the last finish). The prompt
//! goes through the model's chat template unless `--raw`. Results are printed as
//! `key=value` lines.

use std::time::{Duration, Instant};

use taimatsu_cpu_engine::{ChatMessage, EngineConfig, GenerateRequest, Generation, GenerationEvent, TextEngine};

struct Args {
    model: std::path::PathBuf,
    threads: usize,
    streams: usize,
    max_tokens: u32,
    context_len: u32,
    prompt: String,
    raw: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        model: std::path::PathBuf::new(),
        threads: 2,
        streams: 8,
        max_tokens: 128,
        context_len: 1024,
        prompt: "Write a long story about a dragon who learns to cook.".to_owned(),
        raw: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--raw" {
            args.raw = true;
            continue;
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = |v: &str| v.parse::<usize>().map_err(|e| format!("{flag} {v}: {e}"));
        match flag.as_str() {
            "--model" => args.model = value.into(),
            "--threads" => args.threads = number(&value)?,
            "--streams" => args.streams = number(&value)?.max(1),
            "--max-tokens" => args.max_tokens = u32::try_from(number(&value)?).map_err(|e| e.to_string())?,
            "--context-len" => args.context_len = u32::try_from(number(&value)?).map_err(|e| e.to_string())?,
            "--prompt" => args.prompt = value,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if args.model.as_os_str().is_empty() {
        return Err("--model is required".to_owned());
    }
    Ok(args)
}

/// Timings of one generation, measured from submission.
struct Run {
    first_token: Option<Duration>,
    finished: Duration,
    tokens: u32,
}

fn drain(mut generation: Generation, start: Instant) -> Result<Run, String> {
    let mut first_token = None;
    loop {
        match generation.events.blocking_recv() {
            Some(GenerationEvent::Text(_)) => {
                first_token.get_or_insert_with(|| start.elapsed());
            }
            Some(GenerationEvent::Finished { completion_tokens, .. }) => {
                return Ok(Run { first_token, finished: start.elapsed(), tokens: completion_tokens });
            }
            Some(GenerationEvent::Failed(message)) => return Err(message),
            None => return Err("event channel closed".to_owned()),
        }
    }
}

fn main() -> Result<(), String> {
    let args = parse_args()?;
    let engine = TextEngine::load(EngineConfig {
        model_path: args.model.clone(),
        threads: args.threads,
        parallel: args.streams,
        context_len: args.context_len,
    })
    .map_err(|e| e.to_string())?;
    let prompt = if args.raw {
        args.prompt.clone()
    } else {
        engine
            .apply_chat_template(&[ChatMessage { role: "user".into(), content: args.prompt.clone() }])
            .map_err(|e| e.to_string())?
    };
    let request = GenerateRequest {
        prompt,
        max_tokens: args.max_tokens,
        temperature: 0.0,
        top_p: 1.0,
        seed: None,
        stop: Vec::new(),
    };

    // Warm-up: first use pages the weights in and sizes llama.cpp's buffers.
    drain(
        engine.generate(GenerateRequest { max_tokens: 4, ..request.clone() }).map_err(|e| e.to_string())?,
        Instant::now(),
    )?;

    let start = Instant::now();
    let generation = engine.generate(request.clone()).map_err(|e| e.to_string())?;
    let prompt_tokens = generation.prompt_tokens;
    let single = drain(generation, start)?;
    let ttft = single.first_token.unwrap_or(single.finished);
    let decode_time = single.finished.saturating_sub(ttft).as_secs_f64();
    let decode_tok_s = if decode_time > 0.0 { f64::from(single.tokens.saturating_sub(1)) / decode_time } else { 0.0 };
    println!("threads={}", args.threads);
    println!("prompt_tokens={prompt_tokens}");
    println!("single_completion_tokens={}", single.tokens);
    println!("single_ttft_ms={:.1}", ttft.as_secs_f64() * 1000.0);
    println!("single_decode_tok_s={decode_tok_s:.2}");

    let start = Instant::now();
    let generations = (0..args.streams)
        .map(|_| engine.generate(request.clone()).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    let handles: Vec<_> = generations.into_iter().map(|g| std::thread::spawn(move || drain(g, start))).collect();
    let mut runs = Vec::new();
    for handle in handles {
        runs.push(handle.join().map_err(|_| "a stream panicked".to_owned())??);
    }
    let wall = runs.iter().map(|r| r.finished).max().unwrap_or_default().as_secs_f64();
    let tokens: u32 = runs.iter().map(|r| r.tokens).sum();
    let mean_ttft = runs.iter().filter_map(|r| r.first_token).map(|d| d.as_secs_f64()).sum::<f64>() / runs.len() as f64;
    println!("streams={}", args.streams);
    println!("streams_completion_tokens={tokens}");
    println!("streams_mean_ttft_ms={:.1}", mean_ttft * 1000.0);
    println!("streams_aggregate_tok_s={:.2}", if wall > 0.0 { f64::from(tokens) / wall } else { 0.0 });
    Ok(())
}
