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

/// Loads or creates the CA and builds the whole TLS context from the config
/// (`interceptor` CA files or state dir, `interceptor.upstream_ca`, and
/// `tls_interception.cert_cache_size` / `cert_ttl` for the leaf cache).
pub fn load(cfg: &crate::config::Config) -> Result<Arc<Tls>, Error> {
    let provider = config::provider();
    let ca = Ca::load_or_create(&cfg.ca_settings(), &provider)?;
    let leaves = &cfg.tls_interception;
    Ok(Arc::new(Tls::new(
        ca,
        provider,
        cfg.interceptor.upstream_ca.as_deref(),
        leaves.cert_cache_size.max(1),
        leaves.cert_ttl.0,
    )?))
}
