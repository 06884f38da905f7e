//! The `inspectd` binary: all logic lives in the library.

fn main() -> std::process::ExitCode {
    inspectd::cli::main()
}
