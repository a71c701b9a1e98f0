//! Traffic generators: TCP round trips and iperf3 streams between namespaces.

use std::{
    fs::File,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
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

/// Runs `work` on a new thread inside `netns`: sockets it opens live there.
pub fn in_netns<T: Send + 'static>(
    netns: &Netns,
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> thread::JoinHandle<anyhow::Result<T>> {
    let path = netns.path();
    thread::spawn(move || {
        enter_netns(&path)?;
        work()
    })
}

/// Waits for a thread started by `in_netns`.
pub fn joined<T>(handle: thread::JoinHandle<anyhow::Result<T>>) -> anyhow::Result<T> {
    handle
        .join()
        .map_err(|_| anyhow::anyhow!("traffic thread panicked"))?
}

/// Sends `bytes` over a fresh TCP connection from `client` to an echo server
/// in `server` on `server_ip`, and checks every byte comes back. Large enough
/// payloads exercise segmentation and MTU handling on the path. Returns the
/// client's address as the server saw it.
pub fn tcp_round_trip(
    server: &Netns,
    server_ip: Ipv4Addr,
    client: &Netns,
    bytes: usize,
) -> anyhow::Result<SocketAddr> {
    let (port_sender, port_receiver) = mpsc::channel();
    let echo = in_netns(server, move || {
        let listener = TcpListener::bind((server_ip, 0))?;
        port_sender.send(listener.local_addr()?.port())?;
        listener.set_nonblocking(true)?;
        let deadline = Instant::now() + TCP_TIMEOUT;
        let (mut stream, peer) = loop {
            match listener.accept() {
                Ok(accepted) => break accepted,
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
        Ok(peer)
    });
    let port = port_receiver
        .recv_timeout(TCP_TIMEOUT)
        .context("echo server did not start")?;
    let exchange = in_netns(client, move || {
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
    let client_result = joined(exchange);
    let server_result = joined(echo);
    client_result.and(server_result)
}

/// A UDP echo server in `netns` on `ip:port` that answers every datagram
/// until `datagrams` were echoed or `timeout` passed; yields the sources seen.
pub fn udp_echo_server(
    netns: &Netns,
    ip: Ipv4Addr,
    port: u16,
    datagrams: usize,
    timeout: Duration,
) -> anyhow::Result<thread::JoinHandle<anyhow::Result<Vec<SocketAddr>>>> {
    let (ready, is_ready) = mpsc::channel();
    let server = in_netns(netns, move || {
        let socket = UdpSocket::bind((ip, port))?;
        socket.set_read_timeout(Some(Duration::from_millis(100)))?;
        ready.send(())?;
        let deadline = Instant::now() + timeout;
        let mut sources = Vec::new();
        let mut buffer = [0u8; 2048];
        while sources.len() < datagrams && Instant::now() < deadline {
            match socket.recv_from(&mut buffer) {
                Ok((length, source)) => {
                    socket.send_to(&buffer[..length], source)?;
                    sources.push(source);
                }
                Err(error)
                    if matches!(
                        error.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(error) => return Err(error.into()),
            }
        }
        Ok(sources)
    });
    is_ready
        .recv_timeout(TCP_TIMEOUT)
        .context("UDP echo server did not start")?;
    Ok(server)
}

/// Sends `payload` from `socket` to `destination` and waits for the echo.
pub fn udp_exchange(
    socket: &UdpSocket,
    destination: SocketAddr,
    payload: &[u8],
) -> anyhow::Result<()> {
    socket.set_read_timeout(Some(Duration::from_secs(2)))?;
    socket.send_to(payload, destination)?;
    let mut buffer = [0u8; 2048];
    let (length, source) = socket
        .recv_from(&mut buffer)
        .with_context(|| format!("no echo from {destination}"))?;
    if source != destination || buffer[..length] != *payload {
        bail!("wrong echo from {source}: {:?}", &buffer[..length]);
    }
    Ok(())
}

/// New TCP connections per second from `client` to `server_ip` in `server`
/// over `duration`: connect, send 64 bytes, read 64 bytes back, close. The
/// server closes first, so the client's ports are free again at once.
pub fn connection_rate(
    server: &Netns,
    server_ip: Ipv4Addr,
    client: &Netns,
    duration: Duration,
) -> anyhow::Result<f64> {
    let (port_sender, port_receiver) = mpsc::channel();
    let (done_sender, done) = mpsc::channel::<()>();
    let responder = in_netns(server, move || {
        let listener = TcpListener::bind((server_ip, 0))?;
        port_sender.send(listener.local_addr()?.port())?;
        listener.set_nonblocking(true)?;
        let mut request = [0u8; 64];
        while done.try_recv().is_err() {
            match listener.accept() {
                Ok((mut stream, _)) => {
                    stream.set_nonblocking(false)?;
                    stream.set_read_timeout(Some(TCP_TIMEOUT))?;
                    stream.read_exact(&mut request)?;
                    stream.write_all(&request)?;
                }
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                    thread::sleep(Duration::from_micros(50));
                }
                Err(error) => return Err(error.into()),
            }
        }
        Ok(())
    });
    let port = port_receiver
        .recv_timeout(TCP_TIMEOUT)
        .context("connection-rate server did not start")?;
    let clients = in_netns(client, move || {
        let address = SocketAddr::from((server_ip, port));
        let started = Instant::now();
        let mut connections = 0u64;
        let mut reply = [0u8; 64];
        while started.elapsed() < duration {
            let mut stream = TcpStream::connect_timeout(&address, TCP_TIMEOUT)
                .with_context(|| format!("connection {connections} to {address}"))?;
            stream.set_read_timeout(Some(TCP_TIMEOUT))?;
            stream.write_all(&[7u8; 64])?;
            stream.read_exact(&mut reply)?;
            connections += 1;
        }
        Ok(connections as f64 / started.elapsed().as_secs_f64())
    });
    let rate = joined(clients);
    let _ = done_sender.send(());
    joined(responder).and(rate)
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
pub fn wait_until_listening(netns: &Netns, port: &str) -> anyhow::Result<()> {
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

/// The receiver's rate from `iperf3 --json` output, or its error.
pub fn received_bits_per_second(json: &str) -> anyhow::Result<f64> {
    let report: serde_json::Value = serde_json::from_str(json).context("iperf3 --json output")?;
    if let Some(error) = report["error"].as_str() {
        bail!("iperf3: {error}");
    }
    report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 report without end.sum_received.bits_per_second")
}
