#![no_main]
//! Config files: any text must give a Config or an error, never a panic.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = inspectd::config::Config::parse(text, "fuzz", std::path::Path::new("/nonexistent"));
    }
});
