//! Streaming scan engine: DLP on requests and responses, prompt injection on
//! responses. It reports hits ([`text::Hit`]) and nothing else; modes,
//! verdicts, the findings log and metrics are `crate::pipeline`'s.
//!
//! - `engine`: the Hyperscan databases, the rule catalogue (`patterns`) and
//!   the known secrets compiled into them;
//! - `text`: a decoded text stream under scan ([`text::TextScanner`]) and
//!   what turns wire bytes into text: content decoding, SSE reassembly, JSON
//!   unescaping, Unicode normalisation;
//! - `passes`: the cheap passes that find what has no literal to anchor a
//!   pattern on (numeric tokens and their validators, encoded runs, BIP-39
//!   seed phrases) over a shared 64-byte block classification;
//! - `body`: one HTTP body as it streams ([`body::BodyScanner`]).
pub mod body;
pub mod engine;
pub mod passes;
#[cfg(target_arch = "x86_64")]
mod simd;
pub mod text;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

/// Errors of the scan engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("compiling the {what} Hyperscan database failed at {detail}")]
    Compile {
        what: &'static str,
        detail: String,
        #[source]
        source: hyperscan::Error,
    },
    #[error("Hyperscan {op} failed: {source}")]
    Hyperscan {
        op: &'static str,
        #[source]
        source: hyperscan::Error,
    },
    #[error("building the span finder of {expr:?}: {source}")]
    SpanDfa {
        expr: String,
        #[source]
        source: Box<regex_automata::dfa::dense::BuildError>,
    },
    #[error("Hyperscan scratch pool lock poisoned")]
    ScratchPoisoned,
    #[error("known secret: reading {path}: {source}")]
    KnownSecretFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("decoding {encoding} content: {source}")]
    Decode {
        encoding: &'static str,
        #[source]
        source: std::io::Error,
    },
}
