//! The interception CA: generated on first start (ECDSA P-256, 10 years,
//! basicConstraints CA with path length 0, keyUsage keyCertSign + cRLSign),
//! persisted under `--state-dir` as `ca.crt` (0644) and `ca.key` (0600) and
//! reused on restart; or given explicitly by `--ca-cert/--ca-key` (e.g. a
//! Kubernetes Secret). It signs the leaf certificates minted per name.
use std::{
    fs,
    io::Write as _,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    time::Duration,
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData as _, SanType, SerialNumber,
};
use rustls::crypto::CryptoProvider;
use rustls_pki_types::{CertificateDer, pem::PemObject as _};
use sha2::Digest as _;

use super::{Error, leaf::LeafName};
use crate::config::CaSettings;

/// File name of the generated CA certificate inside `--state-dir`.
pub const CA_CERT_FILE: &str = "ca.crt";
/// File name of the generated CA private key inside `--state-dir`.
pub const CA_KEY_FILE: &str = "ca.key";

const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);
/// Leaves live a week: longer than the cache TTL, short enough to matter little if leaked.
const LEAF_VALIDITY: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// Backdating tolerates clients whose clock is a little behind.
const BACKDATE: Duration = Duration::from_secs(60 * 60);

/// A loaded CA able to sign leaf certificates.
pub struct Ca {
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
    provider: std::sync::Arc<CryptoProvider>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

impl Ca {
    /// `--ca-cert/--ca-key` when given, else the CA in `--state-dir`, created
    /// (and persisted) when absent.
    pub fn load_or_create(
        args: &CaSettings,
        provider: &std::sync::Arc<CryptoProvider>,
    ) -> Result<Self, Error> {
        if let (Some(cert), Some(key)) = (&args.ca_cert, &args.ca_key) {
            return Self::load(cert, key, provider);
        }
        let cert = args.state_dir.join(CA_CERT_FILE);
        let key = args.state_dir.join(CA_KEY_FILE);
        match (cert.exists(), key.exists()) {
            (true, true) => {
                tighten_key_mode(&key)?;
                Self::load(&cert, &key, provider)
            }
            (false, false) => {
                let (cert_pem, key_pem) = generate(provider)?;
                persist(&args.state_dir, &cert, &key, &cert_pem, &key_pem)?;
                tracing::info!(cert = %cert.display(), "generated a new interception CA");
                Self::from_pem(&cert_pem, &key_pem, &cert, provider)
            }
            (true, false) => Err(Error::PartialCa {
                dir: args.state_dir.clone(),
                present: cert,
                missing: key,
            }),
            (false, true) => Err(Error::PartialCa {
                dir: args.state_dir.clone(),
                present: key,
                missing: cert,
            }),
        }
    }

    /// Loads a CA from PEM files (certificate; PKCS#8 private key).
    pub fn load(
        cert: &Path,
        key: &Path,
        provider: &std::sync::Arc<CryptoProvider>,
    ) -> Result<Self, Error> {
        let cert_pem = read(cert)?;
        let key_pem = read(key)?;
        let key_pair = KeyPair::from_pem(&key_pem).map_err(|e| Error::BadPem {
            path: key.to_path_buf(),
            reason: format!("not a usable private key (PKCS#8 PEM expected): {e}"),
        })?;
        Self::build(&cert_pem, key_pair, cert, provider)
    }

    fn from_pem(
        cert_pem: &str,
        key_pem: &str,
        origin: &Path,
        provider: &std::sync::Arc<CryptoProvider>,
    ) -> Result<Self, Error> {
        let key_pair = KeyPair::from_pem(key_pem).map_err(|e| Error::BadPem {
            path: origin.to_path_buf(),
            reason: format!("generated key does not parse: {e}"),
        })?;
        Self::build(cert_pem, key_pair, origin, provider)
    }

    fn build(
        cert_pem: &str,
        key_pair: KeyPair,
        origin: &Path,
        provider: &std::sync::Arc<CryptoProvider>,
    ) -> Result<Self, Error> {
        let bad = |reason: String| Error::BadPem {
            path: origin.to_path_buf(),
            reason,
        };
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| bad(format!("no PEM certificate: {e}")))?;
        // The key must belong to the certificate, or every leaf would be unverifiable.
        let (_, x509) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|e| bad(format!("certificate does not parse: {e}")))?;
        if x509.public_key().raw != key_pair.subject_public_key_info().as_slice() {
            return Err(bad(
                "the private key does not match the CA certificate".into()
            ));
        }
        let issuer = Issuer::from_ca_cert_der(&cert_der, key_pair)
            .map_err(|e| bad(format!("not usable as an issuer: {e}")))?;
        Ok(Self {
            cert_pem: pem_of(&cert_der),
            cert_der,
            issuer,
            provider: provider.clone(),
        })
    }

    /// The CA certificate, PEM (what clients must trust).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER (sent after each leaf).
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// Signs a leaf for `name` (DNS or IP SAN, serverAuth) over `leaf_key`.
    pub fn mint(
        &self,
        name: &LeafName,
        leaf_key: &KeyPair,
    ) -> Result<CertificateDer<'static>, Error> {
        let mint_err = |reason: String| Error::Mint {
            name: name.to_string(),
            reason,
        };
        let mut params = CertificateParams::default();
        let san = match name {
            LeafName::Dns(host) => SanType::DnsName(
                host.as_str()
                    .try_into()
                    .map_err(|e| mint_err(format!("not a valid DNS name: {e}")))?,
            ),
            LeafName::Ip(ip) => SanType::IpAddress(*ip),
        };
        params.subject_alt_names = vec![san];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name.to_string());
        dn.push(DnType::OrganizationName, "pipelock-agent");
        params.distinguished_name = dn;
        params.is_ca = IsCa::NoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(self.random_serial().map_err(mint_err)?);
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + LEAF_VALIDITY;
        let cert = params
            .signed_by(leaf_key, &self.issuer)
            .map_err(|e| mint_err(e.to_string()))?;
        Ok(cert.der().clone())
    }

    fn random_serial(&self) -> Result<SerialNumber, String> {
        let mut bytes = [0u8; 16];
        self.provider
            .secure_random
            .fill(&mut bytes)
            .map_err(|_| "no randomness for a serial number".to_string())?;
        bytes[0] &= 0x7f; // positive INTEGER
        Ok(SerialNumber::from_slice(&bytes))
    }
}

/// A fresh CA: (certificate PEM, PKCS#8 key PEM).
fn generate(provider: &CryptoProvider) -> Result<(String, String), Error> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(Error::Generate)?;
    let mut params = CertificateParams::default();
    // A short fingerprint of the key tells CAs of different nodes apart.
    let digest = sha2::Sha256::digest(key.subject_public_key_info());
    let tag: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        format!("pipelock-agent interception CA {tag}"),
    );
    dn.push(DnType::OrganizationName, "pipelock-agent");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let mut serial = [0u8; 16];
    provider
        .secure_random
        .fill(&mut serial)
        .map_err(|_| Error::Generate(rcgen::Error::RingUnspecified))?;
    serial[0] &= 0x7f;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + CA_VALIDITY;
    let cert = params.self_signed(&key).map_err(Error::Generate)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Writes the key (0600, atomically) then the certificate, creating `dir` (0700).
fn persist(
    dir: &Path,
    cert: &Path,
    key: &Path,
    cert_pem: &str,
    key_pem: &str,
) -> Result<(), Error> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| Error::File {
            action: "creating state directory",
            path: dir.to_path_buf(),
            source,
        })?;
    write_atomic(key, key_pem, 0o600)?;
    write_atomic(cert, cert_pem, 0o644)
}

fn write_atomic(path: &Path, contents: &str, mode: u32) -> Result<(), Error> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let err = |action: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |source| Error::File {
            action,
            path: p,
            source,
        }
    };
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err("creating", &tmp))?;
    // The mode given to open() is filtered by the umask; set it exactly.
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(err("setting the mode of", &tmp))?;
    f.write_all(contents.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(err("writing", &tmp))?;
    fs::rename(&tmp, path).map_err(err("renaming into place", path))
}

/// A key readable by group or others is fixed (and said), not silently used.
fn tighten_key_mode(key: &Path) -> Result<(), Error> {
    let meta = fs::metadata(key).map_err(|source| Error::File {
        action: "inspecting",
        path: key.to_path_buf(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        tracing::warn!(key = %key.display(), mode = format!("{mode:o}"), "CA key was readable by others; setting mode 0600");
        fs::set_permissions(key, fs::Permissions::from_mode(0o600)).map_err(|source| {
            Error::File {
                action: "setting mode 0600 on",
                path: key.to_path_buf(),
                source,
            }
        })?;
    }
    Ok(())
}

fn read(path: &Path) -> Result<String, Error> {
    fs::read_to_string(path).map_err(|source| Error::File {
        action: "reading",
        path: path.to_path_buf(),
        source,
    })
}

fn pem_of(der: &CertificateDer<'_>) -> String {
    let cfg = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new("CERTIFICATE", der.to_vec()), cfg)
}

/// Where the generated CA lives for `args` (for messages and tests).
pub fn state_paths(args: &CaSettings) -> (PathBuf, PathBuf) {
    (
        args.state_dir.join(CA_CERT_FILE),
        args.state_dir.join(CA_KEY_FILE),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(dir: &Path) -> CaSettings {
        CaSettings {
            state_dir: dir.to_path_buf(),
            ca_cert: None,
            ca_key: None,
        }
    }

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "pipelock-ca-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn created_once_then_reused_with_key_0600() {
        let dir = tempdir("reuse");
        let p = super::super::config::provider();
        let a = Ca::load_or_create(&args(&dir), &p).expect("create");
        let mode = fs::metadata(dir.join(CA_KEY_FILE))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = Ca::load_or_create(&args(&dir), &p).expect("reload");
        assert_eq!(a.cert_der(), b.cert_der());
        assert_eq!(
            a.cert_pem(),
            fs::read_to_string(dir.join(CA_CERT_FILE)).expect("crt")
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn partial_state_is_an_error() {
        let dir = tempdir("partial");
        let p = super::super::config::provider();
        Ca::load_or_create(&args(&dir), &p).expect("create");
        fs::remove_file(dir.join(CA_KEY_FILE)).expect("rm");
        let err = Ca::load_or_create(&args(&dir), &p).expect_err("partial");
        assert!(matches!(err, Error::PartialCa { .. }), "{err}");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn explicit_ca_must_match_its_key() {
        let dir = tempdir("mismatch");
        let p = super::super::config::provider();
        Ca::load_or_create(&args(&dir), &p).expect("create");
        let other = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let key = dir.join("other.key");
        fs::write(&key, other.serialize_pem()).expect("write");
        let err = Ca::load(&dir.join(CA_CERT_FILE), &key, &p).expect_err("mismatch");
        assert!(err.to_string().contains("does not match"), "{err}");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn pem_round_trips() {
        let p = super::super::config::provider();
        let (cert_pem, _) = generate(&p).expect("gen");
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).expect("der");
        assert_eq!(pem_of(&der), cert_pem.replace("\r\n", "\n"));
    }
}
