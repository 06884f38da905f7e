#![no_main]
//! Model sidecars (`<model>.toml`).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = inspectd_cam::model::sidecar::Sidecar::parse(text);
    }
});
