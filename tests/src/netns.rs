//! Network namespaces with unique names, removed on drop.

use std::{
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context as _, bail};

/// Prefix of every namespace this harness creates: `dpt<pid>x<n>-...`.
const PREFIX: &str = "dpt";

/// Runs a command to completion; its stdout, or an error carrying stderr.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {program} (is it installed? `cargo xtask setup`)"))?;
    if !output.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// End-to-end tests need root; they fail loudly instead of skipping.
pub fn require_root() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("this test builds network namespaces and loads BPF programs: run it as root");
    }
    Ok(())
}

/// A prefix unique to this process and call, for namespace and file names.
pub fn unique_prefix() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{PREFIX}{}x{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Deletes namespaces left behind by harness processes that no longer exist
/// (a test run killed with SIGKILL cannot clean up after itself).
pub fn reap_stale_namespaces() {
    let Ok(list) = run("ip", &["netns", "list"]) else {
        return;
    };
    for name in list
        .lines()
        .filter_map(|line| line.split_whitespace().next())
    {
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('x').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = run("ip", &["netns", "del", name]);
        }
    }
}

#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn create(name: String) -> anyhow::Result<Self> {
        run("ip", &["netns", "add", &name])?;
        let netns = Self { name };
        netns.ip(&["link", "set", "lo", "up"])?;
        Ok(netns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`, for `nsenter --net=`.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Runs a program inside the namespace.
    pub fn exec(&self, args: &[&str]) -> anyhow::Result<String> {
        run("ip", &self.exec_args(args))
    }

    /// Starts a program inside the namespace without waiting for it.
    pub fn spawn(&self, args: &[&str]) -> anyhow::Result<Child> {
        Command::new("ip")
            .args(self.exec_args(args))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("spawning {args:?} in {}", self.name))
    }

    /// Starts a program inside the namespace with its stdout captured.
    pub fn spawn_captured(&self, args: &[&str]) -> anyhow::Result<Child> {
        Command::new("ip")
            .args(self.exec_args(args))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning {args:?} in {}", self.name))
    }

    fn exec_args<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        let mut full = vec!["netns", "exec", self.name.as_str()];
        full.extend_from_slice(args);
        full
    }

    /// Creates a veth pair: `local` here, `remote` inside `peer`.
    pub fn add_veth(&self, local: &str, peer: &Netns, remote: &str) -> anyhow::Result<()> {
        self.ip(&[
            "link",
            "add",
            local,
            "type",
            "veth",
            "peer",
            "name",
            remote,
            "netns",
            peer.name(),
        ])
        .map(drop)
    }

    pub fn sysctl(&self, key: &str, value: &str) -> anyhow::Result<()> {
        self.exec(&["sysctl", "-qw", &format!("{key}={value}")])
            .map(drop)
    }

    pub fn read_sysctl(&self, key: &str) -> anyhow::Result<String> {
        Ok(self.exec(&["sysctl", "-n", key])?.trim().to_string())
    }

    /// Pings `destination` `count` times (50 ms apart, 1 s wait) with `options`;
    /// an error, carrying ping's output, unless every reply came back.
    pub fn ping(
        &self,
        destination: std::net::Ipv4Addr,
        count: u32,
        options: &[&str],
    ) -> anyhow::Result<()> {
        let count = count.to_string();
        let destination = destination.to_string();
        let mut args = vec!["ping", "-c", &count, "-i", "0.05", "-W", "1"];
        args.extend_from_slice(options);
        args.push(&destination);
        self.exec(&args).map(drop)
    }

    /// MAC address of `interface` inside the namespace.
    pub fn mac_of(&self, interface: &str) -> anyhow::Result<String> {
        let json = self.ip(&["-j", "link", "show", "dev", interface])?;
        let links: serde_json::Value = serde_json::from_str(&json)?;
        links[0]["address"]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("no MAC on {interface} in {}", self.name))
    }

    /// Packets received on `interface` so far.
    pub fn rx_packets(&self, interface: &str) -> anyhow::Result<u64> {
        let json = self.ip(&["-j", "-s", "link", "show", "dev", interface])?;
        let links: serde_json::Value = serde_json::from_str(&json)?;
        links[0]["stats64"]["rx"]["packets"]
            .as_u64()
            .with_context(|| format!("no rx statistics on {interface} in {}", self.name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Processes still inside (iperf3 servers, agents) would keep it alive.
        if let Ok(pids) = run("ip", &["netns", "pids", &self.name]) {
            for pid in pids.split_whitespace().filter_map(|pid| pid.parse().ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}
