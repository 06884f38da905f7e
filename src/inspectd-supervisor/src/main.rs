//! The `inspectd-supervisor` binary: the plant dashboard (all logic lives in the library).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "inspectd-supervisor",
    version,
    about = "Plant dashboard for inspectd boxes: subscribe to every device, store history in SQLite, serve the web UI",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: Option<inspectd_supervisor::SuperviseArgs>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Publish synthetic verdicts as fast as the broker takes them (supervisor benchmark).
    #[command(hide = true)]
    Loadgen(inspectd_supervisor::loadgen::LoadgenArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match (cli.command, cli.serve) {
        (Some(Command::Loadgen(a)), _) => {
            inspectd_contract::client::init_logging("warn");
            inspectd_supervisor::loadgen::run(a)
        }
        (None, Some(a)) => {
            inspectd_contract::client::init_logging("info");
            inspectd_supervisor::run(a)
        }
        (None, None) => unreachable!("clap requires --broker"),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("inspectd-supervisor: error: {e:#}");
            ExitCode::from(if inspectd_cam::error::is_bad_input(&e) {
                2
            } else {
                1
            })
        }
    }
}
