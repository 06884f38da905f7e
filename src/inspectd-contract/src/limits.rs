//! Sizes the edge enforces on what it is sent: a sender that stays within them is never refused
//! for size.

/// Largest command payload (`{p}/cmd/{name}`) a device accepts, in bytes.
pub const MAX_COMMAND_PAYLOAD: usize = 4096;
/// Longest command name (topic level after `cmd/`) echoed in a `cmd_result`, in characters.
pub const MAX_NAME_CHARS: usize = 64;
/// Longest request `id` of a command, in bytes (UTF-8).
pub const MAX_ID_BYTES: usize = 128;
/// Longest `part_id` of a `trigger`, in bytes (UTF-8).
pub const MAX_PART_ID_BYTES: usize = 128;
