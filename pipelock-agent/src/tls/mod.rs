//! TLS interception material: the local CA (`ca`: load, create, persist),
//! per-name leaf certificates (`leaf`: minting and a bounded, expiring,
//! single-flight cache) and the rustls configurations built on an explicit
//! ring `CryptoProvider` (`config`: server side with ALPN per connection,
//! client side verified against the system roots plus `--upstream-ca`).
pub mod ca;
pub mod config;
pub mod leaf;

use std::{path::PathBuf, sync::Arc, time::Duration};

pub use ca::Ca;
pub use config::{AlpnOffer, Tls};
pub use leaf::{LeafCache, LeafName};

/// Errors of the TLS subsystem. Messages say which file or name is concerned.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{action} {path}: {source}")]
    File {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    BadPem { path: PathBuf, reason: String },
    #[error(
        "CA state in {dir} is incomplete: {present} exists but {missing} does not; restore it or remove both to generate a new CA"
    )]
    PartialCa {
        dir: PathBuf,
        present: PathBuf,
        missing: PathBuf,
    },
    #[error("generating the CA: {0}")]
    Generate(rcgen::Error),
    #[error("minting a leaf certificate for {name}: {reason}")]
    Mint { name: String, reason: String },
    #[error("rustls configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error(
        "no trust anchors for upstream verification: the system store is empty and no --upstream-ca was given"
    )]
    NoRoots,
}

/// Leaf cache defaults, as Pipelock's forward proxy (24 h, 10,000 entries).
pub const LEAF_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// See [`LEAF_TTL`].
pub const LEAF_CAPACITY: usize = 10_000;

/// Convenience: load or create the CA and build the whole TLS context.
pub fn load(
    ca_args: &crate::config::CaSettings,
    upstream_ca: Option<&std::path::Path>,
) -> Result<Arc<Tls>, Error> {
    let provider = config::provider();
    let ca = Ca::load_or_create(ca_args, &provider)?;
    Ok(Arc::new(Tls::new(
        ca,
        provider,
        upstream_ca,
        LEAF_CAPACITY,
        LEAF_TTL,
    )?))
}
