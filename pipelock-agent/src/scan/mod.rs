//! Streaming scan engine: DLP on requests and responses, prompt injection on
//! responses. Hyperscan databases (`engine`), the rule catalogue
//! (`patterns`), validators and the numeric pass, Unicode normalisation,
//! content and secret decoding, SSE reassembly and known secrets. It reports
//! hits; `crate::pipeline` turns them into actions.
pub mod blocks;
pub mod body;
pub mod decode;
pub mod engine;
pub mod known_secrets;
pub mod normalize;
pub mod numeric;
pub mod patterns;
pub mod runs;
pub mod seed;
#[cfg(target_arch = "x86_64")]
mod simd;
pub mod sse;
pub mod tail;
pub mod text;
pub mod unescape;
pub mod validators;

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
