//! The `dataplane` command line: the agent, and the clients of its API.
//! The agent filters listings and the monitor stream; the CLI only renders.

mod endpoints;
mod nodes;
mod policy;
mod render;
mod services;

use std::{net::IpAddr, path::PathBuf};

use anyhow::bail;
use clap::{Parser, Subcommand, ValueEnum};
use ipnetwork::Ipv4Network;

use endpoints::EndpointCommand;
use nodes::NodeCommand;
use policy::PolicyCommand;
use services::ServiceCommand;

use crate::{
    agent,
    api::{self, CounterName, PacketFilter, Request, Response},
    config::DEFAULT_API_SOCKET,
    install,
    model::{HostInterface, family},
};

#[derive(Parser)]
#[command(version, about = "eBPF pod-network dataplane: node agent and CLI")]
pub struct Cli {
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
    /// NetworkPolicy as the agent has it (from Kubernetes): per pod, and the
    /// verdict on one connection.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Add, remove or list Services (ClusterIPs) on a node without Kubernetes.
    #[command(subcommand)]
    Service(ServiceCommand),
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
        reason: Vec<CounterName>,
        /// Also show forwarded packets (traces), within the same per-CPU budget.
        #[arg(long)]
        traces: bool,
        /// Only packets from or to these addresses; all when none given.
        #[arg(long)]
        address: Vec<IpAddr>,
        /// Only packets from or to these ports; all when none given.
        #[arg(long)]
        port: Vec<u16>,
        /// Only packets seen on these interfaces (names or indexes); all when none given.
        #[arg(long)]
        interface: Vec<String>,
    },
    /// Per-path and per-drop-reason packet counters.
    Counters {
        /// Say what each counter counts instead (no agent needed).
        #[arg(long)]
        explain: bool,
    },
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
        #[arg(value_parser = family::parse::<Ipv4Network>, long)]
        pod_cidr: Option<Ipv4Network>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum MapName {
    Endpoints,
    Nodes,
    Nat,
    /// Service frontends with their backends by slot (both maps together).
    Services,
    /// The same listing as `services`: backend slots under their frontend.
    Backends,
}

#[derive(Subcommand)]
enum MapCommand {
    /// Every entry of a map.
    List { map: MapName },
    /// The entries of a map that involve an address (pod, node or remote IP).
    Get { map: MapName, address: IpAddr },
    /// Empty a map; only the NAT table (connections start afresh).
    Flush { map: MapName },
}

#[derive(Subcommand)]
enum NatCommand {
    /// List tracked connections (pod, node address, remote, state, idle
    /// time), then each pod's share of the table and what it was refused.
    List,
}

/// Runs the command line `cli` describes.
pub fn run(cli: Cli) -> anyhow::Result<()> {
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
        Command::Uninstall { config } => return block_on(agent::uninstall(&config)),
        Command::Agent { config } => return block_on(agent::run(&config)),
        Command::Monitor {
            reason,
            traces,
            address,
            port,
            interface,
        } => {
            let filter = PacketFilter {
                reasons: reason,
                addresses: address,
                ports: port,
                interfaces: interface.into_iter().map(host_interface).collect(),
            };
            return monitor(&cli.socket, cli.output, Request::Monitor { traces, filter });
        }
        Command::Endpoint(command) => command.request(),
        Command::Node(command) => command.request().map_err(anyhow::Error::msg)?,
        Command::Policy(command) => command.request(),
        Command::Service(command) => command.request(),
        Command::Nat(NatCommand::List) => Request::ListNat { address: None },
        Command::Map(MapCommand::List { map }) => list_request(map, None),
        Command::Map(MapCommand::Get { map, address }) => list_request(map, Some(address)),
        Command::Map(MapCommand::Flush { map: MapName::Nat }) => Request::FlushNat,
        Command::Map(MapCommand::Flush { .. }) => {
            bail!(
                "only the NAT table can be flushed; endpoints, nodes and services have their own \
                 del commands"
            )
        }
        Command::Counters { explain: true } => {
            render::explain_counters();
            return Ok(());
        }
        Command::Counters { explain: false } => Request::Counters,
        Command::Status => Request::Status,
    };
    let response = api::call(&cli.socket, &request)?;
    if let Response::Error { message, .. } = &response {
        bail!("the agent refused the request: {message}");
    }
    match cli.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&response)?),
        Output::Text => render::print_text(&response),
    }
    Ok(())
}

fn block_on(work: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(work)
}

/// An interface as typed: a number is an index, anything else a name (the
/// agent resolves it in its own network namespace).
pub(super) fn host_interface(interface: String) -> HostInterface {
    match interface.parse() {
        Ok(index) => HostInterface::Index(index),
        Err(_) => HostInterface::Name(interface),
    }
}

/// Prints events as the agent streams them, line by line; a refusal (an
/// unknown interface, say) is an error.
fn monitor(socket: &std::path::Path, output: Output, request: Request) -> anyhow::Result<()> {
    let mut refused = None;
    api::stream(socket, &request, |response| {
        match response {
            Response::Event { event } => match output {
                Output::Json => println!("{}", serde_json::to_string(&event).expect("serializes")),
                Output::Text => println!("{}", render::event_line(&event)),
            },
            Response::Error { message, .. } => {
                refused = Some(message);
                return false;
            }
            _ => {}
        }
        // Flushed line by line, so pipes see events as they happen.
        std::io::Write::flush(&mut std::io::stdout()).is_ok()
    })?;
    match refused {
        Some(message) => bail!("the agent refused the monitor: {message}"),
        None => Ok(()),
    }
}

fn list_request(map: MapName, address: Option<IpAddr>) -> Request {
    match map {
        MapName::Endpoints => Request::ListEndpoints { address },
        MapName::Nodes => Request::ListNodes { address },
        MapName::Nat => Request::ListNat { address },
        MapName::Services | MapName::Backends => Request::ListServiceMaps,
    }
}
