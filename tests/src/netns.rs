//! Network namespaces with unique names, removed on drop. Made and entered
//! with system calls (`unshare`, a bind mount under /run/netns as `ip netns`
//! makes them, `setns`); configured over rtnetlink (see `netlink.rs`).

use std::{
    fs::File,
    io::Write as _,
    os::unix::{fs::MetadataExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context as _, bail};
use nix::{
    mount::{MntFlags, MsFlags},
    sched::CloneFlags,
};

use crate::netlink::Netlink;

/// Prefix of every namespace this harness creates: `dpt<pid>x<n>-...`.
const PREFIX: &str = "dpt";

/// Where named namespaces live, as with `ip netns`.
const NAMED_NAMESPACES: &str = "/run/netns";

/// Runs a command to completion; its stdout, or an error carrying stderr.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut command = Command::new(program);
    command.args(args);
    output_of(command)
}

/// Runs `command` to completion; its stdout, or an error carrying stderr.
fn output_of(mut command: Command) -> anyhow::Result<String> {
    let shown = format!("{command:?}");
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {shown} (is it installed? `cargo xtask setup`)"))?;
    if !output.status.success() {
        bail!(
            "{shown} failed ({}): {}",
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
    let Ok(entries) = std::fs::read_dir(NAMED_NAMESPACES) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('x').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            remove_named(&entry.path());
        }
    }
}

/// Unmounts and deletes a named namespace (it lives on while processes or
/// open files still hold it).
fn remove_named(path: &Path) {
    let _ = nix::mount::umount2(path, MntFlags::MNT_DETACH);
    let _ = std::fs::remove_file(path);
}

#[derive(Debug)]
pub struct Netns {
    name: String,
    netlink: Netlink,
}

impl Netns {
    /// A new, empty namespace at /run/netns/`name` with loopback up.
    pub fn create(name: String) -> anyhow::Result<Self> {
        let path = PathBuf::from(NAMED_NAMESPACES).join(&name);
        std::fs::create_dir_all(NAMED_NAMESPACES)?;
        File::create_new(&path).with_context(|| format!("creating {}", path.display()))?;
        let mount_point = path.clone();
        // A thread of its own unshares, so nothing else of this process moves;
        // the bind mount keeps the namespace after the thread ends.
        let made = std::thread::spawn(move || -> anyhow::Result<()> {
            nix::sched::unshare(CloneFlags::CLONE_NEWNET).context("unshare(CLONE_NEWNET)")?;
            nix::mount::mount(
                Some("/proc/thread-self/ns/net"),
                &mount_point,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .with_context(|| format!("bind-mounting the namespace on {}", mount_point.display()))
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the thread making {name} panicked"))?;
        if let Err(error) = made {
            remove_named(&path);
            return Err(error);
        }
        let netlink = match Netlink::open(&path) {
            Ok(netlink) => netlink,
            Err(error) => {
                remove_named(&path);
                return Err(error);
            }
        };
        let netns = Self { name, netlink };
        netns.set_up("lo")?;
        Ok(netns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`, what CNI calls the sandbox path.
    pub fn path(&self) -> String {
        format!("{NAMED_NAMESPACES}/{}", self.name)
    }

    pub(crate) fn netlink(&self) -> &Netlink {
        &self.netlink
    }

    /// `program`, to be run inside the namespace (as `nsenter --net` would:
    /// the host's mounts, /sys/fs/bpf included, stay as they are).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> anyhow::Result<Command> {
        command_in(Path::new(&self.path()), program)
    }

    /// `args` as a command (program first) inside the namespace.
    fn command_of(&self, args: &[&str]) -> anyhow::Result<Command> {
        let (program, rest) = args.split_first().context("an empty command")?;
        let mut command = self.command(program)?;
        command.args(rest);
        Ok(command)
    }

    /// Runs a program inside the namespace to completion; its stdout.
    pub fn exec(&self, args: &[&str]) -> anyhow::Result<String> {
        output_of(self.command_of(args)?)
            .with_context(|| format!("in network namespace {}", self.name))
    }

    /// Runs a program inside the namespace with `input` on its stdin (a
    /// rule set to `iptables-restore`, `nft -f -`, `ipset restore`), to
    /// completion.
    pub fn feed(&self, args: &[&str], input: &str) -> anyhow::Result<()> {
        let mut child = self
            .command_of(args)?
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {args:?} in {}", self.name))?;
        child
            .stdin
            .take()
            .context("no stdin")?
            .write_all(input.as_bytes())?;
        let output = child.wait_with_output()?;
        if !output.status.success() {
            bail!(
                "{args:?} failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }

    /// Starts a program inside the namespace without waiting for it.
    pub fn spawn(&self, args: &[&str]) -> anyhow::Result<Child> {
        self.command_of(args)?
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("spawning {args:?} in {}", self.name))
    }

    /// Starts a program inside the namespace with its stdout captured.
    pub fn spawn_captured(&self, args: &[&str]) -> anyhow::Result<Child> {
        self.command_of(args)?
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning {args:?} in {}", self.name))
    }

    /// Sets the namespace's sysctl `key` (dotted, as `sysctl` takes it).
    pub fn sysctl(&self, key: &str, value: &str) -> anyhow::Result<()> {
        let file = sysctl_path(key);
        let value = value.to_string();
        dataplane_user::netns::run_in(Path::new(&self.path()), move || {
            std::fs::write(&file, value)
        })?
        .with_context(|| format!("setting {key} in {}", self.name))
    }

    pub fn read_sysctl(&self, key: &str) -> anyhow::Result<String> {
        let file = sysctl_path(key);
        let value = dataplane_user::netns::run_in(Path::new(&self.path()), move || {
            std::fs::read_to_string(&file)
        })?
        .with_context(|| format!("reading {key} in {}", self.name))?;
        Ok(value.trim().to_string())
    }

    /// A counter of the namespace's /proc/net/snmp, e.g. ("Icmp", "InEchos").
    fn snmp_counter(&self, group: &str, name: &str) -> anyhow::Result<u64> {
        // /proc/thread-self/net shows the namespace of the reading thread.
        let text = dataplane_user::netns::run_in(Path::new(&self.path()), || {
            std::fs::read_to_string("/proc/thread-self/net/snmp")
        })??;
        let prefix = format!("{group}:");
        let mut lines = text.lines().filter(|line| line.starts_with(&prefix));
        let (names, values) = (lines.next(), lines.next());
        names
            .zip(values)
            .and_then(|(names, values)| {
                let position = names.split_whitespace().position(|field| field == name)?;
                values.split_whitespace().nth(position)?.parse().ok()
            })
            .with_context(|| format!("no {group} {name} in {}'s /proc/net/snmp", self.name))
    }

    /// IPv4 packets the namespace has received so far (IPv6 neighbour
    /// discovery and multicast listener chatter not included).
    pub fn ipv4_received(&self) -> anyhow::Result<u64> {
        self.snmp_counter("Ip", "InReceives")
    }

    /// Pings `destination` (either family) `count` times (50 ms apart, 1 s
    /// wait) with `options`; an error, carrying ping's output, unless every
    /// reply came back.
    pub fn ping(
        &self,
        destination: impl Into<std::net::IpAddr>,
        count: u32,
        options: &[&str],
    ) -> anyhow::Result<()> {
        let count = count.to_string();
        let destination = destination.into().to_string();
        let mut args = vec!["ping", "-c", &count, "-i", "0.05", "-W", "1"];
        args.extend_from_slice(options);
        args.push(&destination);
        self.exec(&args).map(drop)
    }

    /// Processes whose network namespace this is.
    fn pids(&self) -> Vec<i32> {
        let Ok(inode) = std::fs::metadata(self.path()).map(|metadata| metadata.ino()) else {
            return Vec::new();
        };
        let wanted = format!("net:[{inode}]");
        let Ok(processes) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        processes
            .flatten()
            .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
            .filter(|pid: &i32| {
                std::fs::read_link(format!("/proc/{pid}/ns/net"))
                    .is_ok_and(|link| link.as_os_str() == wanted.as_str())
            })
            .collect()
    }
}

/// `program`, to be run inside the network namespace at `path` (the host's
/// mounts, /sys/fs/bpf included, stay as they are, as with `nsenter --net`).
pub fn command_in(path: &Path, program: impl AsRef<std::ffi::OsStr>) -> anyhow::Result<Command> {
    let namespace = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut command = Command::new(program);
    // SAFETY: between fork and exec the child only makes the setns call.
    unsafe {
        command.pre_exec(move || {
            nix::sched::setns(&namespace, CloneFlags::CLONE_NEWNET).map_err(Into::into)
        });
    }
    Ok(command)
}

/// `/proc/sys/...` for a dotted key. Entries under /proc/sys/net belong to
/// the namespace of the thread that opens them.
fn sysctl_path(key: &str) -> PathBuf {
    PathBuf::from("/proc/sys").join(key.replace('.', "/"))
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Processes still inside (iperf3 servers, agents) would keep it alive.
        for pid in self.pids() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        remove_named(Path::new(&self.path()));
    }
}
