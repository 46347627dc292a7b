//! Upstream response validation: checks 1-4, bailiwick scrub, rebinding,
//! CNAME-chain blocklist, the reply to the client.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    dns_guard::proxy::fuzzing::fuzz_response(data);
});
