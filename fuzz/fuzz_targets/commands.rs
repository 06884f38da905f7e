#![no_main]
//! `{p}/cmd/{level}` messages through the daemon's command path (`mqtt::commands::route`): the
//! topic level as well as the payload come from the fuzzer. First byte: bit 7 = retained;
//! bit 6 clear = a known name picked by the low bits (including unknown ones), bit 6 set = an
//! arbitrary level (up to 64 KiB of UTF-8: the next two bytes give its length) before the payload.
use libfuzzer_sys::fuzz_target;

const NAMES: [&str; 8] = ["trigger", "set", "pause", "resume", "reload_model", "rebirth", "explode", ""];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else { return };
    let retained = pick & 0x80 != 0;
    let (level, payload): (std::borrow::Cow<str>, &[u8]) = if pick & 0x40 == 0 {
        (NAMES[pick as usize % NAMES.len()].into(), rest)
    } else {
        let Some((len, rest)) = rest.split_first_chunk::<2>() else { return };
        let n = (u16::from_le_bytes(*len) as usize).min(rest.len());
        (String::from_utf8_lossy(&rest[..n]), &rest[n..])
    };
    let rules = inspectd::verdict::Rules::default();
    let (name, _, cmd) = inspectd::mqtt::commands::route(&level, payload, retained, &rules);
    // The echoed name is short, whatever the level (cut on a character boundary).
    assert!(name.chars().count() <= inspectd::mqtt::commands::MAX_NAME_CHARS + 1);
    if retained {
        assert!(cmd.is_err(), "a retained command was accepted");
    }
    if let Ok(inspectd::mqtt::commands::Command::Set(r)) = cmd {
        // Whatever `set` accepts must be a valid rule set.
        assert!(r.validate().is_ok());
    }
});
