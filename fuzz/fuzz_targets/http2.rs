//! Arbitrary bytes as HPACK header blocks and as HTTP/2 frames cut into chunks: no input may
//! panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tracer_userspace::fuzzing::run_http2(data);
});
