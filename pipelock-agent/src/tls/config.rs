//! rustls configurations on an explicit ring `CryptoProvider` (never the
//! process default): the server side (a template cloned per connection with
//! that connection's leaf and ALPN list) and the client side towards
//! upstreams (system roots via rustls-native-certs plus `--upstream-ca`),
//! one per ALPN offer.
use std::{path::Path, sync::Arc, time::Duration};

use rcgen::KeyPair;
use rustls::{
    ClientConfig, RootCertStore, ServerConfig,
    crypto::CryptoProvider,
    server::{ClientHello, ResolvesServerCert},
    sign::{CertifiedKey, SigningKey},
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};

use super::{Ca, Error, LeafCache, LeafName};

/// ALPN identifiers.
pub const H2: &[u8] = b"h2";
/// See [`H2`].
pub const HTTP11: &[u8] = b"http/1.1";

/// The crypto provider every rustls config of the agent is built on.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What the agent offers an upstream in ALPN.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AlpnOffer {
    /// `h2` and `http/1.1` (the client offered h2).
    Both,
    /// `http/1.1` only.
    Http11,
}

/// Serves one fixed certified key (set per connection).
#[derive(Debug)]
struct Fixed(Option<Arc<CertifiedKey>>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.clone()
    }
}

/// Everything TLS the proxy needs, shared by all connections.
pub struct Tls {
    ca: Ca,
    provider: Arc<CryptoProvider>,
    /// One key for every leaf (as mitmproxy does): minting is then one signature.
    leaf_keypair: KeyPair,
    leaf_signer: Arc<dyn SigningKey>,
    leaves: LeafCache,
    server_template: ServerConfig,
    client_both: Arc<ClientConfig>,
    client_h1: Arc<ClientConfig>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").finish_non_exhaustive()
    }
}

impl Tls {
    /// Builds the configs; `upstream_ca` adds a PEM bundle to the system roots.
    pub fn new(
        ca: Ca,
        provider: Arc<CryptoProvider>,
        upstream_ca: Option<&Path>,
        leaf_capacity: usize,
        leaf_ttl: Duration,
    ) -> Result<Self, Error> {
        let leaf_keypair =
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(Error::Generate)?;
        let leaf_signer = provider
            .key_provider
            .load_private_key(PrivateKeyDer::Pkcs8(leaf_keypair.serialize_der().into()))?;

        let mut server_template = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Fixed(None)));
        server_template.ticketer = rustls::crypto::ring::Ticketer::new()?;

        let roots = root_store(upstream_ca)?;
        let mut client = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = vec![HTTP11.to_vec()];
        let client_h1 = Arc::new(client.clone());
        client.alpn_protocols = vec![H2.to_vec(), HTTP11.to_vec()];
        let client_both = Arc::new(client);

        Ok(Self {
            ca,
            provider,
            leaf_keypair,
            leaf_signer,
            leaves: LeafCache::new(leaf_capacity, leaf_ttl),
            server_template,
            client_both,
            client_h1,
        })
    }

    /// The CA leaves are signed with.
    pub fn ca(&self) -> &Ca {
        &self.ca
    }

    /// The provider all configs use.
    pub fn provider(&self) -> &Arc<CryptoProvider> {
        &self.provider
    }

    /// The leaf cache (for metrics and tests).
    pub fn leaves(&self) -> &LeafCache {
        &self.leaves
    }

    /// The leaf for `name`, minted on a cache miss.
    pub fn leaf(&self, name: &LeafName) -> Result<Arc<CertifiedKey>, Error> {
        self.leaves.get_or_mint(name, || self.mint(name))
    }

    /// Mints a leaf without the cache (what a cache miss costs).
    pub fn mint(&self, name: &LeafName) -> Result<Arc<CertifiedKey>, Error> {
        let der = self.ca.mint(name, &self.leaf_keypair)?;
        Ok(Arc::new(CertifiedKey::new(
            vec![der, self.ca.cert_der().clone()],
            self.leaf_signer.clone(),
        )))
    }

    /// A server config presenting the leaf for `name` and offering `alpn`.
    pub fn server_config(
        &self,
        name: &LeafName,
        alpn: &[&[u8]],
    ) -> Result<Arc<ServerConfig>, Error> {
        let leaf = self.leaf(name)?;
        let mut cfg = self.server_template.clone();
        cfg.cert_resolver = Arc::new(Fixed(Some(leaf)));
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(cfg))
    }

    /// The client config towards upstreams for `offer`.
    pub fn client_config(&self, offer: AlpnOffer) -> Arc<ClientConfig> {
        match offer {
            AlpnOffer::Both => self.client_both.clone(),
            AlpnOffer::Http11 => self.client_h1.clone(),
        }
    }
}

/// System roots (`/etc/ssl/certs` et al., honouring SSL_CERT_FILE/SSL_CERT_DIR)
/// plus the optional extra bundle.
fn root_store(extra: Option<&Path>) -> Result<RootCertStore, Error> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::warn!(error = %e, "reading the system trust store");
    }
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    tracing::debug!(added, ignored, "system trust anchors loaded");
    if let Some(path) = extra {
        let bad = |reason: String| Error::BadPem {
            path: path.to_path_buf(),
            reason,
        };
        let mut n = 0;
        for cert in CertificateDer::pem_file_iter(path)
            .map_err(|e| bad(format!("cannot read the --upstream-ca bundle: {e}")))?
        {
            let cert = cert.map_err(|e| bad(format!("bad PEM in --upstream-ca: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| bad(format!("unusable trust anchor: {e}")))?;
            n += 1;
        }
        if n == 0 {
            return Err(bad("no certificate in the --upstream-ca bundle".into()));
        }
    }
    if roots.is_empty() {
        return Err(Error::NoRoots);
    }
    Ok(roots)
}
