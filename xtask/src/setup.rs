//! Makes a fresh machine ready; quick when everything is already there.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::build::status;

/// bpf-linker version known to build against this machine's nightly LLVM.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Debian packages the tests, demo and benchmarks run: probes and traffic
/// (`ss` from iproute2, `ping`, `iperf3` under util-linux's `taskset`,
/// `tcpdump` for captures on the underlay), the
/// kernel baselines' firewalls (with `ipset`, as Calico's iptables dataplane
/// writes selectors), and the real CNI reference plugins. The
/// namespaces themselves are made over netlink and system calls.
const DEBIAN_PACKAGES: &[&str] = &[
    "iproute2",
    "iputils-ping",
    "iperf3",
    "util-linux",
    "tcpdump",
    "iptables",
    "nftables",
    "ipset",
    "containernetworking-plugins",
];

pub fn run() -> anyhow::Result<()> {
    ensure_rust_src()?;
    ensure_bpf_linker()?;
    // bpffs is not mounted here: the loader mounts it when missing, for the
    // agent and for the test fixture alike (one implementation).
    ensure_debian_packages()
}

fn ensure_rust_src() -> anyhow::Result<()> {
    let installed = output(
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    )
    .context("the nightly toolchain is required to build the eBPF programs")?;
    if installed.lines().any(|line| line.starts_with("rust-src")) {
        return Ok(());
    }
    let mut command = Command::new("rustup");
    command.args(["component", "add", "rust-src", "--toolchain", "nightly"]);
    status(command, "rustup component add rust-src --toolchain nightly")
}

fn ensure_bpf_linker() -> anyhow::Result<()> {
    // Run as rustc runs it: under the nightly toolchain, whose library path
    // holds the libLLVM it links against.
    if Command::new("rustup")
        .args(["run", "nightly", "bpf-linker", "--version"])
        .output()
        .is_ok_and(|output| output.status.success())
    {
        return Ok(());
    }
    // bpf-linker must link against the LLVM of the nightly rustc that emits the
    // bitcode; the nightly ships it as a shared library in its sysroot.
    let sysroot = PathBuf::from(output("rustc", &["+nightly", "--print", "sysroot"])?.trim());
    let libllvm = find_libllvm(&sysroot.join("lib"))?;
    let version = output("rustc", &["+nightly", "-vV"])?;
    let major = version
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version: "))
        .and_then(|llvm| llvm.split('.').next())
        .context("`rustc +nightly -vV` does not name its LLVM version")?
        .to_string();

    let home = std::env::var_os("HOME").context("HOME is not set")?;
    // Must stay in place: the installed bpf-linker finds libLLVM through it.
    let prefix = Path::new(&home).join(".cache/dataplane/llvm");
    std::fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&libllvm, &link)
        .with_context(|| format!("linking {} to {}", link.display(), libllvm.display()))?;

    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command
        .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
        .args([
            "--no-default-features",
            "--features",
            &format!("llvm-{major}"),
        ])
        .env("LLVM_PREFIX", &prefix);
    status(
        command,
        &format!(
            "cargo install bpf-linker {BPF_LINKER_VERSION} against nightly LLVM {major} (a few minutes)"
        ),
    )
}

fn find_libllvm(directory: &Path) -> anyhow::Result<PathBuf> {
    std::fs::read_dir(directory)
        .with_context(|| format!("reading {}", directory.display()))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("libLLVM") && name.contains(".so"))
        })
        .with_context(|| format!("no libLLVM shared library in {}", directory.display()))
}

fn ensure_debian_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .copied()
        .filter(|package| {
            output("dpkg-query", &["-W", "-f=${db:Status-Status}", package])
                .map_or(true, |state| state != "installed")
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut update = Command::new("apt-get");
    update
        .arg("update")
        .env("DEBIAN_FRONTEND", "noninteractive");
    status(update, "apt-get update")?;
    let mut install = Command::new("apt-get");
    install
        .args(["install", "-y", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive");
    status(install, &format!("apt-get install {}", missing.join(" ")))
}

/// Runs `program` to completion; its stdout, or an error carrying stderr.
fn output(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !output.status.success() {
        bail!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
