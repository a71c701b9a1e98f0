//! Traffic generators: iperf3 streams between namespaces.

use std::{net::Ipv4Addr, time::Duration};

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
    let target = server_ip.to_string();
    let duration = seconds.to_string();
    let mut last_error = None;
    // The server needs a moment to listen; retry the connection a bounded number of times.
    for _ in 0..50 {
        match client.exec(&[
            "iperf3",
            "--client",
            &target,
            "--port",
            IPERF3_PORT,
            "--time",
            &duration,
            "--json",
        ]) {
            Ok(json) => {
                let _ = server_process.wait();
                return received_bits_per_second(&json);
            }
            Err(error) => {
                last_error = Some(error);
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    let _ = server_process.kill();
    let _ = server_process.wait();
    Err(last_error.expect("at least one attempt")).context("iperf3 never completed")
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
