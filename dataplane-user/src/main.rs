//! `dataplane`: the node agent and its command-line client.

use std::{net::Ipv4Addr, path::PathBuf};

use anyhow::bail;
use clap::{Parser, Subcommand, ValueEnum};
use dataplane_user::{
    agent,
    api::{self, Request, Response},
    config::DEFAULT_API_SOCKET,
    install,
    model::{EndpointSpec, NodeSpec},
};
use ipnetwork::Ipv4Network;
use macaddr::MacAddr6;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(version, about = "eBPF pod-network dataplane: node agent and CLI")]
struct Cli {
    /// The agent's API socket (clients only).
    #[arg(long, global = true, env = "DATAPLANE_SOCKET", default_value = DEFAULT_API_SOCKET)]
    socket: PathBuf,
    /// Output format (clients only).
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Text)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node agent: load the programs, program the maps, serve the API.
    Agent {
        /// Path of the agent's TOML config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Register, remove or list pods on this node.
    #[command(subcommand)]
    Endpoint(EndpointCommand),
    /// Add, remove or list the other nodes of the cluster.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Masqueraded connections.
    #[command(subcommand)]
    Nat(NatCommand),
    /// Inspect the dataplane's maps as the programs see them.
    #[command(subcommand)]
    Map(MapCommand),
    /// Live drop events (reason, addresses, ports, interface) until Ctrl-C.
    Monitor {
        /// Only these reasons or paths (e.g. drop_spoofed_source); all when none given.
        #[arg(long)]
        reason: Vec<String>,
        /// Also show forwarded packets (traces), within the same per-CPU budget.
        #[arg(long)]
        traces: bool,
        /// Only packets from or to these addresses; all when none given.
        #[arg(long)]
        address: Vec<Ipv4Addr>,
    },
    /// Per-path and per-drop-reason packet counters.
    Counters,
    /// The node's settings as the agent applied them (node IP, tunnel, pod MTU).
    Status,
    /// Remove everything the agent created on this node: pinned programs,
    /// links and maps, and the VXLAN device. The agent must be stopped.
    Uninstall {
        /// The agent's config file (for its bpf_root and socket).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Install the CNI plugin and chain it into the node's CNI configuration
    /// (what the DaemonSet's init container runs).
    InstallCni {
        #[arg(long, default_value = "/opt/cni/bin")]
        bin_dir: PathBuf,
        #[arg(long, default_value = "/etc/cni/net.d")]
        conf_dir: PathBuf,
        /// The node's pod CIDR, for writing a configuration when none exists.
        #[arg(long)]
        pod_cidr: Option<Ipv4Network>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum MapName {
    Endpoints,
    Nodes,
    Nat,
}

#[derive(Subcommand)]
enum MapCommand {
    /// Every entry of a map.
    List { map: MapName },
    /// The entries of a map that involve an address (pod, node or remote IP).
    Get { map: MapName, address: Ipv4Addr },
    /// Empty a map; only the NAT table (connections start afresh).
    Flush { map: MapName },
}

#[derive(Subcommand)]
enum NatCommand {
    /// List tracked connections: pod, node address, remote, state, idle time.
    List,
}

#[derive(Subcommand)]
enum NodeCommand {
    /// Make a node's pods reachable through the tunnel (replaces what was known of it).
    Add {
        /// The node's underlay IP.
        #[arg(long)]
        ip: Ipv4Addr,
        /// The node's pod CIDR.
        #[arg(long)]
        pod_cidr: Ipv4Network,
    },
    /// Forget a node (succeeds if it is not known).
    Del {
        #[arg(long)]
        ip: Ipv4Addr,
    },
    /// List the nodes the tunnel maps hold.
    List,
}

#[derive(Subcommand)]
enum EndpointCommand {
    /// Register a pod: its IP, the host side of its veth, and its own MAC.
    Add {
        #[arg(long)]
        ip: Ipv4Addr,
        /// Host-side veth name in the node's network namespace.
        #[arg(long)]
        interface: String,
        /// MAC address of the pod's interface.
        #[arg(long)]
        mac: MacAddr6,
    },
    /// Remove a pod (succeeds if it is not registered).
    Del {
        #[arg(long)]
        ip: Ipv4Addr,
    },
    /// List registered pods as the endpoints map holds them.
    List,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("DATAPLANE_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Agent { .. }) {
        // A client whose reader went away (`dataplane status | head`) ends
        // quietly, as Unix tools do, instead of panicking in println!.
        // SAFETY: no other thread exists yet, and SIG_DFL installs no handler.
        unsafe {
            nix::sys::signal::signal(
                nix::sys::signal::Signal::SIGPIPE,
                nix::sys::signal::SigHandler::SigDfl,
            )
        }?;
    }
    let address_filter = match &cli.command {
        Command::Map(MapCommand::Get { address, .. }) => Some(address.to_string()),
        _ => None,
    };
    let request = match cli.command {
        Command::InstallCni {
            bin_dir,
            conf_dir,
            pod_cidr,
        } => {
            let plugin = std::env::current_exe()?.with_file_name(install::PLUGIN_NAME);
            let written = install::install(&install::InstallOptions {
                plugin,
                bin_dir,
                conf_dir,
                socket: cli.socket,
                pod_cidr,
            })?;
            println!(
                "installed {} and chained it in {}",
                install::PLUGIN_NAME,
                written.display()
            );
            return Ok(());
        }
        Command::Uninstall { config } => {
            return tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(agent::uninstall(&config));
        }
        Command::Monitor {
            reason,
            traces,
            address,
        } => {
            let json = matches!(cli.output, Output::Json);
            let addresses: Vec<String> = address.iter().map(Ipv4Addr::to_string).collect();
            let involves = |field: &str| {
                addresses
                    .iter()
                    .any(|address| field.split(':').next() == Some(address.as_str()))
            };
            return api::stream(&cli.socket, &Request::Monitor { traces }, |response| {
                match &response {
                    Response::Event { event }
                        if (reason.is_empty() || reason.contains(&event.reason))
                            && (addresses.is_empty()
                                || involves(&event.source)
                                || involves(&event.destination)) =>
                    {
                        if json {
                            println!("{}", serde_json::to_string(event).expect("serializes"));
                        } else {
                            println!(
                                "{:<28} ifindex {:<5} proto {:<3} {} -> {}",
                                event.reason,
                                event.ifindex,
                                event.protocol,
                                event.source,
                                event.destination
                            );
                        }
                    }
                    Response::Error { message } => eprintln!("error: {message}"),
                    _ => {}
                }
                // Flushed line by line, so pipes see events as they happen.
                std::io::Write::flush(&mut std::io::stdout()).is_ok()
            });
        }
        Command::Agent { config } => {
            return tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(agent::run(&config));
        }
        Command::Endpoint(EndpointCommand::Add { ip, interface, mac }) => Request::AddEndpoint {
            endpoint: EndpointSpec { ip, interface, mac },
        },
        Command::Endpoint(EndpointCommand::Del { ip }) => Request::RemoveEndpoint {
            ip,
            host_ifindex: None,
        },
        Command::Endpoint(EndpointCommand::List) => Request::ListEndpoints,
        Command::Node(NodeCommand::Add { ip, pod_cidr }) => Request::AddNode {
            node: NodeSpec { ip, pod_cidr },
        },
        Command::Node(NodeCommand::Del { ip }) => Request::RemoveNode { ip },
        Command::Node(NodeCommand::List) => Request::ListNodes,
        Command::Nat(NatCommand::List) => Request::ListNat,
        Command::Map(MapCommand::List { map } | MapCommand::Get { map, .. }) => list_request(map),
        Command::Map(MapCommand::Flush { map: MapName::Nat }) => Request::FlushNat,
        Command::Map(MapCommand::Flush { .. }) => {
            bail!(
                "only the NAT table can be flushed; endpoints and nodes have their own del commands"
            )
        }
        Command::Counters => Request::Counters,
        Command::Status => Request::Status,
    };
    let mut response = api::call(&cli.socket, &request)?;
    if let Some(address) = address_filter {
        retain_address(&mut response, &address);
    }
    if let Response::Error { message } = &response {
        bail!("the agent refused the request: {message}");
    }
    match cli.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&response)?),
        Output::Text => print_text(&response),
    }
    Ok(())
}

fn list_request(map: MapName) -> Request {
    match map {
        MapName::Endpoints => Request::ListEndpoints,
        MapName::Nodes => Request::ListNodes,
        MapName::Nat => Request::ListNat,
    }
}

/// Keeps the entries of a listing that involve `address`.
fn retain_address(response: &mut Response, address: &str) {
    let involves = |field: &str| field == address || field.split(':').next() == Some(address);
    match response {
        Response::Endpoints { endpoints } => {
            endpoints.retain(|entry| entry.ip.to_string() == address)
        }
        Response::Nodes { nodes } => nodes.retain(|node| node.ip.to_string() == address),
        Response::Nat { connections } => connections.retain(|connection| {
            involves(&connection.pod) || involves(&connection.node) || involves(&connection.remote)
        }),
        _ => {}
    }
}

fn print_text(response: &Response) {
    match response {
        Response::Done { changed: true } => println!("done"),
        Response::Done { changed: false } => println!("nothing to do"),
        Response::Endpoints { endpoints } => {
            println!(
                "{:<16} {:<16} {:>7} {:<18} {:<18} ATTACHED",
                "IP", "INTERFACE", "IFINDEX", "POD MAC", "HOST MAC"
            );
            for endpoint in endpoints {
                println!(
                    "{:<16} {:<16} {:>7} {:<18} {:<18} {}",
                    endpoint.ip,
                    endpoint.interface.as_deref().unwrap_or("(gone)"),
                    endpoint.host_ifindex,
                    endpoint.pod_mac,
                    endpoint.host_mac,
                    if endpoint.attached { "yes" } else { "no" },
                );
            }
        }
        Response::Counters { counters } => {
            println!("{:<28} {:>14} {:>16}", "COUNTER", "PACKETS", "BYTES");
            for counter in counters {
                println!(
                    "{:<28} {:>14} {:>16}",
                    counter.name, counter.packets, counter.bytes
                );
            }
        }
        Response::Nodes { nodes } => {
            println!("{:<16} POD CIDR", "NODE IP");
            for node in nodes {
                println!("{:<16} {}", node.ip, node.pod_cidr);
            }
        }
        Response::Status { status } => {
            let show = |value: Option<String>| value.unwrap_or_else(|| "-".into());
            println!(
                "node IP:       {}",
                show(status.node_ip.map(|ip| ip.to_string()))
            );
            println!(
                "pod CIDR:      {}",
                show(status.pod_cidr.map(|cidr| cidr.to_string()))
            );
            println!(
                "cluster CIDR:  {}",
                show(status.cluster_cidr.map(|cidr| cidr.to_string()))
            );
            println!("uplink:        {}", show(status.uplink.clone()));
            match &status.tunnel_interface {
                Some(device) => println!(
                    "tunnel:        VXLAN in BPF on the uplink, VNI {}, UDP {} (GRO device {device})",
                    status.vni, status.vxlan_port
                ),
                None => println!("tunnel:        off (no node.uplink)"),
            }
            println!(
                "pod MTU:       {}",
                show(status.pod_mtu.map(|mtu| mtu.to_string()))
            );
            println!("endpoints:     {}", status.endpoints);
            println!("remote nodes:  {}", status.remote_nodes);
            match &status.nat_port_range {
                Some(range) => println!(
                    "masquerade:    to the node IP, ports {range}; {} of {} NAT entries, {} expired",
                    status.nat_entries, status.nat_capacity, status.nat_expired_total
                ),
                None => println!("masquerade:    off"),
            }
            println!("sources:       {}", status.sources.join(", "));
            println!(
                "agent:         up {} s, node map reconciled {} s ago",
                status.uptime_seconds, status.last_reconcile_seconds_ago
            );
            println!("maps:");
            for map in &status.maps {
                println!(
                    "  {:<14} {:>7} of {:>7}",
                    map.name, map.entries, map.capacity
                );
            }
            println!("attached:");
            for attachment in &status.attachments {
                println!("  {attachment}");
            }
        }
        Response::Nat { connections } => {
            println!(
                "{:<5} {:<21} {:<21} {:<21} {:<12} IDLE",
                "PROTO", "POD", "NODE", "REMOTE", "STATE"
            );
            for connection in connections {
                println!(
                    "{:<5} {:<21} {:<21} {:<21} {:<12} {}s",
                    connection.protocol,
                    connection.pod,
                    connection.node,
                    connection.remote,
                    connection.state,
                    connection.idle_seconds
                );
            }
        }
        Response::Event { event } => {
            println!("{} {} -> {}", event.reason, event.source, event.destination)
        }
        Response::Error { message } => println!("error: {message}"),
    }
}
