//! Cargo invocations on the workspace.

use std::{
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

/// Built only for bpfel-unknown-none, through dataplane-user's build script.
const EBPF_PACKAGE: &str = "dataplane-ebpf";

#[derive(Clone, Copy)]
pub enum Profile {
    Debug,
    Release,
}

pub fn profile(release: bool) -> Profile {
    if release {
        Profile::Release
    } else {
        Profile::Debug
    }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

pub fn cargo() -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command.current_dir(workspace_root());
    command
}

/// Runs `command`, failing with `what` in the message if it does not succeed.
pub fn status(mut command: Command, what: &str) -> anyhow::Result<()> {
    println!("==> {what}");
    let status = command
        .status()
        .with_context(|| format!("cannot start: {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// Builds the `dataplane` binary (with its eBPF programs); returns its path.
pub fn dataplane(profile: Profile) -> anyhow::Result<PathBuf> {
    let mut command = cargo();
    command.args(["build", "--package", "dataplane-user", "--bins"]);
    let directory = match profile {
        Profile::Debug => "debug",
        Profile::Release => {
            command.arg("--release");
            "release"
        }
    };
    status(
        command,
        &format!("cargo build ({directory}) of dataplane and its eBPF programs"),
    )?;
    Ok(workspace_root()
        .join("target")
        .join(directory)
        .join("dataplane"))
}

/// Formatting, lints, then every test of the workspace; the upgrade tests
/// start from `previous_layout`'s agent.
pub fn test(cargo_test_args: &[String], previous_layout: &Path) -> anyhow::Result<()> {
    let mut fmt = cargo();
    fmt.args(["fmt", "--all", "--", "--check"]);
    status(fmt, "cargo fmt --check")?;
    let mut clippy = cargo();
    clippy.args([
        "clippy",
        "--workspace",
        "--exclude",
        EBPF_PACKAGE,
        "--all-targets",
    ]);
    clippy.args(["--", "-D", "warnings"]);
    status(clippy, "cargo clippy (userspace)")?;
    // The eBPF crate only means something for its own target.
    let mut clippy_ebpf = Command::new("rustup");
    clippy_ebpf.current_dir(workspace_root());
    clippy_ebpf.args([
        "run",
        "nightly",
        "cargo",
        "clippy",
        "--package",
        EBPF_PACKAGE,
    ]);
    clippy_ebpf.args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"]);
    clippy_ebpf.args(["--", "-D", "warnings"]);
    status(clippy_ebpf, "cargo clippy (eBPF, bpfel-unknown-none)")?;

    let binary = dataplane(Profile::Debug)?;
    let mut test = cargo();
    test.args(["test", "--workspace", "--exclude", EBPF_PACKAGE])
        .args(cargo_test_args)
        .env("DATAPLANE_BIN", &binary)
        .env("DATAPLANE_PREVIOUS_BIN", previous_layout);
    status(
        test,
        "cargo test --workspace (unit, BPF_PROG_TEST_RUN and end-to-end)",
    )
}

/// Builds and runs the benchmark (package dataplane-bench) against `binary`.
pub fn bench(binary: &Path, quick: bool, bench_args: &[String]) -> anyhow::Result<()> {
    let mut command = cargo();
    command
        .args(["run", "--release", "--package", "dataplane-bench", "--"])
        .arg("--output")
        .arg(workspace_root().join("target/bench"))
        .env("DATAPLANE_BIN", binary);
    if quick {
        command.arg("--quick");
    }
    command.args(bench_args);
    status(
        command,
        "dataplane-bench (this dataplane vs the kernel paths)",
    )
}

/// Replaces this process with the demo cluster (a binary of the test
/// harness) running `binary`'s agents: Ctrl-C reaches the demo alone, which
/// tears the cluster down.
pub fn demo(binary: &Path) -> anyhow::Result<()> {
    let error = cargo()
        .args([
            "run",
            "--quiet",
            "--package",
            "dataplane-tests",
            "--bin",
            "demo",
        ])
        .env("DATAPLANE_BIN", binary)
        .exec();
    Err(error).context("cannot run cargo for the demo cluster")
}

/// Replaces this process with the node agent.
pub fn exec_agent(binary: &Path, config: &Path) -> anyhow::Result<()> {
    let error = Command::new(binary)
        .arg("agent")
        .arg("--config")
        .arg(config)
        .exec();
    Err(error).with_context(|| format!("cannot run {}", binary.display()))
}
