//! Traffic generators: TCP round trips and iperf3 streams between namespaces.

use std::{
    fs::File,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream},
    process::Child,
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::netns::Netns;

const IPERF3_PORT: &str = "5201";
const TCP_TIMEOUT: Duration = Duration::from_secs(5);

/// Moves the calling thread (only) into the network namespace at `path`.
fn enter_netns(path: &str) -> anyhow::Result<()> {
    let netns = File::open(path).with_context(|| format!("opening {path}"))?;
    nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("entering {path}"))
}

/// Sends `bytes` over a fresh TCP connection from `client` to an echo server
/// in `server` on `server_ip`, and checks every byte comes back. Large enough
/// payloads exercise segmentation and MTU handling on the path.
pub fn tcp_round_trip(
    server: &Netns,
    server_ip: Ipv4Addr,
    client: &Netns,
    bytes: usize,
) -> anyhow::Result<()> {
    let (server_path, client_path) = (server.path(), client.path());
    let (port_sender, port_receiver) = mpsc::channel();
    let echo = thread::spawn(move || -> anyhow::Result<()> {
        enter_netns(&server_path)?;
        let listener = TcpListener::bind((server_ip, 0))?;
        port_sender.send(listener.local_addr()?.port())?;
        listener.set_nonblocking(true)?;
        let deadline = Instant::now() + TCP_TIMEOUT;
        let mut stream = loop {
            match listener.accept() {
                Ok((stream, _)) => break stream,
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        bail!("no connection to {server_ip} within {TCP_TIMEOUT:?}");
                    }
                    thread::sleep(Duration::from_millis(5));
                }
                Err(error) => return Err(error.into()),
            }
        };
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(TCP_TIMEOUT))?;
        let mut received = Vec::new();
        stream.read_to_end(&mut received)?;
        stream.write_all(&received)?;
        Ok(())
    });
    let port = port_receiver
        .recv_timeout(TCP_TIMEOUT)
        .context("echo server did not start")?;
    let exchange = thread::spawn(move || -> anyhow::Result<()> {
        enter_netns(&client_path)?;
        let payload: Vec<u8> = (0..bytes).map(|index| (index % 251) as u8).collect();
        let address = SocketAddr::from((server_ip, port));
        let mut stream = TcpStream::connect_timeout(&address, TCP_TIMEOUT)
            .with_context(|| format!("connecting to {address}"))?;
        stream.set_read_timeout(Some(TCP_TIMEOUT))?;
        stream.write_all(&payload)?;
        stream.shutdown(Shutdown::Write)?;
        let mut echoed = Vec::new();
        stream.read_to_end(&mut echoed)?;
        if echoed != payload {
            bail!(
                "{} of {} bytes came back intact",
                echoed.len(),
                payload.len()
            );
        }
        Ok(())
    });
    let client_result = exchange.join().expect("client thread panicked");
    let server_result = echo.join().expect("server thread panicked");
    client_result.and(server_result)
}

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
