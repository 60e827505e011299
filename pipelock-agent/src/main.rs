//! pipelock-agent entry point: parse the command line, set up logging, run.
use std::process::ExitCode;

use clap::Parser;
use pipelock_agent::{
    cli::{Cli, Command},
    run, telemetry,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => start(cli.run),
        Some(Command::Run(args)) => start(args),
        Some(Command::Ca(_)) => Err(anyhow::anyhow!("`ca` is not available in this build yet")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pipelock-agent: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn start(args: pipelock_agent::cli::RunArgs) -> anyhow::Result<()> {
    telemetry::init(args.log_format);
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(run::run(args))
}
