//! Start-up: everything the config asks for is checked first, then the
//! programs are loaded and attached and the state owner takes over.

use std::time::Instant;

use anyhow::{Context as _, bail};
use dataplane_common::{MAX_REMOTE_NODES, VXLAN_OVERHEAD, names};
use tracing::{info, warn};

use crate::{
    config::{Config, PortRange},
    dataplane::Dataplane,
    interfaces::{Interface, Interfaces, VXLAN_DEVICE, VxlanSettings},
    loader,
    model::{HostInterface, NodeSet},
    nat::Timeouts,
    state::{NatTable, NodeFacts, Owner, ServiceTables, UplinkFacts},
    upgrade::{self, PreviousLayout},
};

/// The smallest MTU IPv4 allows (RFC 791).
const MIN_IPV4_MTU: u32 = 68;

/// The tunnel as the config and the node make it.
pub struct Tunnel {
    uplink: Interface,
    settings: VxlanSettings,
}

/// Resolves and checks what the config asks of this node without changing
/// anything: the uplink, the node IP, the tunnel MTU, the NAT port range and
/// the remote nodes against the resolved node IP.
pub async fn check(
    config: &Config,
    interfaces: &Interfaces,
) -> anyhow::Result<(NodeFacts, Option<Tunnel>)> {
    let mut node = config.node.clone();
    let mut uplink = None;
    let mut uplink_networks = Vec::new();
    let tunnel = tunnel(config, interfaces).await?;
    if let Some(tunnel) = &tunnel {
        node.node_ip = Some(tunnel.settings.local);
        uplink = Some(UplinkFacts {
            ifindex: tunnel.uplink.index,
            mac: tunnel.uplink.mac,
            mtu: tunnel.uplink.mtu,
            tunnel_mtu: tunnel.settings.mtu,
        });
        uplink_networks = interfaces.ipv4_networks(tunnel.uplink.index).await?;
        if node.node_ipv6.is_none() {
            node.node_ipv6 = interfaces
                .global_ipv6_addresses(tunnel.uplink.index)
                .await?
                .first()
                .copied();
        }
    }
    if node.pod_cidr_ipv6.is_some() && node.node_ipv6.is_none() {
        warn!(
            "node.pod_cidr_ipv6 is set but the node has no global IPv6 address on its uplink \
             (nor node.node_ipv6): pods' IPv6 packets the node cannot forward are dropped \
             without an ICMPv6 error until the uplink has one"
        );
    }
    let masquerading = config.nat.masquerade && node.uplink.is_some();
    if masquerading {
        check_port_range(config.nat.port_range)?;
    }
    let facts = NodeFacts {
        settings: node,
        node_ipv6_configured: config.node.node_ipv6.is_some(),
        uplink,
        uplink_networks,
        masquerading,
        nat: config.nat.clone(),
        host_netns_cookie: crate::netns::current_cookie()
            .context("reading the node namespace's cookie (SO_NETNS_COOKIE)")?,
        sources: [
            Some("config file (watched)".to_string()),
            Some("local API (CLI, CNI plugin)".to_string()),
            Some("node addresses and links (rtnetlink, followed)".to_string()),
            config
                .kubernetes
                .enabled
                .then(|| "Kubernetes Nodes".to_string()),
        ]
        .into_iter()
        .flatten()
        .collect(),
    };
    // The file was checked when parsed, but not against a node IP taken
    // from the uplink, nor against the uplink's networks.
    let mut nodes = NodeSet::default();
    for (index, remote) in config.nodes.iter().enumerate() {
        nodes
            .insert(*remote, &facts.local_facts())
            .map_err(|(field, problem)| anyhow::anyhow!("nodes[{index}].{field}: {problem}"))?;
    }
    if config.nodes.len() > MAX_REMOTE_NODES as usize {
        bail!(
            "nodes: {} listed, the node map holds {MAX_REMOTE_NODES}",
            config.nodes.len()
        );
    }
    // Each endpoint's veth: found missing after attaching, the start
    // failed half done.
    for (index, endpoint) in config.endpoints.iter().enumerate() {
        let found = match &endpoint.interface {
            HostInterface::Name(name) => interfaces.by_name(name).await?,
            HostInterface::Index(index) => interfaces.by_index(*index).await?,
        };
        if found.is_none() {
            bail!(
                "endpoints[{index}].interface: {} does not exist",
                endpoint.interface
            );
        }
    }
    Ok((facts, tunnel))
}

/// One agent's claim on its uplink: an abstract Unix socket named by the
/// uplink's index, which belongs to the network namespace and goes with the
/// process (no file to leave behind).
pub type UplinkClaim = std::os::unix::net::UnixListener;

/// Claims `uplink` for this agent: a second agent on it, whatever its
/// `bpf_root` and socket, would attach a second program set beside the
/// first's. Refused before anything is attached.
fn claim_uplink(uplink: &Interface) -> anyhow::Result<UplinkClaim> {
    use std::os::linux::net::SocketAddrExt as _;
    let name = format!("dataplane-uplink-{}", uplink.index);
    let address = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    std::os::unix::net::UnixListener::bind_addr(&address).map_err(|error| {
        if error.kind() == std::io::ErrorKind::AddrInUse {
            anyhow::anyhow!(
                "another agent runs on the uplink {} (it holds @{name}): stop it first",
                uplink.name
            )
        } else {
            anyhow::Error::new(error).context(format!("claiming the uplink {}", uplink.name))
        }
    })
}

/// Holds `<api_socket>.lock` for as long as the agent runs: a second agent
/// given the same socket (whatever its `bpf_root`) is refused before it
/// changes anything, instead of taking the socket over. Also finds a socket
/// path that can never work (its directory not creatable, the path a
/// directory) before anything is attached.
pub fn lock_api_socket(socket: &std::path::Path) -> anyhow::Result<AgentLock> {
    if let Some(parent) = socket.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("agent.api_socket: creating {}", parent.display()))?;
    }
    if socket.is_dir() {
        bail!("agent.api_socket: {} is a directory", socket.display());
    }
    let mut lock_path = socket.as_os_str().to_owned();
    lock_path.push(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("agent.api_socket: opening {}", lock_path.display()))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(
        |(_, errno)| {
            anyhow::anyhow!(
                "another agent serves the API socket {} ({errno}): stop it first, or give \
                 this one its own agent.api_socket",
                socket.display()
            )
        },
    )
}

async fn tunnel(config: &Config, interfaces: &Interfaces) -> anyhow::Result<Option<Tunnel>> {
    let Some(uplink_name) = &config.node.uplink else {
        return Ok(None);
    };
    let Some(uplink) = interfaces.by_name(uplink_name).await? else {
        bail!("node.uplink: interface {uplink_name} does not exist");
    };
    let node_ip = match config.node.node_ip {
        Some(node_ip) => node_ip,
        None => *interfaces
            .ipv4_addresses(uplink.index)
            .await?
            .first()
            .with_context(|| {
                format!("uplink {uplink_name} has no IPv4 address; set node.node_ip")
            })?,
    };
    let mtu = uplink
        .mtu
        .checked_sub(VXLAN_OVERHEAD)
        .filter(|mtu| *mtu >= MIN_IPV4_MTU)
        .with_context(|| format!("uplink MTU {} is too small for VXLAN", uplink.mtu))?;
    Ok(Some(Tunnel {
        uplink,
        settings: VxlanSettings {
            local: node_ip,
            port: config.node.vxlan_port,
            mtu,
        },
    }))
}

/// Refuses a SNAT port range that overlaps the node's own ephemeral ports:
/// the host's connections from the node IP would collide with translated ones.
pub fn check_port_range(range: PortRange) -> anyhow::Result<()> {
    let path = "/proc/sys/net/ipv4/ip_local_port_range";
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let mut ports = text.split_whitespace().map(str::parse::<u16>);
    let (Some(Ok(min)), Some(Ok(max))) = (ports.next(), ports.next()) else {
        bail!("{path} holds {text:?}, not two port numbers");
    };
    let local = PortRange { min, max };
    if range.overlaps(local) {
        bail!(
            "nat.port_range {range} overlaps net.ipv4.ip_local_port_range {local}: the node's own \
             connections would collide with masqueraded ones; choose a range outside it"
        );
    }
    Ok(())
}

/// Held for as long as the agent runs: one agent per `bpf_root`.
pub type AgentLock = nix::fcntl::Flock<std::fs::File>;

/// Takes the `bpf_root` for this agent; a second agent on it would swap
/// the programs and the API socket under the first one.
pub fn lock_bpf_root(bpf_root: &std::path::Path) -> anyhow::Result<AgentLock> {
    loader::ensure_bpffs_mounted()?;
    std::fs::create_dir_all(bpf_root)
        .with_context(|| format!("creating {}", bpf_root.display()))?;
    let directory =
        std::fs::File::open(bpf_root).with_context(|| format!("opening {}", bpf_root.display()))?;
    nix::fcntl::Flock::lock(directory, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(
        |(_, errno)| {
            anyhow::anyhow!(
                "another agent is running on {} ({errno}): stop it first, or give this one \
                 its own agent.bpf_root and agent.api_socket",
                bpf_root.display()
            )
        },
    )
}

/// Checks the config, then loads the programs, sets up the tunnel, adopts
/// endpoints pinned by an earlier run and applies the config file's
/// endpoints and nodes. Returns the owner, ready to serve, and the claim on
/// the uplink, held for as long as the agent runs.
pub async fn start(config: &Config) -> anyhow::Result<(Owner, Option<UplinkClaim>)> {
    let interfaces = Interfaces::connect()?;
    let (facts, tunnel) = check(config, &interfaces).await?;
    loader::refuse_newer_layouts(&config.agent.bpf_root)?;
    let claim = tunnel
        .as_ref()
        .map(|tunnel| claim_uplink(&tunnel.uplink))
        .transpose()?;

    let pin_dir = loader::pin_directory(&config.agent.bpf_root);
    let previous = PreviousLayout::find(&config.agent.bpf_root);
    let fresh = !pin_dir.join(names::ENDPOINTS_MAP).exists();
    let ebpf = loader::load(&pin_dir)?;
    info!(pin_dir = %pin_dir.display(), "eBPF programs loaded");
    // Make before break: the previous layout's state first, then its links.
    if let Some(previous) = &previous {
        upgrade::carry_state(previous, &pin_dir, fresh)
            .with_context(|| format!("carrying map layout v{}'s state", previous.version))?;
    }
    let mut dataplane = Dataplane::new(ebpf, &pin_dir)?;
    // This build's config before its programs run: they read it from their
    // first packet. Services an earlier agent programmed keep being
    // translated meanwhile.
    // Policy stays as pinned until the agent's sources have it whole.
    dataplane.set_node_config(facts.node_config(
        !dataplane.programmed_services().is_empty(),
        dataplane.serves_outside_local(),
        dataplane.policy_switch(),
    ))?;
    let swapping = Instant::now();
    let taken_over = dataplane.take_over_links(previous.as_ref().map(|p| p.links_dir()).as_deref());
    info!(
        links = taken_over,
        took_ms = swapping.elapsed().as_secs_f64() * 1000.0,
        "this build's programs swapped into the pinned links"
    );
    if let Some(previous) = &previous {
        upgrade::carry_connections(previous, &pin_dir).with_context(|| {
            format!(
                "carrying map layout v{}'s newest connections",
                previous.version
            )
        })?;
    }
    if let Some(Tunnel { uplink, settings }) = tunnel {
        let (vxlan, created) = interfaces.ensure_vxlan(VXLAN_DEVICE, settings).await?;
        dataplane.attach_tunnel(&vxlan, &uplink)?;
        info!(node_ip = %settings.local, uplink = %uplink.name, vni = config.node.vni,
              port = settings.port, tunnel_mtu = settings.mtu, routing = %config.node.routing,
              device = if created { "created" } else { "kept" }, "VXLAN tunnel ready");
    }
    // Without them only the node's own sockets miss Services: not a reason
    // to leave the pods without a dataplane.
    let attached = match &config.agent.cgroup_root {
        Some(cgroup) => Ok(cgroup.clone()),
        None => loader::cgroup2_root().map_err(anyhow::Error::from),
    }
    .and_then(|cgroup| {
        dataplane.attach_host_sockets(&cgroup)?;
        Ok(cgroup)
    });
    match attached {
        Ok(cgroup) => {
            info!(cgroup = %cgroup.display(), "socket hooks attached for the node's namespace");
        }
        Err(error) => warn!(
            "the node's own sockets will not reach Services: the socket hooks are not attached: \
             {error:#}"
        ),
    }
    dataplane.set_no_masquerade(&config.nat.no_masquerade_cidrs)?;

    let nat = NatTable::new(
        dataplane
            .take_nat()
            .context("the NAT map was taken before the agent started")?,
        Timeouts::from(&config.nat),
        u64::from(config.nat.pod_connection_limit()),
    );
    let service_tables = ServiceTables::open(&pin_dir, Timeouts::from(&config.nat))
        .context("the Service connection tables")?;
    let mut owner = Owner::new(facts, interfaces, dataplane, nat, service_tables);
    owner.adopt_pinned_endpoints().await?;
    owner
        .reprogram_nodes()
        .await
        .context("the pinned nodes, reached as node.routing says")?;
    owner.resync_host().await?;
    owner
        .apply_config_file(
            config.nodes.clone(),
            &config.endpoints,
            config.services.clone(),
        )
        .await
        .context("the config file's nodes, endpoints and services")?;
    for stale in owner.remove_stale_links() {
        info!(pin = %stale.display(), "removed a pinned link nothing uses any more");
    }
    for old in loader::remove_other_layout_versions(&config.agent.bpf_root) {
        warn!(
            pins = %old.display(),
            "removed the programs and maps of another map layout version; \
             connections tracked there start afresh"
        );
    }
    Ok((owner, claim))
}
