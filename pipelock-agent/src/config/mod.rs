//! Configuration: Pipelock's `pipelock.yaml` schema plus pipelock-agent's own
//! `interceptor:` section, and the domain types the components take.
mod types;

pub use types::{CaSettings, LogFormat, Mode, NonHttpAction};
