//! pipelock-agent entry point: parse the command line, set up logging, run.
use std::process::ExitCode;

use clap::Parser;
use pipelock_agent::{
    cli::{CaArgs, CaCommand, Cli, Command},
    run, telemetry,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => start(cli.run),
        Some(Command::Run(args)) => start(*args),
        Some(Command::Ca(CaCommand::Export(args))) => ca_export(&args),
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

/// `ca export`: print the CA certificate PEM (creating the CA when missing).
fn ca_export(args: &CaArgs) -> anyhow::Result<()> {
    let provider = pipelock_agent::tls::config::provider();
    let ca = pipelock_agent::tls::Ca::load_or_create(&args.settings(), &provider)?;
    print!("{}", ca.cert_pem());
    Ok(())
}
