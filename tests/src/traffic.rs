// Above 400 lines: one generator per kind of traffic (round trips, iperf3, rates, steady flows), shared by tests and the bench.
//! Traffic generators between namespaces: TCP round trips, iperf3 runs,
//! connection rates and request/response latency.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{
        IpAddr, Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket,
    },
    path::Path,
    process::{Child, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use ipnetwork::Ipv4Network;
use nix::{
    libc,
    sys::{
        signal::{Signal, kill},
        socket::{setsockopt, sockopt::ReceiveTimeout},
        time::{TimeVal, TimeValLike as _},
    },
    unistd::Pid,
};
use socket2::{Domain, SockAddr, Socket, Type};

use crate::netns::Netns;

const IPERF3_PORT: &str = "5201";
const TCP_TIMEOUT: Duration = Duration::from_secs(5);

/// Which CPU the client and the server side of a run are pinned to (`None`:
/// wherever the scheduler puts them). On veth paths the receiving side's
/// softirq work runs on the sending CPU, so this places that work too.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pinning {
    pub client: Option<usize>,
    pub server: Option<usize>,
}

impl Pinning {
    pub const NONE: Self = Self {
        client: None,
        server: None,
    };
}

/// Pins the calling thread (only) to `cpu`, if one is given.
fn pin_thread(cpu: Option<usize>) -> anyhow::Result<()> {
    let Some(cpu) = cpu else {
        return Ok(());
    };
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).with_context(|| format!("CPU {cpu}"))?;
    nix::sched::sched_setaffinity(Pid::from_raw(0), &set)
        .with_context(|| format!("pinning a thread to CPU {cpu}"))
}

/// `args` run under `taskset` when pinned to a CPU.
fn pinned_command<'a>(cpu: Option<&'a str>, args: &[&'a str]) -> Vec<&'a str> {
    let mut command = match cpu {
        Some(cpu) => vec!["taskset", "--cpu-list", cpu],
        None => Vec::new(),
    };
    command.extend_from_slice(args);
    command
}

/// Runs `work` on a new thread inside `netns`: sockets it opens live there.
pub fn in_netns<T: Send + 'static>(
    netns: &Netns,
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> thread::JoinHandle<anyhow::Result<T>> {
    let path = netns.path();
    thread::spawn(move || {
        dataplane_user::netns::enter(Path::new(&path))?;
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
    let (port, echo) = tcp_echo_server(server, SocketAddrV4::new(server_ip, 0), 1, TCP_TIMEOUT)?;
    let exchange = tcp_exchange(client, SocketAddr::from((server_ip, port)), bytes);
    let peers = joined(echo);
    exchange?;
    peers?
        .first()
        .copied()
        .with_context(|| format!("no connection to {server_ip} within {TCP_TIMEOUT:?}"))
}

/// A TCP echo server in `netns` on `address` (port 0: any) that echoes up
/// to `connections` connections, one after the other, each until the client
/// stops sending, and stops early when `idle` passes without a new one.
/// Returns its port, and what yields the peers it saw.
pub fn tcp_echo_server(
    netns: &Netns,
    address: SocketAddrV4,
    connections: usize,
    idle: Duration,
) -> anyhow::Result<(u16, thread::JoinHandle<anyhow::Result<Vec<SocketAddr>>>)> {
    let (port_sender, port_receiver) = mpsc::channel();
    let echo = in_netns(netns, move || {
        let listener = TcpListener::bind(address)?;
        port_sender.send(listener.local_addr()?.port())?;
        listener.set_nonblocking(true)?;
        let mut peers = Vec::new();
        'serving: while peers.len() < connections {
            let deadline = Instant::now() + idle;
            let (mut stream, peer) = loop {
                match listener.accept() {
                    Ok(accepted) => break accepted,
                    Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                        if Instant::now() > deadline {
                            break 'serving;
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
            peers.push(peer);
        }
        Ok(peers)
    });
    let port = port_receiver
        .recv_timeout(TCP_TIMEOUT)
        .context("echo server did not start")?;
    Ok((port, echo))
}

/// `GET path` to `address` from `netns`: the status code and the body.
pub fn http_get(
    netns: &Netns,
    address: SocketAddr,
    path: &'static str,
) -> anyhow::Result<(u16, String)> {
    joined(in_netns(netns, move || {
        // The port opens just after the Service is programmed.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut stream = loop {
            match TcpStream::connect_timeout(&address, Duration::from_secs(5)) {
                Err(_) if Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(50));
                }
                connected => break connected?,
            }
        };
        let request = format!("GET {path} HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes())?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("not an HTTP response: {response}"))?;
        let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
        Ok((status, body.to_string()))
    }))
}

/// Sends `bytes` from `client` over a fresh TCP connection to `address` and
/// checks every byte comes back.
pub fn tcp_exchange(client: &Netns, address: SocketAddr, bytes: usize) -> anyhow::Result<()> {
    joined(in_netns(client, move || {
        let payload: Vec<u8> = (0..bytes).map(|index| (index % 251) as u8).collect();
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
    }))
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
        // Large enough for datagrams the network fragments.
        let mut buffer = vec![0u8; 65536];
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
    let mut buffer = vec![0u8; 65536];
    let (length, source) = socket
        .recv_from(&mut buffer)
        .with_context(|| format!("no echo from {destination}"))?;
    if source != destination || buffer[..length] != *payload {
        bail!("wrong echo from {source}: {:?}", &buffer[..length]);
    }
    Ok(())
}

/// New TCP connections per second from `clients` parallel clients in
/// `client` to `server_ip` in `server` over `duration`: each connects, sends
/// 64 bytes, reads 64 bytes back and closes, as fast as it can. The server
/// (one worker per client) closes first, so the clients' ports are free
/// again at once.
pub fn connection_rate(
    server: &Netns,
    server_ip: impl Into<IpAddr>,
    client: &Netns,
    duration: Duration,
    clients: usize,
    pinning: Pinning,
) -> anyhow::Result<f64> {
    let server_ip = server_ip.into();
    // accept() gives up after 100 ms, so workers notice when to stop.
    let listener = listener_in(server, server_ip, Duration::from_millis(100))?;
    let address = SocketAddr::from((server_ip, listener.local_addr()?.port()));
    let stop = Arc::new(AtomicBool::new(false));
    let workers = (0..clients)
        .map(|_| {
            let listener = listener.try_clone()?;
            let stop = Arc::clone(&stop);
            Ok(thread::spawn(move || {
                pin_thread(pinning.server)?;
                serve_until(&listener, &stop)
            }))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let rate = connection_rate_to(client, address, duration, clients, pinning.client);
    stop.store(true, Ordering::Relaxed);
    workers.into_iter().try_for_each(|worker| {
        worker
            .join()
            .map_err(|_| anyhow::anyhow!("server worker panicked"))?
    })?;
    rate
}

/// The request of a connection-rate client: the server answers it and
/// closes first, so the client's port is free again at once.
const LAST_REQUEST: [u8; 64] = [7u8; 64];

/// The client side of `connection_rate`: new TCP connections per second
/// from `clients` parallel clients in `client` to `address`, each pinned to
/// `cpu`.
pub fn connection_rate_to(
    client: &Netns,
    address: SocketAddr,
    duration: Duration,
    clients: usize,
    cpu: Option<usize>,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let connectors: Vec<_> = (0..clients)
        .map(|_| {
            in_netns(client, move || {
                pin_thread(cpu)?;
                let mut connections = 0u64;
                let mut reply = [0u8; 64];
                while started.elapsed() < duration {
                    let mut stream = TcpStream::connect_timeout(&address, TCP_TIMEOUT)
                        .with_context(|| format!("connection {connections} to {address}"))?;
                    stream.set_read_timeout(Some(TCP_TIMEOUT))?;
                    stream.write_all(&LAST_REQUEST)?;
                    stream.read_exact(&mut reply)?;
                    connections += 1;
                }
                Ok(connections)
            })
        })
        .collect();
    let connected: u64 = connectors
        .into_iter()
        .map(joined)
        .sum::<anyhow::Result<u64>>()?;
    Ok(connected as f64 / started.elapsed().as_secs_f64())
}

/// A TCP listener on an ephemeral port of `ip` in `netns` whose accept()
/// gives up after `accept_timeout`.
fn listener_in(netns: &Netns, ip: IpAddr, accept_timeout: Duration) -> anyhow::Result<TcpListener> {
    listener_on(netns, SocketAddr::new(ip, 0), accept_timeout)
}

/// A TCP listener on `address` in `netns` whose accept() gives up after
/// `accept_timeout`.
fn listener_on(
    netns: &Netns,
    address: SocketAddr,
    accept_timeout: Duration,
) -> anyhow::Result<TcpListener> {
    let timeout = TimeVal::microseconds(i64::try_from(accept_timeout.as_micros())?);
    joined(in_netns(netns, move || {
        let listener =
            TcpListener::bind(address).with_context(|| format!("listening on {address}"))?;
        setsockopt(&listener, ReceiveTimeout, &timeout)?;
        Ok(listener)
    }))
}

/// One request and its answer over a fresh connection from `netns` to
/// `address` (an `EchoServers` port), connecting within `timeout`.
pub fn echo_once(netns: &Netns, address: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
    joined(in_netns(netns, move || {
        let mut stream = TcpStream::connect_timeout(&address, timeout)
            .with_context(|| format!("connecting to {address}"))?;
        echo_over(&mut stream, timeout)
    }))
}

/// One request answered on `stream` (connected to `EchoServers`), which
/// the server then closes.
pub fn echo_over(stream: &mut TcpStream, timeout: Duration) -> anyhow::Result<()> {
    let address = stream.peer_addr()?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(&LAST_REQUEST)?;
    let mut answer = [0u8; 64];
    stream
        .read_exact(&mut answer)
        .with_context(|| format!("the answer from {address}"))?;
    if answer != LAST_REQUEST {
        bail!("{address} answered something else");
    }
    Ok(())
}

/// Echo servers on several ports of one address (a Service's backends),
/// for every client function here that takes an address: each connection
/// gets 64-byte answers to 64-byte requests until it ends, and is closed by
/// the server right after answering the last request (`LAST_REQUEST`).
/// They stop when dropped.
pub struct EchoServers {
    stop: Arc<AtomicBool>,
    workers: Vec<thread::JoinHandle<anyhow::Result<()>>>,
}

impl EchoServers {
    /// `workers` threads per port (connections served at once), pinned to
    /// `cpu`, on `ip` of either family.
    pub fn start(
        netns: &Netns,
        ip: impl Into<IpAddr>,
        ports: impl IntoIterator<Item = u16>,
        workers: usize,
        cpu: Option<usize>,
    ) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::new();
        let ip = ip.into();
        for port in ports {
            // accept() gives up after 100 ms, so workers notice when to stop.
            let listener =
                listener_on(netns, SocketAddr::new(ip, port), Duration::from_millis(100))?;
            for _ in 0..workers {
                let (listener, stop) = (listener.try_clone()?, Arc::clone(&stop));
                handles.push(thread::spawn(move || {
                    pin_thread(cpu)?;
                    serve_until(&listener, &stop)
                }));
            }
        }
        Ok(Self {
            stop,
            workers: handles,
        })
    }
}

impl EchoServers {
    /// UDP echo servers on `ports` of `ip` in `netns`: every datagram is
    /// sent back to its source.
    pub fn start_udp(
        netns: &Netns,
        ip: Ipv4Addr,
        ports: impl IntoIterator<Item = u16>,
    ) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::new();
        for port in ports {
            let address = SocketAddrV4::new(ip, port);
            let socket = joined(in_netns(netns, move || {
                let socket =
                    UdpSocket::bind(address).with_context(|| format!("binding {address}"))?;
                // recv_from gives up after 100 ms, so the worker notices when to stop.
                socket.set_read_timeout(Some(Duration::from_millis(100)))?;
                Ok(socket)
            }))?;
            let stop = Arc::clone(&stop);
            workers.push(thread::spawn(move || {
                let mut buffer = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((length, source)) = socket.recv_from(&mut buffer) {
                        socket.send_to(&buffer[..length], source)?;
                    }
                }
                Ok(())
            }));
        }
        Ok(Self { stop, workers })
    }
}

/// One datagram from `netns` to `address` (an `EchoServers::start_udp`
/// port) and its echo within `timeout`.
pub fn udp_echo_once(netns: &Netns, address: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
    joined(in_netns(netns, move || {
        let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        socket.set_read_timeout(Some(timeout))?;
        socket.send_to(&LAST_REQUEST, address)?;
        let mut answer = [0u8; 64];
        let (length, source) = socket
            .recv_from(&mut answer)
            .with_context(|| format!("no echo from {address}"))?;
        if source != address || answer[..length] != LAST_REQUEST {
            bail!("{address} answered something else");
        }
        Ok(())
    }))
}

impl Drop for EchoServers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

/// Serves connections on `listener` one after the other until `stop`.
fn serve_until(listener: &TcpListener, stop: &AtomicBool) -> anyhow::Result<()> {
    let mut request = [0u8; 64];
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((mut stream, _)) => {
                stream.set_nodelay(true)?;
                stream.set_read_timeout(Some(TCP_TIMEOUT))?;
                while stream.read_exact(&mut request).is_ok()
                    && stream.write_all(&request).is_ok()
                    && request != LAST_REQUEST
                {}
            }
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(error) => return Err(error.into()),
        }
    }
    Ok(())
}

/// Percentiles of timed exchanges: round trips of 64-byte requests over one
/// TCP connection (no Nagle), or connects.
pub struct Latency {
    pub p50: Duration,
    pub p99: Duration,
    pub exchanges: usize,
}

/// Exchanges before this are not counted (caches, CPU wake-up).
const LATENCY_WARM_UP: Duration = Duration::from_millis(200);

/// Request/response latency from `client` to an echo server in `server`.
pub fn request_response_latency(
    server: &Netns,
    server_ip: impl Into<IpAddr>,
    client: &Netns,
    duration: Duration,
    pinning: Pinning,
) -> anyhow::Result<Latency> {
    let server_ip = server_ip.into();
    let listener = listener_in(server, server_ip, TCP_TIMEOUT)?;
    let address = SocketAddr::from((server_ip, listener.local_addr()?.port()));
    let echo = thread::spawn(move || -> anyhow::Result<()> {
        pin_thread(pinning.server)?;
        let (mut stream, _) = listener.accept()?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(TCP_TIMEOUT))?;
        let mut request = [0u8; 64];
        while stream.read_exact(&mut request).is_ok() {
            stream.write_all(&request)?;
        }
        Ok(())
    });
    let rtts = request_response_to(client, address, duration, pinning.client);
    let echoed = echo
        .join()
        .map_err(|_| anyhow::anyhow!("echo server panicked"))?;
    echoed?;
    rtts
}

/// The client side of `request_response_latency`: 64-byte requests to
/// `address` over one connection from `client`, pinned to `cpu`.
pub fn request_response_to(
    client: &Netns,
    address: SocketAddr,
    duration: Duration,
    cpu: Option<usize>,
) -> anyhow::Result<Latency> {
    let rtts = joined(in_netns(client, move || {
        pin_thread(cpu)?;
        let mut stream = TcpStream::connect_timeout(&address, TCP_TIMEOUT)
            .with_context(|| format!("connecting to {address}"))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(TCP_TIMEOUT))?;
        let (mut request, mut reply) = ([3u8; 64], [0u8; 64]);
        let started = Instant::now();
        let mut rtts = Vec::new();
        while started.elapsed() < duration + LATENCY_WARM_UP {
            let sent = Instant::now();
            stream.write_all(&request)?;
            stream.read_exact(&mut reply)?;
            if started.elapsed() > LATENCY_WARM_UP {
                rtts.push(sent.elapsed());
            }
            request[0] = request[0].wrapping_add(1);
        }
        Ok(rtts)
    }))?;
    if rtts.is_empty() {
        bail!("no request completed within {duration:?}");
    }
    Ok(Latency::of(rtts))
}

impl Latency {
    /// The percentiles of `rtts`, which must not be empty.
    fn of(mut rtts: Vec<Duration>) -> Self {
        rtts.sort_unstable();
        let percentile = |share: f64| rtts[((rtts.len() - 1) as f64 * share).round() as usize];
        Latency {
            p50: percentile(0.50),
            p99: percentile(0.99),
            exchanges: rtts.len(),
        }
    }
}

/// How long `connect` takes (the first packet's way to the server and its
/// answer's way back) over `count` new connections from `client` to
/// `address`, one after the other, pinned to `cpu`. Each then sends the
/// last request, so the server closes first.
pub fn connect_latency(
    client: &Netns,
    address: SocketAddr,
    count: usize,
    cpu: Option<usize>,
) -> anyhow::Result<Latency> {
    anyhow::ensure!(count > 0, "no connections to time");
    let times = joined(in_netns(client, move || {
        pin_thread(cpu)?;
        let mut reply = [0u8; 64];
        (0..count)
            .map(|index| {
                let started = Instant::now();
                let mut stream = TcpStream::connect_timeout(&address, TCP_TIMEOUT)
                    .with_context(|| format!("connection {index} to {address}"))?;
                let took = started.elapsed();
                stream.set_read_timeout(Some(TCP_TIMEOUT))?;
                stream.write_all(&LAST_REQUEST)?;
                stream.read_exact(&mut reply)?;
                Ok(took)
            })
            .collect::<anyhow::Result<Vec<_>>>()
    }))?;
    Ok(Latency::of(times))
}
/// What an iperf3 run sends.
#[derive(Debug, Clone, Copy)]
pub enum Iperf3Load {
    /// TCP, this many parallel streams.
    Tcp { streams: u32 },
    /// UDP datagrams of this payload size, as fast as the sender can.
    Udp { payload_bytes: u32 },
}

/// What the receiver of an iperf3 run got.
#[derive(Debug, Clone, Copy)]
pub struct Iperf3Received {
    pub bits_per_second: f64,
    pub bytes: f64,
    pub seconds: f64,
}

/// Runs iperf3 from `client` to a one-off server in `server` listening on
/// `server_ip`; returns what the server received.
pub fn iperf3(
    server: &Netns,
    server_ip: impl Into<IpAddr>,
    client: &Netns,
    seconds: u32,
    load: Iperf3Load,
    pinning: Pinning,
) -> anyhow::Result<Iperf3Received> {
    let (client_cpu, server_cpu) = (
        pinning.client.map(|cpu| cpu.to_string()),
        pinning.server.map(|cpu| cpu.to_string()),
    );
    let mut server_process = server.spawn(&pinned_command(
        server_cpu.as_deref(),
        &["iperf3", "--server", "--one-off", "--port", IPERF3_PORT],
    ))?;
    let (seconds, server_ip) = (seconds.to_string(), server_ip.into().to_string());
    let mut args = vec![
        "iperf3",
        "--client",
        &server_ip,
        "--port",
        IPERF3_PORT,
        "--time",
        &seconds,
        "--connect-timeout",
        "3000",
        "--json",
    ];
    let (streams, payload);
    match load {
        Iperf3Load::Tcp { streams: count } => {
            streams = count.to_string();
            args.extend(["--parallel", &streams]);
        }
        Iperf3Load::Udp { payload_bytes } => {
            payload = payload_bytes.to_string();
            args.extend(["--udp", "--bitrate", "0", "--length", &payload]);
        }
    }
    let result = wait_until_listening(server, IPERF3_PORT)
        .and_then(|()| client.exec(&pinned_command(client_cpu.as_deref(), &args)));
    reap(&mut server_process, Duration::from_secs(5));
    received(&result.context("iperf3 client")?)
}

/// Runs a single iperf3 TCP stream; the received rate in bit/s.
pub fn iperf3_tcp(
    server: &Netns,
    server_ip: impl Into<IpAddr>,
    client: &Netns,
    seconds: u32,
) -> anyhow::Result<f64> {
    iperf3(
        server,
        server_ip,
        client,
        seconds,
        Iperf3Load::Tcp { streams: 1 },
        Pinning::NONE,
    )
    .map(|received| received.bits_per_second)
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
        thread::sleep(Duration::from_millis(20));
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
        thread::sleep(Duration::from_millis(20));
    }
    let _ = process.kill();
    let _ = process.wait();
}

/// The receiver's rate from `iperf3 --json` output, or its error.
pub fn received_bits_per_second(json: &str) -> anyhow::Result<f64> {
    received(json).map(|received| received.bits_per_second)
}

/// The receiver's side of `iperf3 --json` output, or its error.
fn received(json: &str) -> anyhow::Result<Iperf3Received> {
    let report: serde_json::Value = serde_json::from_str(json).context("iperf3 --json output")?;
    if let Some(error) = report["error"].as_str() {
        bail!("iperf3: {error}");
    }
    let sum = &report["end"]["sum_received"];
    let field = |name: &str| {
        sum[name]
            .as_f64()
            .with_context(|| format!("iperf3 report without end.sum_received.{name}"))
    };
    Ok(Iperf3Received {
        bits_per_second: field("bits_per_second")?,
        bytes: field("bytes")?,
        seconds: field("seconds")?,
    })
}

/// A raw AF_PACKET socket of the calling thread's namespace and the
/// address of interface `index` to send whole frames out of.
fn packet_socket(index: u32) -> anyhow::Result<(Socket, SockAddr)> {
    let socket = Socket::new(Domain::PACKET, Type::RAW, None)?;
    // SAFETY: a zeroed sockaddr_ll with family and ifindex set is a valid
    // address for an AF_PACKET socket, and fits the storage.
    let ((), device) = unsafe {
        SockAddr::try_init(|storage, length| {
            let link = storage.cast::<libc::sockaddr_ll>();
            (*link).sll_family = libc::AF_PACKET as u16;
            (*link).sll_ifindex = index as i32;
            *length = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            Ok(())
        })
    }?;
    Ok((socket, device))
}

/// Sends `frame` `count` times out of `interface` as it is (AF_PACKET).
pub fn send_frames(
    netns: &Netns,
    interface: &str,
    frame: Vec<u8>,
    count: usize,
) -> anyhow::Result<()> {
    let index = netns.index_of(interface)?;
    joined(in_netns(netns, move || {
        let (socket, device) = packet_socket(index)?;
        for _ in 0..count {
            socket
                .send_to(&frame, &device)
                .context("sending a raw frame")?;
        }
        Ok(())
    }))
}

/// A packet capture (`tcpdump`) on an interface of a namespace, running
/// until `finish`: headers only, each packet handed over as it arrives
/// (without immediate mode libpcap delivers in blocks, and what a block
/// held when tcpdump stopped was lost).
pub struct Capture {
    tcpdump: Child,
    /// Held open: tcpdump dies of SIGPIPE writing to a closed stderr.
    _stderr: BufReader<std::process::ChildStderr>,
    file: tempfile::NamedTempFile,
    netns_path: String,
}

impl Capture {
    /// Starts capturing on `interface` in `netns`; returns once tcpdump listens.
    pub fn start(netns: &Netns, interface: &str) -> anyhow::Result<Self> {
        let file = tempfile::NamedTempFile::new()?;
        let path = file.path().display().to_string();
        let mut tcpdump = netns
            .command("tcpdump")?
            .args([
                "-i",
                interface,
                "-nn",
                "--immediate-mode",
                "-U",
                "-s",
                "128",
                "-w",
                &path,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting tcpdump")?;
        // tcpdump says "listening on ..." once its socket is bound.
        let mut stderr = BufReader::new(tcpdump.stderr.take().context("tcpdump's stderr")?);
        let mut line = String::new();
        stderr.read_line(&mut line)?;
        if !line.contains("listening on") {
            let _ = tcpdump.kill();
            bail!("tcpdump did not start: {line}");
        }
        Ok(Self {
            tcpdump,
            _stderr: stderr,
            file,
            netns_path: netns.path(),
        })
    }

    /// Stops the capture; one line per packet, as `tcpdump -nn -e` prints it.
    pub fn finish(mut self) -> anyhow::Result<Vec<String>> {
        // What the kernel queued for tcpdump is read before it stops.
        thread::sleep(Duration::from_millis(300));
        let _ = kill(Pid::from_raw(self.tcpdump.id() as i32), Signal::SIGINT);
        self.tcpdump.wait()?;
        let path = self.file.path().display().to_string();
        let mut command = crate::netns::command_in(Path::new(&self.netns_path), "tcpdump")?;
        command.args(["-nn", "-e", "-r", &path]);
        let output = command.output().context("reading the capture")?;
        if !output.status.success() {
            bail!(
                "reading the capture failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::to_string)
            .collect())
    }
}

/// A TCP SYN flood from one thread: frames to `next_hop_mac` out of
/// `interface`, from random addresses of `sources` (one address: that
/// one, unspoofed) and random ports, to `destination`'s address at a port
/// of `ports` (random when it is a range), sent as fast as the thread can
/// until `duration` passed. Yields how many frames went out.
pub struct SynFlood {
    pub interface: &'static str,
    pub next_hop_mac: [u8; 6],
    pub sources: Ipv4Network,
    pub destination: Ipv4Addr,
    pub ports: std::ops::RangeInclusive<u16>,
    pub duration: Duration,
}

impl SynFlood {
    /// Starts the flood in `netns`.
    pub fn start(self, netns: &Netns) -> anyhow::Result<thread::JoinHandle<anyhow::Result<u64>>> {
        let index = netns.index_of(self.interface)?;
        let own_mac = netns.mac_of(self.interface)?;
        Ok(in_netns(netns, move || {
            let (socket, device) = packet_socket(index)?;
            let mut frame = syn_template(self.next_hop_mac, own_mac.into_array(), self.destination);
            let mut random = Xorshift(0x9e37_79b9_7f4a_7c15 ^ u64::from(index));
            let (first, count) = (
                u32::from(self.sources.network()),
                u64::from(u32::MAX >> self.sources.prefix().min(31)) + 1,
            );
            let port_span = u64::from(self.ports.end() - self.ports.start()) + 1;
            let deadline = Instant::now() + self.duration;
            let mut sent = 0u64;
            while Instant::now() < deadline {
                // A batch between clock reads.
                for _ in 0..256 {
                    let value = random.next();
                    let source = if self.sources.prefix() == 32 {
                        first
                    } else {
                        first + (value % count) as u32
                    };
                    let port = *self.ports.start() + ((value >> 32) % port_span) as u16;
                    fill_syn(
                        &mut frame,
                        source,
                        (value >> 48) as u16 | 1024,
                        port,
                        value as u32,
                    );
                    // A full queue drops the frame: what a flood is.
                    if socket.send_to(&frame, &device).is_ok() {
                        sent += 1;
                    }
                }
            }
            Ok(sent)
        }))
    }
}

/// xorshift64: fast and good enough for spoofed addresses and ports.
struct Xorshift(u64);

impl Xorshift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// An Ethernet frame holding an IPv4 TCP SYN to `destination` (no
/// options), its source, ports and checksums filled by `fill_syn`.
fn syn_template(dst_mac: [u8; 6], src_mac: [u8; 6], destination: Ipv4Addr) -> Vec<u8> {
    let mut frame = Vec::with_capacity(54);
    frame.extend_from_slice(&dst_mac);
    frame.extend_from_slice(&src_mac);
    frame.extend_from_slice(&0x0800u16.to_be_bytes());
    // IPv4: version 4, IHL 5, total 40, DF, TTL 64, TCP.
    frame.extend_from_slice(&[0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0]);
    frame.extend_from_slice(&[0; 4]);
    frame.extend_from_slice(&destination.octets());
    // TCP: ports, sequence, acknowledgement, offset 5, SYN, window 64240.
    frame.extend_from_slice(&[0; 12]);
    frame.extend_from_slice(&[0x50, 0x02, 0xfa, 0xf0, 0, 0, 0, 0]);
    frame
}

/// Sets the source, the ports and the sequence number of a `syn_template`
/// frame, and both checksums.
fn fill_syn(frame: &mut [u8], source: u32, source_port: u16, port: u16, seq: u32) {
    frame[26..30].copy_from_slice(&source.to_be_bytes());
    frame[34..36].copy_from_slice(&source_port.to_be_bytes());
    frame[36..38].copy_from_slice(&port.to_be_bytes());
    frame[38..42].copy_from_slice(&seq.to_be_bytes());
    frame[24..26].fill(0);
    let ip = dataplane_common::checksum::internet(&frame[14..34]);
    frame[24..26].copy_from_slice(&ip.to_be_bytes());
    frame[50..52].fill(0);
    let mut pseudo = [0u8; 32];
    pseudo[0..8].copy_from_slice(&frame[26..34]);
    pseudo[9] = dataplane_common::ip_protocol::TCP;
    pseudo[11] = 20;
    pseudo[12..32].copy_from_slice(&frame[34..54]);
    let tcp = dataplane_common::checksum::internet(&pseudo);
    frame[50..52].copy_from_slice(&tcp.to_be_bytes());
}

/// How often a steady flow exchanges a request.
pub const STEADY_INTERVAL: Duration = Duration::from_millis(10);

/// What a steady flow saw: its answered requests, the longest time between
/// two answers (the forwarding gap it lived through), unanswered datagrams
/// and the first error that ended a TCP flow.
#[derive(Debug, Default)]
pub struct Steady {
    pub answered: usize,
    pub longest_gap: Duration,
    pub unanswered: usize,
    pub error: Option<String>,
}

impl Steady {
    fn answered_at(&mut self, last: &mut Option<Instant>) {
        let now = Instant::now();
        if let Some(previous) = last.replace(now) {
            self.longest_gap = self.longest_gap.max(now - previous);
        }
        self.answered += 1;
    }
}

/// One TCP connection from `client` to `address` (an `EchoServers` port)
/// exchanging a 64-byte request every `STEADY_INTERVAL` until `stop`.
/// Connected before this returns.
pub fn steady_tcp(
    client: &Netns,
    address: SocketAddr,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<thread::JoinHandle<anyhow::Result<Steady>>> {
    let (connected, is_connected) = mpsc::channel();
    let flow = in_netns(client, move || {
        let mut stream = TcpStream::connect_timeout(&address, TCP_TIMEOUT)
            .with_context(|| format!("connecting to {address}"))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(TCP_TIMEOUT))?;
        connected.send(())?;
        let (request, mut answer) = ([1u8; 64], [0u8; 64]);
        let (mut steady, mut last) = (Steady::default(), None);
        while !stop.load(Ordering::Relaxed) {
            let exchanged = stream
                .write_all(&request)
                .and_then(|()| stream.read_exact(&mut answer));
            match exchanged {
                Ok(()) if answer == request => steady.answered_at(&mut last),
                Ok(()) => bail!("{address} answered something else"),
                Err(error) => {
                    steady.error = Some(format!("after {} answers: {error}", steady.answered));
                    break;
                }
            }
            thread::sleep(STEADY_INTERVAL);
        }
        Ok(steady)
    });
    if is_connected.recv_timeout(TCP_TIMEOUT * 2).is_err() {
        joined(flow)?;
        bail!("the flow to {address} ended before it connected");
    }
    Ok(flow)
}

/// One UDP flow (one source port) from `client` to `address` (a
/// `UdpEcho`): a datagram every `STEADY_INTERVAL` until `stop`, each
/// waited for at most 200 ms.
pub fn steady_udp(
    client: &Netns,
    address: SocketAddr,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<anyhow::Result<Steady>> {
    in_netns(client, move || {
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        socket.connect(address)?;
        socket.set_read_timeout(Some(Duration::from_millis(200)))?;
        let (mut steady, mut last) = (Steady::default(), None);
        let mut answer = [0u8; 64];
        let mut sequence = 0u64;
        while !stop.load(Ordering::Relaxed) {
            sequence += 1;
            socket.send(&sequence.to_be_bytes())?;
            // Late answers to earlier datagrams are read past.
            let answered = loop {
                match socket.recv(&mut answer) {
                    Ok(8) if answer[..8] == sequence.to_be_bytes() => break true,
                    Ok(_) => {}
                    Err(_) => break false,
                }
            };
            if answered {
                steady.answered_at(&mut last);
            } else {
                steady.unanswered += 1;
            }
            thread::sleep(STEADY_INTERVAL);
        }
        Ok(steady)
    })
}

/// A UDP echo server on `address` of `netns` until dropped.
pub struct UdpEcho {
    stop: Arc<AtomicBool>,
    worker: Option<thread::JoinHandle<anyhow::Result<()>>>,
}

impl UdpEcho {
    pub fn start(netns: &Netns, address: SocketAddrV4) -> anyhow::Result<Self> {
        let socket = joined(in_netns(netns, move || {
            let socket = UdpSocket::bind(address).with_context(|| format!("binding {address}"))?;
            socket.set_read_timeout(Some(Duration::from_millis(100)))?;
            Ok(socket)
        }))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let worker = thread::spawn(move || {
            let mut buffer = [0u8; 2048];
            while !stopped.load(Ordering::Relaxed) {
                if let Ok((length, source)) = socket.recv_from(&mut buffer) {
                    socket.send_to(&buffer[..length], source)?;
                }
            }
            Ok(())
        });
        Ok(Self {
            stop,
            worker: Some(worker),
        })
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}
