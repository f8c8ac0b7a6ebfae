//! Fuzzes `mnv2 serve`'s Open Inference Protocol request parsing: the JSON, Triton's binary
//! tensor data after it, the shapes and the limits (`mnv2_serve::v2::decode_harness` says how
//! the bytes become headers and a body). Every input must end as `Ok` or a 4xx, never a panic
//! or a 5xx.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(Err(e)) = mnv2_serve::v2::decode_harness(data) {
        assert!(e.status.is_client_error(), "{} {}", e.status, e.message);
    }
});
