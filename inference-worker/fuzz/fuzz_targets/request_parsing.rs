//! Untrusted request bodies must never panic the worker.
#![no_main]

libfuzzer_sys::fuzz_target!(|body: &[u8]| {
    taimatsu_inference_worker::parse_untrusted_request(body);
});
