//! Logging setup: tracing to stdout and/or a file (`logging:`), text or JSON lines; `log` records
//! (aya-log's kernel-side messages) are bridged into tracing. The metrics
//! registry is `metrics`; `top` keeps the bounded counts `/stats` ranks.
pub mod metrics;
pub mod top;

use tracing_subscriber::{
    EnvFilter,
    fmt::{self, writer::BoxMakeWriter, writer::MakeWriterExt as _},
    prelude::*,
};

use crate::config::{LogFormat, pipelock::LogOutput};

/// Where log lines go (`logging.output`, `logging.file`): stdout (as
/// Pipelock), a file, or both. A file that cannot be opened is an error.
pub fn writer(output: LogOutput, file: Option<&str>) -> anyhow::Result<BoxMakeWriter> {
    use anyhow::Context as _;
    let open = |path: &str| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("logging.file {path}: cannot open for appending"))
    };
    Ok(match (output, file) {
        (LogOutput::Stdout, _) | (_, None) => BoxMakeWriter::new(std::io::stdout),
        (LogOutput::File, Some(path)) => BoxMakeWriter::new(std::sync::Arc::new(open(path)?)),
        (LogOutput::Both, Some(path)) => {
            BoxMakeWriter::new(std::io::stdout.and(std::sync::Arc::new(open(path)?)))
        }
    })
}

/// Keeps the log-writing thread running; dropping it writes the lines still
/// queued and stops the thread (hold it until the agent exits).
pub type LogGuard = tracing_appender::non_blocking::WorkerGuard;

/// Lines queued for the log-writing thread before a logging task waits. The
/// queue's slots are allocated up front: tracing-appender's default (128,000)
/// was 4 MB of the idle agent's memory; 8,192 lines still absorb about a
/// second of logging at 5,000 connections a second.
const QUEUED_LINES: usize = 8192;
/// Bytes of queued lines the log thread gathers into one write.
const WRITE_BATCH: usize = 64 * 1024;

/// `writer` behind a thread of its own: a runtime worker formats a line and
/// queues it, and never waits for stdout or the file (a slow reader of the
/// agent's stdout would otherwise stall every connection of that worker).
/// Nothing is dropped: a full queue makes the logging task wait.
///
/// The thread writes the lines it finds queued together in one `write(2)`:
/// it flushes its buffer each time the queue is empty, so no line waits for
/// more. Line by line, the writes (each waking the reader of stdout) were
/// 8.8 % of the agent's CPU under a stream of new connections.
pub fn non_blocking(writer: BoxMakeWriter) -> (BoxMakeWriter, LogGuard) {
    let (nb, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(QUEUED_LINES)
        .thread_name("pipelock-log")
        .finish(std::io::BufWriter::with_capacity(
            WRITE_BATCH,
            MakeWriterIo(writer),
        ));
    (BoxMakeWriter::new(nb), guard)
}

/// A `MakeWriter` as one `io::Write` (each call goes to a fresh writer of it).
struct MakeWriterIo(BoxMakeWriter);

impl std::io::Write for MakeWriterIo {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        use tracing_subscriber::fmt::MakeWriter as _;
        self.0.make_writer().write_all(buf).map(|()| buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        use tracing_subscriber::fmt::MakeWriter as _;
        self.0.make_writer().flush()
    }
}

/// Installs the global subscriber writing to `writer`. `RUST_LOG` overrides
/// the default `info`.
pub fn init(format: LogFormat, writer: BoxMakeWriter) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Text => registry
            .with(fmt::layer().with_ansi(false).with_writer(writer))
            .try_init(),
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_writer(writer),
            )
            .try_init(),
    };
    if let Err(e) = result {
        eprintln!("pipelock-agent: logging already initialised: {e}");
    }
}
