//! Traffic generators: iperf3 streams between namespaces.

use std::{
    net::Ipv4Addr,
    process::Child,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::netns::Netns;

const IPERF3_PORT: &str = "5201";

/// Runs an iperf3 TCP stream from `client` to a one-off server in `server`
/// listening on `server_ip`; returns the received rate in bit/s.
pub fn iperf3_tcp(
    server: &Netns,
    server_ip: Ipv4Addr,
    client: &Netns,
    seconds: u32,
) -> anyhow::Result<f64> {
    let mut server_process =
        server.spawn(&["iperf3", "--server", "--one-off", "--port", IPERF3_PORT])?;
    let result = wait_until_listening(server, IPERF3_PORT).and_then(|()| {
        client.exec(&[
            "iperf3",
            "--client",
            &server_ip.to_string(),
            "--port",
            IPERF3_PORT,
            "--time",
            &seconds.to_string(),
            "--connect-timeout",
            "3000",
            "--json",
        ])
    });
    reap(&mut server_process, Duration::from_secs(5));
    received_bits_per_second(&result.context("iperf3 client")?)
}

/// Polls `ss` until something listens on TCP `port` in `netns` (bounded).
fn wait_until_listening(netns: &Netns, port: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let filter = format!("sport = :{port}");
    while Instant::now() < deadline {
        if netns
            .exec(&["ss", "-Hltn", &filter])
            .is_ok_and(|listening| !listening.trim().is_empty())
        {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!(
        "nothing listens on port {port} in {} after 10 s",
        netns.name()
    )
}

/// Waits up to `grace` for `process` to exit on its own, then kills it.
fn reap(process: &mut Child, grace: Duration) {
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = process.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = process.kill();
    let _ = process.wait();
}

fn received_bits_per_second(json: &str) -> anyhow::Result<f64> {
    let report: serde_json::Value = serde_json::from_str(json).context("iperf3 --json output")?;
    if let Some(error) = report["error"].as_str() {
        bail!("iperf3: {error}");
    }
    report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 report without end.sum_received.bits_per_second")
}
