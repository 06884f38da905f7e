#![no_main]
//! ONNX bytes → our graph → head extraction from every tensor feeding the output (the part of
//! model loading that is ours; tract's protobuf reader sits in front of it). Seed corpus: the
//! fixtures in tests/fixtures/*.onnx.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = inspectd_cam::model::heads_from_bytes(data);
});
