//! pipelock-agent: a transparent egress interceptor. The kernel (eBPF,
//! `redirect`) sends a cgroup's outbound TCP connections to the agent's
//! listeners (`proxy`), which pass every exchange through one `pipeline`.
pub mod admin;
pub mod cli;
pub mod config;
pub mod export;
pub mod k8s;
pub mod mcp;
pub mod pipeline;
pub mod proxy;
pub mod redirect;
pub mod run;
pub mod scan;
pub mod telemetry;
pub mod tls;
