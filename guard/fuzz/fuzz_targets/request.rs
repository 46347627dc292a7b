//! Client request handling: parse, FORMERR/NOTIMP/REFUSED, local replies.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    dns_guard::proxy::fuzzing::fuzz_request(data);
});
