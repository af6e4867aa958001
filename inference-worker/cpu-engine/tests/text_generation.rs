//! Text generation against the real SmolLM2-135M-Instruct GGUF.

mod common;

use std::time::{Duration, Instant};

use common::{collect, serial, smollm2};
use taimatsu_cpu_engine::{
    ChatMessage, EngineConfig, EngineError, FinishReason, GenerateRequest, GenerationEvent, TextEngine,
};

fn engine(parallel: usize, context_len: u32) -> TextEngine {
    TextEngine::load(EngineConfig { model_path: smollm2(), threads: 2, parallel, context_len }).expect("model loads")
}

fn chat(engine: &TextEngine, question: &str) -> String {
    engine
        .apply_chat_template(&[ChatMessage { role: "user".into(), content: question.into() }])
        .expect("SmolLM2 has a ChatML template")
}

fn greedy(prompt: String, max_tokens: u32) -> GenerateRequest {
    GenerateRequest { prompt, max_tokens, temperature: 0.0, top_p: 1.0, seed: None, stop: Vec::new() }
}

#[test]
fn loads_and_describes_the_model() {
    let _serial = serial();
    let engine = engine(1, 256);
    let info = engine.info();
    assert_eq!(info.architecture, "llama");
    assert_eq!(info.context_len, 256);
    assert!(info.has_chat_template);
    let prompt = chat(&engine, "Hi");
    assert!(prompt.contains("<|im_start|>user\nHi<|im_end|>"), "{prompt}");
    assert!(prompt.ends_with("<|im_start|>assistant\n"), "{prompt}");
    // Special tokens in the text count as one token each; no BOS is added.
    assert_eq!(engine.count_tokens("<|im_start|>").unwrap(), 1);
    assert_eq!(engine.count_tokens("").unwrap(), 0);
}

#[test]
fn missing_model_file_is_a_load_error() {
    let config =
        EngineConfig { model_path: "/nonexistent/model.gguf".into(), threads: 1, parallel: 1, context_len: 64 };
    match TextEngine::load(config) {
        Err(EngineError::Load { path, .. }) => assert_eq!(path, std::path::Path::new("/nonexistent/model.gguf")),
        other => panic!("expected a load error, got {other:?}"),
    }
}

#[test]
fn answers_the_capital_of_france_greedily() {
    let _serial = serial();
    let engine = engine(1, 512);
    let generation = engine.generate(greedy(chat(&engine, "What is the capital of France?"), 64)).unwrap();
    assert!(generation.prompt_tokens > 5);
    let out = collect(generation);
    assert!(out.text.contains("Paris"), "{out:?}");
    assert_eq!(out.reason, FinishReason::Stop, "{out:?}");
    assert!(out.completion_tokens > 0);
    // Every produced token was counted (and the end-of-turn token was not).
    assert_eq!(engine.count_tokens(&out.text).unwrap(), out.completion_tokens, "{out:?}");
}

#[test]
fn max_tokens_ends_with_length() {
    let _serial = serial();
    let engine = engine(1, 512);
    let out = collect(engine.generate(greedy(chat(&engine, "Tell me about France."), 5)).unwrap());
    assert_eq!(out.reason, FinishReason::Length, "{out:?}");
    assert_eq!(out.completion_tokens, 5);
    assert!(!out.text.is_empty());
}

#[test]
fn stop_strings_end_generation_and_are_not_emitted() {
    let _serial = serial();
    let engine = engine(1, 512);
    let prompt = chat(&engine, "What is the capital of France?");
    let full = collect(engine.generate(greedy(prompt.clone(), 64)).unwrap()).text;
    let cut = full.find("Paris").expect("the answer names Paris");

    let mut request = greedy(prompt, 64);
    request.stop = vec!["Paris".into(), "never-appears".into()];
    let out = collect(engine.generate(request).unwrap());
    assert_eq!(out.reason, FinishReason::Stop);
    assert!(!out.text.contains("Paris"), "{out:?}");
    assert_eq!(out.text, full[..cut], "text before the stop string is complete");
}

#[test]
fn concurrent_generations_match_a_single_one() {
    let _serial = serial();
    let engine = engine(4, 512);
    let prompt = chat(&engine, "What is the capital of France?");
    let single = collect(engine.generate(greedy(prompt.clone(), 48)).unwrap());

    // All four are queued before the engine admits them, so they share every decode step.
    let generations: Vec<_> = (0..4).map(|_| engine.generate(greedy(prompt.clone(), 48)).unwrap()).collect();
    let handles: Vec<_> = generations.into_iter().map(|g| std::thread::spawn(move || collect(g))).collect();
    for handle in handles {
        let out = handle.join().unwrap();
        assert_eq!(out.text, single.text);
        assert_eq!(out.reason, single.reason);
        assert_eq!(out.completion_tokens, single.completion_tokens);
    }
}

#[test]
fn more_requests_than_sequences_wait_their_turn() {
    let _serial = serial();
    let engine = engine(2, 256);
    let prompt = chat(&engine, "What is the capital of France?");
    let generations: Vec<_> = (0..5).map(|_| engine.generate(greedy(prompt.clone(), 4)).unwrap()).collect();
    for generation in generations {
        let out = collect(generation);
        assert_eq!((out.reason, out.completion_tokens), (FinishReason::Length, 4));
    }
}

#[test]
fn dropping_the_receiver_cancels_and_frees_the_sequence() {
    let _serial = serial();
    let engine = engine(1, 4096);
    // The model keeps counting for thousands of tokens: only cancellation ends this early.
    let counting = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,".to_owned();
    let mut first = engine.generate(greedy(counting, 4000)).unwrap();
    for _ in 0..3 {
        match first.events.blocking_recv() {
            Some(GenerationEvent::Text(_)) => {}
            other => panic!("expected text, got {other:?}"),
        }
    }
    drop(first);

    // With one sequence, this can only run once the cancelled one has released it.
    let started = Instant::now();
    let out = collect(engine.generate(greedy(chat(&engine, "What is the capital of France?"), 16)).unwrap());
    assert!(out.completion_tokens > 0);
    assert!(started.elapsed() < Duration::from_secs(60), "second request waited {:?}", started.elapsed());
}

#[test]
fn too_long_prompts_are_refused() {
    let _serial = serial();
    let engine = engine(1, 64);
    match engine.generate(greedy("hello ".repeat(200), 8)) {
        Err(EngineError::PromptTooLong { prompt_tokens, context_len }) => {
            assert!(prompt_tokens >= 64);
            assert_eq!(context_len, 64);
        }
        other => panic!("expected PromptTooLong, got {other:?}"),
    }
}

#[test]
fn invalid_requests_are_refused() {
    let _serial = serial();
    let engine = engine(1, 64);
    let mut request = greedy("Hi".into(), 8);
    request.temperature = f32::NAN;
    assert!(matches!(engine.generate(request), Err(EngineError::InvalidRequest(_))));
    assert!(matches!(engine.generate(greedy(String::new(), 8)), Err(EngineError::InvalidRequest(_))));
    // max_tokens 0 finishes at once.
    let out = collect(engine.generate(greedy("Hi".into(), 0)).unwrap());
    assert_eq!((out.reason, out.completion_tokens, out.text.as_str()), (FinishReason::Length, 0, ""));
}

#[test]
fn sampling_with_a_seed_is_reproducible() {
    let _serial = serial();
    let engine = engine(1, 512);
    let prompt = chat(&engine, "Write a short poem about the sea.");
    let request =
        GenerateRequest { prompt, max_tokens: 24, temperature: 0.9, top_p: 0.95, seed: Some(1234), stop: Vec::new() };
    let a = collect(engine.generate(request.clone()).unwrap());
    let b = collect(engine.generate(request).unwrap());
    assert_eq!(a.text, b.text);
    assert!(a.completion_tokens > 0);
}

#[test]
fn multibyte_text_arrives_whole() {
    let _serial = serial();
    let engine = engine(1, 512);
    let prompt = chat(&engine, "Write the Japanese word for 'thank you' in Japanese script, then three emoji.");
    let mut generation = engine.generate(greedy(prompt, 48)).unwrap();
    let mut text = String::new();
    while let Some(event) = generation.events.blocking_recv() {
        match event {
            GenerationEvent::Text(piece) => text.push_str(&piece),
            GenerationEvent::Finished { .. } => break,
            GenerationEvent::Failed(message) => panic!("{message}"),
        }
    }
    assert!(text.chars().any(|c| c.len_utf8() > 1), "expected non-ASCII output: {text}");
    assert!(!text.contains(char::REPLACEMENT_CHARACTER), "a character was split: {text}");
}

#[test]
fn long_prompts_are_prefilled_in_chunks() {
    let _serial = serial();
    let engine = engine(2, 2048);
    let filler = "The weather today is mild and pleasant. ".repeat(120);
    let prompt = chat(&engine, &format!("{filler}\nIgnore the text above. What is the capital of France?"));
    let generation = engine.generate(greedy(prompt, 32)).unwrap();
    assert!(generation.prompt_tokens > 900, "{} tokens: two batches of 512", generation.prompt_tokens);
    // A short request alongside is served while the long prompt is prefilled.
    let short = engine.generate(greedy(chat(&engine, "What is the capital of France?"), 32)).unwrap();
    let long = collect(generation);
    assert!(long.completion_tokens > 0);
    assert!(collect(short).text.contains("Paris"));
}
