#![no_main]
// The harness is easel::fuzzing::config (shared with the corpus replay test).
libfuzzer_sys::fuzz_target!(|data: &[u8]| easel::fuzzing::config(data));
