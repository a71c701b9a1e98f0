//! The `dataplane` binary's own error handling, without a cluster.

use std::process::Command;

use dataplane_tests::cluster::dataplane_binary;

fn dataplane(args: &[&str]) -> (bool, String) {
    let output = Command::new(dataplane_binary().unwrap())
        .args(args)
        .output()
        .expect("running dataplane");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn agent_refuses_a_malformed_config_naming_file_and_field() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("node.toml");
    std::fs::write(&path, "[node]\npod_cidr = \"10.244.0.0/40\"\n").unwrap();
    let (ok, stderr) = dataplane(&["agent", "--config", path.to_str().unwrap()]);
    assert!(!ok);
    assert!(stderr.contains(path.to_str().unwrap()), "{stderr}");
    assert!(stderr.contains("node.pod_cidr"), "{stderr}");
}

#[test]
fn agent_refuses_a_missing_config() {
    let (ok, stderr) = dataplane(&["agent", "--config", "/nonexistent/node.toml"]);
    assert!(!ok);
    assert!(stderr.contains("/nonexistent/node.toml"), "{stderr}");
}

#[test]
fn cli_without_an_agent_says_so() {
    let directory = tempfile::tempdir().unwrap();
    let socket = directory.path().join("none.sock");
    let (ok, stderr) = dataplane(&["--socket", socket.to_str().unwrap(), "endpoint", "list"]);
    assert!(!ok);
    assert!(stderr.contains("is `dataplane agent` running?"), "{stderr}");
}

#[test]
fn counters_explain_every_counter_without_an_agent() {
    let output = Command::new(dataplane_binary().unwrap())
        .args([
            "--socket",
            "/nonexistent/agent.sock",
            "counters",
            "--explain",
        ])
        .output()
        .expect("running dataplane");
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(text.lines().count(), dataplane_common::Counter::ALL.len());
    assert!(
        text.lines()
            .any(|line| line.starts_with("drop_spoofed_source ")
                && line.contains("not the endpoint's own IP on its own veth")),
        "{text}"
    );
}

#[test]
fn cli_rejects_malformed_arguments() {
    let (ok, stderr) = dataplane(&[
        "endpoint",
        "add",
        "--ip",
        "10.244.0.300",
        "--interface",
        "v",
        "--mac",
        "02:00:00:00:00:01",
    ]);
    assert!(!ok);
    assert!(stderr.contains("--ip"), "{stderr}");
}

#[test]
fn install_cni_puts_a_working_plugin_and_a_conflist_in_place() {
    let directory = tempfile::tempdir().unwrap();
    let (bin_dir, conf_dir) = (directory.path().join("bin"), directory.path().join("net.d"));
    let (ok, stderr) = dataplane(&[
        "install-cni",
        "--bin-dir",
        bin_dir.to_str().unwrap(),
        "--conf-dir",
        conf_dir.to_str().unwrap(),
        "--pod-cidr",
        "10.244.7.0/24",
    ]);
    assert!(ok, "{stderr}");
    let conflist = std::fs::read_to_string(conf_dir.join("10-dataplane.conflist")).unwrap();
    assert!(
        conflist.contains("dataplane-cni") && conflist.contains("10.244.7.0/24"),
        "{conflist}"
    );

    let mut plugin = Command::new(bin_dir.join("dataplane-cni"))
        .env_clear()
        .env("CNI_COMMAND", "VERSION")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    plugin
        .stdin
        .take()
        .unwrap()
        .write_all(br#"{"cniVersion":"1.0.0"}"#)
        .unwrap();
    let output = plugin.wait_with_output().unwrap();
    assert!(output.status.success());
    let version = String::from_utf8_lossy(&output.stdout);
    assert!(
        version.contains("1.1.0") && version.contains("0.4.0"),
        "{version}"
    );
}

#[test]
fn errors_are_one_line_and_a_failure_status_whatever_rust_backtrace_says() {
    let directory = tempfile::tempdir().unwrap();
    let socket = directory.path().join("absent.sock");
    let output = Command::new(dataplane_binary().unwrap())
        .args(["--socket", socket.to_str().unwrap(), "status"])
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("running dataplane");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: ") && stderr.contains("absent.sock"),
        "{stderr}"
    );
}
