//! Embeddings against the real all-MiniLM-L6-v2.

mod common;

use std::sync::OnceLock;

use taimatsu_cpu_engine::EmbeddingEngine;

fn engine() -> &'static EmbeddingEngine {
    static ENGINE: OnceLock<EmbeddingEngine> = OnceLock::new();
    ENGINE.get_or_init(|| EmbeddingEngine::load(&common::minilm(), 2).expect("model loads"))
}

fn embed(inputs: &[&str]) -> Vec<Vec<f32>> {
    let inputs: Vec<String> = inputs.iter().map(|s| s.to_string()).collect();
    engine().embed(&inputs).unwrap().vectors
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[test]
fn vectors_are_unit_length_with_the_model_dimension() {
    assert_eq!(engine().dimensions(), 384);
    for v in embed(&["A man is eating food.", "", "Ünïcödé and emoji 🚀"]) {
        assert_eq!(v.len(), 384);
        assert!((dot(&v, &v).sqrt() - 1.0).abs() < 1e-4);
    }
}

#[test]
fn similar_sentences_are_closer() {
    let v = embed(&["A man is eating food.", "A man is eating a piece of bread.", "The new movie is awesome."]);
    let related = dot(&v[0], &v[1]);
    let unrelated = dot(&v[0], &v[2]);
    assert!(related > unrelated, "related {related} vs unrelated {unrelated}");
    assert!(related > 0.5, "related {related}");
}

#[test]
fn padding_in_a_batch_does_not_change_vectors() {
    let long = "A much longer sentence about a man who is eating a very large plate of food in a busy \
                restaurant in the middle of the city, while it rains outside.";
    let short = "Bread.";
    let batch = embed(&[short, long, "A man is eating food."]);
    let alone = embed(&[short]);
    let max_diff = batch[0].iter().zip(&alone[0]).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(max_diff < 1e-4, "max difference {max_diff}");
}

#[test]
fn counts_tokens_without_padding() {
    let inputs = vec!["Bread.".to_string(), "A man is eating food.".to_string()];
    let out = engine().embed(&inputs).unwrap();
    // [CLS] bread . [SEP] = 4; [CLS] a man is eating food . [SEP] = 8.
    assert_eq!(out.prompt_tokens, 12);
    assert!(engine().embed(&[]).unwrap().vectors.is_empty());
}

#[test]
fn long_inputs_are_truncated_not_refused() {
    let long = "word ".repeat(2000);
    let out = engine().embed(&[long]).unwrap();
    assert_eq!(out.vectors[0].len(), 384);
    assert_eq!(out.prompt_tokens, 256);
}
