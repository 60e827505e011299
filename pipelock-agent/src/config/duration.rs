//! Durations written as Pipelock writes them (`24h`, `90s`, `1h30m`,
//! `500ms`), parsed with `humantime`.
use serde::{Deserialize, Deserializer};

/// A duration read from a string such as `24h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    pub const fn from_secs(secs: u64) -> Self {
        Duration(std::time::Duration::from_secs(secs))
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(s.trim())
            .map(Duration)
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "bad duration {s:?} ({e}): expected e.g. 24h, 30m, 90s, 500ms"
                ))
            })
    }
}

impl serde::Serialize for Duration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}
