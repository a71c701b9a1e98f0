//! Prometheus metrics served by the agent: valid exposition text whose
//! counters follow real traffic and drops.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use dataplane_tests::{
    Cluster, ClusterSpec,
    traffic::{in_netns, joined, udp_echo_server, udp_exchange},
};
use nix::sys::signal::Signal;

const METRICS_PORT: u16 = 9650;

/// The value of the sample line starting with `series` (name and labels).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

#[test]
fn metrics_are_valid_prometheus_text_and_follow_traffic() -> anyhow::Result<()> {
    let mut cluster = Cluster::new(ClusterSpec::dataplane(1, 2))?;
    let node = &mut cluster.nodes[0];
    node.stop_agent(Signal::SIGTERM);
    let config = std::fs::read_to_string(&node.config)?;
    let with_metrics = format!("[agent]\nmetrics_address = \"127.0.0.1:{METRICS_PORT}\"\n");
    std::fs::write(&node.config, config.replacen("[agent]\n", &with_metrics, 1))?;
    node.start_agent()?;
    let (a, b) = (&node.pods[0], &node.pods[1]);
    a.ping(b.ip, 3)?;
    assert!(a.ping(Ipv4Addr::new(10, 244, 0, 200), 2).is_err());

    // A Service connection, for the connection table's count.
    let vip = SocketAddr::from((Ipv4Addr::new(10, 96, 0, 10), 53));
    node.cli(&[
        "service",
        "add",
        "--name",
        "default/dns",
        "--ip",
        "10.96.0.10",
        "--port",
        &format!("53/udp={}:5353", b.ip),
    ])?;
    let server = udp_echo_server(&b.netns, b.ip, 5353, 1, Duration::from_secs(5))?;
    joined(in_netns(&a.netns, move || {
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        udp_exchange(&socket, vip, b"query")
    }))?;
    joined(server)?;

    let scrape = |netns: &dataplane_tests::Netns| {
        joined(in_netns(netns, || {
            let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, METRICS_PORT))?;
            stream.write_all(
                b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            )?;
            let mut response = String::new();
            stream.read_to_string(&mut response)?;
            Ok(response)
        }))
    };
    // The tables are counted every collection interval.
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let text = scrape(&node.netns)?;
        let counted = sample(&text, "dataplane_service_connection_entries");
        if counted.is_some_and(|halves| halves >= 2.0) || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    // Exposition format: comments, samples `name{labels} value`, and the end marker.
    assert!(body.trim_end().ends_with("# EOF"), "{body}");
    for line in body
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').expect("sample line");
        assert!(value.parse::<f64>().is_ok(), "bad value in {line}");
        let name = series.split('{').next().unwrap_or_default();
        assert!(
            name.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
            "bad name in {line}"
        );
    }
    let forwarded = sample(
        body,
        r#"dataplane_forwarded_packets_total{path="forwarded_local"}"#,
    );
    assert!(forwarded.is_some_and(|value| value >= 6.0), "{body}");
    let unknown = sample(
        body,
        r#"dataplane_dropped_packets_total{reason="unknown_endpoint"}"#,
    );
    assert!(unknown.is_some_and(|value| value >= 2.0), "{body}");
    assert_eq!(sample(body, "dataplane_endpoints"), Some(2.0));
    assert_eq!(sample(body, "dataplane_nat_capacity"), Some(262_144.0));
    assert_eq!(sample(body, "dataplane_service_frontends"), Some(1.0));
    assert!(
        sample(body, "dataplane_service_connection_entries").is_some_and(|halves| halves >= 2.0),
        "{body}"
    );
    assert_eq!(
        sample(body, "dataplane_service_connection_capacity"),
        Some(262_144.0)
    );
    assert!(
        sample(
            body,
            r#"dataplane_dropped_packets_total{reason="nat_exhausted"}"#
        )
        .is_some()
    );
    Ok(())
}
