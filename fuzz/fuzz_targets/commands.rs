#![no_main]
//! `{p}/cmd/{name}` payloads: the first byte picks the command name (including unknown ones).
use libfuzzer_sys::fuzz_target;

const NAMES: [&str; 8] = ["trigger", "set", "pause", "resume", "reload_model", "rebirth", "explode", ""];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, payload)) = data.split_first() else { return };
    let name = NAMES[pick as usize % NAMES.len()];
    let rules = inspectd::verdict::Rules::default();
    let (_, cmd) = inspectd::mqtt::commands::parse(name, payload, &rules);
    if let Ok(inspectd::mqtt::commands::Command::Set(r)) = cmd {
        // Whatever `set` accepts must be a valid rule set.
        assert!(r.validate().is_ok());
    }
});
