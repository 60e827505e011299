//! Redirect profiles of the tool policy (`mcp_tool_policy.redirect_profiles`),
//! as Pipelock runs them: a `tools/call` that a `redirect` rule matches is
//! not sent upstream; the profile's program (`exec`, an argv) runs instead,
//! with the call's arguments as JSON appended when `preserve_argv` is set,
//! and its standard output becomes the call's result (one text content
//! block). The program gets no standard input and an environment of its
//! own: `PATH` and Pipelock's `__PIPELOCK_REDIRECT_MANIFEST` (profile,
//! command, reason, rule), never the agent's environment (which holds
//! secrets). It must exit 0 within [`TIMEOUT`] and print at most the
//! output bound; otherwise the call is blocked (fail closed). The caller
//! scans the output like any answer before a client sees it.
use std::{process::Stdio, time::Duration};

use serde_json::{Value, json};
use tokio::io::AsyncReadExt as _;

use crate::config::pipelock::RedirectProfile;

/// How long a handler may run (Pipelock's).
pub const TIMEOUT: Duration = Duration::from_secs(30);
/// `PATH` of a handler.
const HANDLER_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// Bytes of a handler's error output kept for the log.
const STDERR_KEPT: usize = 512;

/// Why a handler gave no result.
#[derive(Debug, thiserror::Error)]
pub enum RedirectError {
    #[error("redirect profile {0:?} is not configured")]
    NoProfile(String),
    #[error("redirect profile {0:?} has an empty exec")]
    EmptyExec(String),
    #[error("starting {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("reading the handler's output: {0}")]
    Read(#[source] std::io::Error),
    #[error("the handler printed more than {0} bytes")]
    TooLarge(usize),
    #[error("the handler did not finish within {0:?}")]
    Timeout(Duration),
    #[error("the handler failed ({status}): {stderr}")]
    Failed { status: String, stderr: String },
}

/// What a redirect needs to know about the call.
pub struct Call<'a> {
    /// The profile's name (as the rule names it).
    pub profile: &'a str,
    /// The rule that redirected the call.
    pub rule: &'a str,
    pub arguments: &'a Value,
}

/// Runs the handler of `call.profile` and returns its standard output (at
/// most `max_output` bytes, read as UTF-8 with replacement).
pub async fn run(
    profile: Option<&RedirectProfile>,
    call: &Call<'_>,
    max_output: usize,
) -> Result<String, RedirectError> {
    let profile = profile.ok_or_else(|| RedirectError::NoProfile(call.profile.to_owned()))?;
    let (program, args) = profile
        .exec
        .split_first()
        .filter(|(p, _)| !p.is_empty())
        .ok_or_else(|| RedirectError::EmptyExec(call.profile.to_owned()))?;
    let manifest = json!({
        "profile": call.profile,
        "command": profile.exec,
        "reason": profile.reason.as_deref().unwrap_or(""),
        "policy_rule": call.rule,
    });
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env_clear()
        .env("PATH", HANDLER_PATH)
        .env("__PIPELOCK_REDIRECT_MANIFEST", manifest.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if profile.preserve_argv {
        let arguments = match call.arguments {
            Value::Null => "{}".to_owned(),
            v => v.to_string(),
        };
        cmd.arg(arguments);
    }
    let mut child = cmd.spawn().map_err(|source| RedirectError::Spawn {
        program: program.clone(),
        source,
    })?;
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(RedirectError::Read(std::io::Error::other(
            "no output pipes",
        )));
    };
    let work = async {
        let limit = u64::try_from(max_output).unwrap_or(u64::MAX);
        let mut out = Vec::new();
        let mut err = Vec::new();
        let mut stdout = stdout.take(limit.saturating_add(1));
        let mut stderr = stderr.take(STDERR_KEPT as u64);
        let (o, e) = tokio::join!(stdout.read_to_end(&mut out), stderr.read_to_end(&mut err));
        o.map_err(RedirectError::Read)?;
        let _ = e;
        if out.len() > max_output {
            return Err(RedirectError::TooLarge(max_output));
        }
        let status = child.wait().await.map_err(RedirectError::Read)?;
        if !status.success() {
            return Err(RedirectError::Failed {
                status: status.to_string(),
                stderr: String::from_utf8_lossy(&err).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    };
    // On a timeout the future (and with it the child) is dropped: killed.
    tokio::time::timeout(TIMEOUT, work)
        .await
        .map_err(|_| RedirectError::Timeout(TIMEOUT))?
}

/// The JSON-RPC answer carrying a handler's output as the call's result.
pub fn result(id: Value, text: &str) -> Value {
    json!({
        "jsonrpc": "2.0",
        "id": id,
        "result": { "content": [{ "type": "text", "text": text }] },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(exec: &[&str], preserve_argv: bool) -> RedirectProfile {
        RedirectProfile {
            exec: exec.iter().map(|s| s.to_string()).collect(),
            reason: Some("test".into()),
            preserve_argv,
            match_abs_path: false,
        }
    }

    fn call(arguments: &Value) -> Call<'_> {
        Call {
            profile: "p",
            rule: "r",
            arguments,
        }
    }

    #[tokio::test]
    async fn output_arguments_and_environment() {
        let args = json!({"path": "/etc/passwd"});
        let p = profile(
            &[
                "/bin/sh",
                "-c",
                "printf '%s|%s|%s' \"$1\" \"${HOME:-none}\" \"$__PIPELOCK_REDIRECT_MANIFEST\"",
                "sh",
            ],
            true,
        );
        let out = run(Some(&p), &call(&args), 4096).await.unwrap();
        let (a, rest) = out.split_once('|').unwrap();
        let (home, manifest) = rest.split_once('|').unwrap();
        assert_eq!(a, r#"{"path":"/etc/passwd"}"#);
        assert_eq!(home, "none", "the agent's environment is not passed on");
        let m: Value = serde_json::from_str(manifest).unwrap();
        assert_eq!(m["profile"], "p");
        assert_eq!(m["policy_rule"], "r");
    }

    #[tokio::test]
    async fn failures_are_errors() {
        let args = json!({});
        let c = call(&args);
        assert!(matches!(
            run(None, &c, 10).await,
            Err(RedirectError::NoProfile(_))
        ));
        assert!(matches!(
            run(Some(&profile(&[], false)), &c, 10).await,
            Err(RedirectError::EmptyExec(_))
        ));
        let failed = run(
            Some(&profile(&["/bin/sh", "-c", "echo nope >&2; exit 3"], false)),
            &c,
            10,
        )
        .await;
        assert!(
            matches!(&failed, Err(RedirectError::Failed { stderr, .. }) if stderr == "nope"),
            "{failed:?}"
        );
        assert!(matches!(
            run(
                Some(&profile(&["/bin/sh", "-c", "printf 0123456789ab"], false)),
                &c,
                10
            )
            .await,
            Err(RedirectError::TooLarge(10))
        ));
        assert!(matches!(
            run(Some(&profile(&["/nonexistent/handler"], false)), &c, 10).await,
            Err(RedirectError::Spawn { .. })
        ));
    }
}
