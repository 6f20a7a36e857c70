#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| router::fuzzing::proxy_http1(data));
