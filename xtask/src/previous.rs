//! The previous map layout's build, for the upgrade tests: the last commit
//! before `MAP_LAYOUT_VERSION` became what it is now, exported from git and
//! built in a target directory of its own (kept between runs).

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

use crate::build::{status, workspace_root};

const LAYOUT_SOURCE: &str = "dataplane-common/src/lib.rs";
const LAYOUT_LINE: &str = "pub const MAP_LAYOUT_VERSION: u32 = ";

fn git(args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("git")
        .current_dir(workspace_root())
        .args(args)
        .output()
        .with_context(|| format!("cannot run git {}", args.join(" ")))?;
    if !output.status.success() {
        bail!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// This tree's map layout version.
fn current_version() -> anyhow::Result<u32> {
    let source = std::fs::read_to_string(workspace_root().join(LAYOUT_SOURCE))?;
    source
        .lines()
        .find_map(|line| {
            line.strip_prefix(LAYOUT_LINE)?
                .strip_suffix(';')?
                .parse()
                .ok()
        })
        .with_context(|| format!("no `{LAYOUT_LINE}N;` line in {LAYOUT_SOURCE}"))
}

/// The last commit of the previous layout: the parent of the commit that
/// introduced the current version's line.
fn previous_commit(version: u32) -> anyhow::Result<String> {
    let line = format!("{LAYOUT_LINE}{version};");
    let bump = git(&["log", "--format=%H", "-S", &line, "--", LAYOUT_SOURCE])?;
    let bump = bump.lines().last().with_context(|| {
        format!(
            "no commit in this clone's history introduces `{line}` (a shallow clone? \
             `git fetch --unshallow`)"
        )
    })?;
    git(&["rev-parse", &format!("{bump}^")])
}

/// Builds the previous layout's `dataplane` (and `dataplane-cni` beside
/// it); returns the `dataplane` binary's path.
pub fn build() -> anyhow::Result<PathBuf> {
    let version = current_version()?;
    let commit = previous_commit(version)?;
    let short = &commit[..12];
    let base = workspace_root().join("target/previous-layout");
    let source = base.join(format!("v{}-{short}", version - 1));
    if !source.exists() {
        // Extracted aside and renamed: an interrupted export is never taken
        // for a whole one.
        let partial = base.join(format!("partial-{short}"));
        let _ = std::fs::remove_dir_all(&partial);
        std::fs::create_dir_all(&partial)?;
        let archive = Command::new("git")
            .current_dir(workspace_root())
            .args(["archive", "--format=tar", &commit])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .context("cannot run git archive")?;
        let mut extract = Command::new("tar");
        extract
            .args(["-x", "-C"])
            .arg(&partial)
            .stdin(archive.stdout.context("git archive's output")?);
        status(
            extract,
            &format!("exporting commit {short} (map layout v{})", version - 1),
        )?;
        std::fs::rename(&partial, &source)?;
    }
    let target = base.join("target");
    let mut cargo = crate::build::cargo();
    cargo
        .current_dir(&source)
        .args(["build", "--package", "dataplane-user", "--bins"])
        .env("CARGO_TARGET_DIR", &target);
    status(
        cargo,
        &format!(
            "cargo build of the previous map layout's dataplane (v{}, {short})",
            version - 1
        ),
    )?;
    Ok(target.join("debug/dataplane"))
}
