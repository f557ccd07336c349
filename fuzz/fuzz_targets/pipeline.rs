//! Arbitrary event streams through the parser, pairing and span assembly: no input may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tracer_userspace::fuzzing::run_pipeline(data);
});
