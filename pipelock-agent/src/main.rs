//! pipelock-agent entry point: parse the command line, load the config,
//! set up logging, run (or check a config, print the defaults, export the CA).
use std::process::ExitCode;

use clap::Parser;
use pipelock_agent::{
    cli::{CaArgs, CaCommand, CheckConfigArgs, Cli, Command, DetachArgs, RunArgs, StatusArgs},
    config::{self, Loaded},
    run, telemetry,
};

/// mimalloc instead of glibc's malloc: every request allocates and frees
/// header maps, body frames and scan state across two worker threads, where
/// glibc's arenas spend their time consolidating and trimming (measured in
/// `cargo xtask bench tls`).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `arena_eager_commit` option (its index in `mi_option_t`;
/// libmimalloc-sys names no constant for it).
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;

/// Commits mimalloc's arena on demand: eager commit made the idle agent
/// ~12 MB and each idle connection ~30 KB larger, for no throughput. It
/// must run before the first allocation reserves the arena, which the Rust
/// runtime makes before `main`: hence a constructor (`.init_array`).
extern "C" fn tune_allocator() {
    // SAFETY: sets one option value, before `main`, with one thread.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0) };
}

#[used]
#[unsafe(link_section = ".init_array")]
static TUNE_ALLOCATOR: extern "C" fn() = tune_allocator;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => start(cli.run),
        Some(Command::Run(args)) => start(*args),
        Some(Command::CheckConfig(args)) => check_config(*args),
        Some(Command::Config(_)) => {
            print!("{}", config::DEFAULTS_YAML);
            Ok(())
        }
        Some(Command::Detach(args)) => detach(&args),
        Some(Command::Ca(CaCommand::Export(args))) => ca_export(&args),
        Some(Command::Healthcheck(args)) => {
            pipelock_agent::admin::healthcheck::run(&args.addr, args.timeout)
        }
        Some(Command::Status(args)) => status(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pipelock-agent: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn start(flags: RunArgs) -> anyhow::Result<()> {
    let loaded = match &flags.config {
        Some(path) => config::load(path)?,
        None => Loaded::defaults(),
    };
    let start = run::Start { loaded, flags };
    let cfg = start.effective();
    let writer = telemetry::writer(cfg.logging.output, cfg.logging.file.as_deref())?;
    // Held until `run` returns: dropping it writes the queued lines.
    let (writer, _log_guard) = telemetry::non_blocking(writer);
    telemetry::init(cfg.logging.format, writer);
    for n in &start.loaded.notices {
        tracing::warn!(target: "pipelock::config", key = %n.path, line = n.line, "{}", n.note);
    }
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(run::run(start))
}

/// `check-config FILE [run flags]`: loads and checks the file, applies the
/// `run` flags given with it, compiles the patterns with the built-in
/// rules, and lists the notices. Runs nothing.
fn check_config(args: CheckConfigArgs) -> anyhow::Result<()> {
    let path = args
        .file()
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("check-config needs a FILE (or --config FILE)"))?;
    let loaded = config::load(&path)?;
    for n in &loaded.notices {
        eprintln!("pipelock-agent: warning: {n}");
    }
    let start = run::Start {
        loaded,
        flags: args.run,
    };
    let cfg = start.effective();
    run::check_start_flags(&cfg).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    // Mode overrides name cgroups of the node the agent runs on; they are
    // resolved at start, not here.
    let scan = run::scan_config(&cfg, Default::default());
    pipelock_agent::pipeline::ScanPipeline::new(scan)
        .map_err(|e| anyhow::anyhow!("config {}: {e}", path.display()))?;
    let notices = start.loaded.notices.len();
    println!(
        "{}: ok (mode {}, cgroup {}, fail_mode {}, {} notice{})",
        path.display(),
        cfg.effective_mode().as_str(),
        cfg.interceptor.cgroup.as_deref().unwrap_or("none"),
        cfg.interceptor.fail_mode.as_str(),
        notices,
        if notices == 1 { "" } else { "s" }
    );
    Ok(())
}

/// `status`: the running agent's status, over its admin socket.
fn status(args: &StatusArgs) -> anyhow::Result<()> {
    let cfg = match &args.config {
        Some(path) => config::load(path)?.config,
        None => config::Config::default(),
    };
    let dir = args.state_dir.clone().unwrap_or(cfg.interceptor.state_dir);
    pipelock_agent::admin::status::run(&dir, args.json)
}

/// `detach`: removes the pinned redirect of `fail_mode: closed`.
fn detach(args: &DetachArgs) -> anyhow::Result<()> {
    let cfg = match &args.config {
        Some(path) => config::load(path)?.config,
        None => config::Config::default(),
    };
    let dir = args.pin_dir.clone().unwrap_or(cfg.interceptor.pin_dir);
    let removed = pipelock_agent::redirect::pin::detach(&dir)?;
    if removed.is_empty() {
        println!("nothing pinned under {}", dir.display());
    } else {
        println!(
            "detached: removed {} pinned redirect{} under {}",
            removed.len(),
            if removed.len() == 1 { "" } else { "s" },
            dir.display()
        );
    }
    Ok(())
}

/// `ca export`: print the CA certificate PEM (creating the CA when missing).
fn ca_export(args: &CaArgs) -> anyhow::Result<()> {
    let provider = pipelock_agent::tls::config::provider();
    let ca = pipelock_agent::tls::Ca::load_or_create(&args.settings()?, &provider)?;
    print!("{}", ca.cert_pem());
    Ok(())
}
