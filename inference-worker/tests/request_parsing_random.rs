//! The fuzz target's entry point over many generated bodies, on stable and in CI: mutated
//! valid requests and raw random bytes must never panic (the coverage-guided fuzzer,
//! `hack/fuzz.sh`, goes further on nightly).

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

const SEEDS: [&str; 4] = [
    r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":5,"stream":true,"stream_options":{"include_usage":true},"stop":["a"]}"#,
    r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}],"temperature":0.5,"top_p":0.9,"seed":7}"#,
    r#"{"model":"m","prompt":["a","b"],"max_completion_tokens":3,"n":1}"#,
    r#"{"model":"m","input":["x","y"],"encoding_format":"base64","dimensions":384}"#,
];

const INTERESTING: [&[u8]; 12] = [
    b"-1",
    b"1e309",
    b"null",
    b"[]",
    b"{}",
    b"\"\\ud800\"",
    b"18446744073709551616",
    b"true",
    b"\xff",
    b"\"",
    b"{",
    b"0.0",
];

#[test]
fn request_parsing_never_panics() {
    let mut rng = Rng(0x7A1_3A75);
    for i in 0..20_000 {
        let mut body = SEEDS[i % SEEDS.len()].as_bytes().to_vec();
        for _ in 0..(rng.next() % 4 + 1) {
            let at = (rng.next() as usize) % body.len().max(1);
            match rng.next() % 4 {
                0 if !body.is_empty() => body[at] = rng.next() as u8,
                1 => {
                    body.truncate(at);
                }
                2 => {
                    let ins = INTERESTING[(rng.next() as usize) % INTERESTING.len()];
                    body.splice(at..at, ins.iter().copied());
                }
                _ => {
                    let end = (at + (rng.next() as usize % 8)).min(body.len());
                    body.drain(at..end);
                }
            }
        }
        taimatsu_inference_worker::parse_untrusted_request(&body);
    }
    for _ in 0..2_000 {
        let len = (rng.next() % 256) as usize;
        let body: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        taimatsu_inference_worker::parse_untrusted_request(&body);
    }
}
