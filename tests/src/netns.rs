//! A "pod" network namespace joined to the root namespace by a veth pair,
//! with addresses from the benchmarking range: host side 198.18.<n>.1 and
//! fd00:<n>::1, pod side 198.18.<n>.2 and fd00:<n>::2. Removed on drop.
use std::{
    net::{Ipv4Addr, Ipv6Addr},
    process::Command,
};

/// A network namespace created for one test.
pub struct TestNetns {
    /// Namespace name (for `ip netns exec`).
    pub name: String,
    host_if: String,
    /// Host (root namespace) side IPv4 address.
    pub host_v4: Ipv4Addr,
    /// Pod side IPv4 address.
    pub pod_v4: Ipv4Addr,
    /// Host side IPv6 address.
    pub host_v6: Ipv6Addr,
    /// Pod side IPv6 address.
    pub pod_v6: Ipv6Addr,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("running ip {args:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl TestNetns {
    /// Creates namespace `plk<n>` with subnet number `n` (1..=250), replacing
    /// leftovers of the same name from a crashed run.
    pub fn new(n: u8) -> Self {
        let name = format!("plk{n}-{}", std::process::id() % 100_000);
        let host_if = format!("plkh{n}-{}", std::process::id() % 10_000);
        let pod_if = format!("plkp{n}-{}", std::process::id() % 10_000);
        let _ = ip(&["netns", "del", &name]);
        let _ = ip(&["link", "del", &host_if]);
        let ns = TestNetns {
            host_v4: Ipv4Addr::new(198, 18, n, 1),
            pod_v4: Ipv4Addr::new(198, 18, n, 2),
            host_v6: format!("fd00:{n}::1").parse().expect("v6"),
            pod_v6: format!("fd00:{n}::2").parse().expect("v6"),
            name,
            host_if,
        };
        let (h4, p4) = (format!("{}/24", ns.host_v4), format!("{}/24", ns.pod_v4));
        let (h6, p6) = (format!("{}/64", ns.host_v6), format!("{}/64", ns.pod_v6));
        let steps: Vec<Vec<&str>> = vec![
            vec!["netns", "add", &ns.name],
            vec![
                "link",
                "add",
                &ns.host_if,
                "type",
                "veth",
                "peer",
                "name",
                &pod_if,
            ],
            vec!["link", "set", &pod_if, "netns", &ns.name],
            vec!["addr", "add", &h4, "dev", &ns.host_if],
            vec!["-6", "addr", "add", &h6, "dev", &ns.host_if, "nodad"],
            vec!["link", "set", &ns.host_if, "up"],
            vec!["-n", &ns.name, "addr", "add", &p4, "dev", &pod_if],
            vec![
                "-n", &ns.name, "-6", "addr", "add", &p6, "dev", &pod_if, "nodad",
            ],
            vec!["-n", &ns.name, "link", "set", &pod_if, "up"],
            vec!["-n", &ns.name, "link", "set", "lo", "up"],
        ];
        for step in steps {
            if let Err(e) = ip(&step) {
                drop(ns);
                panic!("setting up test namespace: {e}");
            }
        }
        ns
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
        let _ = ip(&["link", "del", &self.host_if]);
    }
}
