//! Known-secret leak detection: values taken from environment variables or
//! files (e.g. the app's mounted Kubernetes secrets) are compiled as
//! literals in their raw and encoded forms (base64, base64url, hex, base32,
//! percent). Values never appear in logs, findings or errors: a finding
//! names only the source (`env:NAME` / `file:PATH`).
use std::path::{Path, PathBuf};

use base64::Engine as _;

use super::{
    ExtraLiteral, Reveal, RuleMeta,
    patterns::{Confidence, RuleClass, Severity},
};
use crate::scan::Error;

/// Where known secrets come from.
#[derive(Clone, Debug, Default)]
pub struct KnownSecretsConfig {
    /// Environment variable names, each optionally followed by `@host,host`
    /// (hosts the value legitimately goes to, e.g. `OPENAI_API_KEY@openai.com`).
    pub env: Vec<String>,
    /// Files (one value, trimmed) or directories (each regular, non-hidden
    /// file is one value), optionally followed by `@host,host`.
    pub files: Vec<String>,
    /// Values shorter than this are ignored (too likely to match by chance).
    pub min_len: usize,
}

/// One loaded secret. `Debug` never prints the value.
#[derive(Clone)]
pub struct KnownSecret {
    pub label: String,
    pub allowed_hosts: Vec<String>,
    value: Vec<u8>,
}

impl std::fmt::Debug for KnownSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KnownSecret")
            .field("label", &self.label)
            .field("len", &self.value.len())
            .finish()
    }
}

impl KnownSecret {
    /// A secret from an explicit value (used by tests and embedders).
    pub fn new(label: &str, value: &[u8], allowed_hosts: Vec<String>) -> Self {
        KnownSecret {
            label: sanitize_label(label),
            allowed_hosts,
            value: value.to_vec(),
        }
    }
}

fn sanitize_label(label: &str) -> String {
    label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_./:-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn split_hosts(spec: &str) -> (&str, Vec<String>) {
    match spec.rsplit_once('@') {
        Some((name, hosts)) if !hosts.contains('/') => (
            name,
            hosts
                .split(',')
                .map(|h| h.trim().to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .collect(),
        ),
        _ => (spec, Vec::new()),
    }
}

/// Loads the configured secrets. Missing env vars are skipped; unreadable
/// files are errors (a mounted secret that cannot be read is a misconfiguration).
pub fn load(cfg: &KnownSecretsConfig) -> Result<Vec<KnownSecret>, Error> {
    let mut out = Vec::new();
    let min = cfg.min_len.max(1);
    for spec in &cfg.env {
        let (name, hosts) = split_hosts(spec);
        if let Some(v) = std::env::var_os(name) {
            let v = v.as_encoded_bytes().trim_ascii();
            if v.len() >= min {
                out.push(KnownSecret::new(&format!("env:{name}"), v, hosts));
            }
        }
    }
    for spec in &cfg.files {
        let (path, hosts) = split_hosts(spec);
        let path = PathBuf::from(path);
        let meta = std::fs::metadata(&path).map_err(|source| Error::KnownSecretFile {
            path: path.clone(),
            source,
        })?;
        let files: Vec<PathBuf> = if meta.is_dir() {
            let rd = std::fs::read_dir(&path).map_err(|source| Error::KnownSecretFile {
                path: path.clone(),
                source,
            })?;
            let mut v: Vec<PathBuf> = rd
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| !is_hidden(p) && p.is_file())
                .collect();
            v.sort();
            v
        } else {
            vec![path.clone()]
        };
        for f in files {
            let bytes = std::fs::read(&f).map_err(|source| Error::KnownSecretFile {
                path: f.clone(),
                source,
            })?;
            let v = bytes.trim_ascii();
            if v.len() >= min {
                out.push(KnownSecret::new(
                    &format!("file:{}", f.display()),
                    v,
                    hosts.clone(),
                ));
            }
        }
    }
    Ok(out)
}

fn is_hidden(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_none_or(|n| n.starts_with('.'))
}

/// The encoded forms of a value that are matched as literals.
pub fn encodings(value: &[u8]) -> Vec<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    let mut forms = vec![value.to_vec()];
    forms.push(STANDARD_NO_PAD.encode(value).into_bytes());
    forms.push(URL_SAFE_NO_PAD.encode(value).into_bytes());
    forms.push(data_encoding::HEXLOWER.encode(value).into_bytes());
    forms.push(data_encoding::HEXUPPER.encode(value).into_bytes());
    forms.push(data_encoding::BASE32_NOPAD.encode(value).into_bytes());
    let pct: Vec<u8> = value
        .iter()
        .flat_map(|&b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                vec![b]
            } else {
                format!("%{b:02X}").into_bytes()
            }
        })
        .collect();
    forms.push(pct);
    forms.sort();
    forms.dedup();
    forms
}

/// Literal patterns for the engine: every encoding of every secret.
pub fn literals(secrets: &[KnownSecret]) -> Vec<ExtraLiteral> {
    let mut out = Vec::new();
    for s in secrets {
        let meta = RuleMeta {
            id: format!("known_secret:{}", s.label).into(),
            name: format!("Known secret {}", s.label).into(),
            class: RuleClass::Dlp,
            severity: Severity::Critical,
            confidence: Confidence::High,
            home_hosts: s.allowed_hosts.clone(),
            reveal: Reveal::Nothing,
            confirm: None,
            quotable: false,
        };
        for form in encodings(&s.value) {
            out.push(ExtraLiteral {
                bytes: form,
                meta: meta.clone(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_value() {
        let s = KnownSecret::new("env:DB_PASSWORD", b"hunter2hunter2hunter2", vec![]);
        let d = format!("{s:?}");
        assert!(!d.contains("hunter2"), "{d}");
        assert!(d.contains("env:DB_PASSWORD"));
    }

    #[test]
    fn loads_env_and_files() {
        let dir = std::env::temp_dir().join(format!("pipelock-ks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("db-password"), b"s3cr3t-value-from-file\n").unwrap();
        std::fs::write(dir.join("short"), b"abc").unwrap();
        std::fs::write(dir.join(".hidden"), b"hidden-value-not-loaded").unwrap();
        // SAFETY: single-threaded use of a test-only variable name.
        unsafe { std::env::set_var("PIPELOCK_TEST_KNOWN_SECRET", "env-secret-value-123456") };
        let cfg = KnownSecretsConfig {
            env: vec![
                "PIPELOCK_TEST_KNOWN_SECRET@api.example.com".into(),
                "PIPELOCK_TEST_UNSET_VAR".into(),
            ],
            files: vec![dir.display().to_string()],
            min_len: 8,
        };
        let got = load(&cfg).unwrap();
        let labels: Vec<_> = got.iter().map(|s| s.label.as_str()).collect();
        assert_eq!(got.len(), 2, "{labels:?}");
        assert_eq!(got[0].label, "env:PIPELOCK_TEST_KNOWN_SECRET");
        assert_eq!(got[0].allowed_hosts, vec!["api.example.com".to_owned()]);
        assert!(got[1].label.ends_with("db-password"));
        assert_eq!(got[1].value, b"s3cr3t-value-from-file");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn encodings_cover_common_forms() {
        let forms = encodings(b"p@ss word/123456");
        assert!(forms.contains(&b"p@ss word/123456".to_vec()));
        assert!(forms.contains(&b"cEBzcyB3b3JkLzEyMzQ1Ng".to_vec()));
        assert!(forms.contains(&b"7040737320776f72642f313233343536".to_vec()));
        assert!(forms.contains(&b"p%40ss%20word%2F123456".to_vec()));
    }
}
