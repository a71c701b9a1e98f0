//! The CLI's text output: a table or a block per response.

use dataplane_common::Counter;

use crate::{
    api::{PacketReport, PolicyReport, Response},
    model::{NodePath, policy::Decision},
};

/// `address` or `address:port`.
fn end(address: std::net::Ipv4Addr, port: Option<u16>) -> String {
    match port {
        Some(port) => format!("{address}:{port}"),
        None => address.to_string(),
    }
}

pub fn event_line(event: &PacketReport) -> String {
    let line = format!(
        "{:<28} ifindex {:<5} {:<5} {} -> {}",
        event.reason.to_string(),
        event.ifindex,
        event.protocol.to_string(),
        end(event.source, event.source_port),
        end(event.destination, event.destination_port)
    );
    match &event.policy {
        Some(drop) => format!(
            "{line}  pod {} isolated by {}",
            drop.pod,
            drop.isolated_by.join(",")
        ),
        None => line,
    }
}

pub fn print_text(response: &Response) {
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
                    counter.name.to_string(),
                    counter.packets,
                    counter.bytes
                );
            }
        }
        Response::Nodes { nodes } => {
            println!(
                "{:<16} {:<18} {:<7} {:<18} MAC_CHANGES",
                "NODE IP", "POD CIDRS", "PATH", "MAC"
            );
            for node in nodes {
                // Known for every node on the uplink's network, whatever
                // the path: direct packets from it are taken in any mode.
                let mac = match (node.path, node.mac) {
                    (_, Some(mac)) => mac.to_string(),
                    (NodePath::Direct, None) => "(not learned yet)".into(),
                    (NodePath::Tunnel, None) => "-".into(),
                };
                let cidrs = match node.pod_cidr_ipv6 {
                    Some(ipv6) => format!("{},{ipv6}", node.pod_cidr),
                    None => node.pod_cidr.to_string(),
                };
                println!(
                    "{:<16} {cidrs:<18} {:<7} {mac:<18} {}",
                    node.ip,
                    node.path.to_string(),
                    node.mac_changes
                );
            }
        }
        Response::Status { status } => {
            let show = |value: Option<String>| value.unwrap_or_else(|| "-".into());
            println!(
                "node IP:       {}",
                show(status.node_ip.map(|ip| ip.to_string()))
            );
            if let Some(ip) = status.node_ipv6 {
                println!("node IPv6:     {ip}");
            }
            let pod_cidrs: Vec<String> = [
                status.pod_cidr.map(|cidr| cidr.to_string()),
                status.pod_cidr_ipv6.map(|cidr| cidr.to_string()),
            ]
            .into_iter()
            .flatten()
            .collect();
            println!(
                "pod CIDR:      {}",
                show((!pod_cidrs.is_empty()).then(|| pod_cidrs.join(",")))
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
                "routing:       {}: {} nodes direct, {} through the tunnel",
                status.routing, status.direct_nodes, status.tunnelled_nodes
            );
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
            if let Some(policy) = &status.policy {
                println!("policy:        {policy}");
            }
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
        Response::Nat { connections, pods } => {
            println!(
                "{:<5} {:<21} {:<21} {:<21} {:<12} IDLE",
                "PROTO", "POD", "NODE", "REMOTE", "STATE"
            );
            for connection in connections {
                println!(
                    "{:<5} {:<21} {:<21} {:<21} {:<12} {}s",
                    connection.protocol.to_string(),
                    connection.pod.to_string(),
                    connection.node.to_string(),
                    connection.remote.to_string(),
                    connection.state.to_string(),
                    connection.idle_seconds
                );
            }
            if !pods.is_empty() {
                println!(
                    "\n{:<15} {:>11} {:>7} {:>9} {:>8} {:>14} {:>14} {:>13}",
                    "POD",
                    "CONNECTIONS",
                    "LIMIT",
                    "OPENED",
                    "EVICTED",
                    "REFUSED_SHARE",
                    "REFUSED_PORTS",
                    "REFUSED_FULL"
                );
            }
            for usage in pods {
                println!(
                    "{:<15} {:>11} {:>7} {:>9} {:>8} {:>14} {:>14} {:>13}",
                    usage.holder(),
                    usage.connections,
                    usage.limit,
                    usage.opened,
                    usage.evicted,
                    usage.refused_share,
                    usage.refused_ports,
                    usage.refused_full
                );
            }
        }
        Response::Event { event } => println!("{}", event_line(event)),
        Response::Error { message, .. } => println!("error: {message}"),
        Response::Services { services } => {
            println!(
                "{:<11} {:<24} {:<16} {:<16} BACKENDS",
                "SOURCE", "NAME", "IP", "PORT[:NODE]"
            );
            for entry in services {
                let service = &entry.service;
                for port in &service.ports {
                    println!(
                        "{:<11} {:<24} {:<16} {:<16} {}",
                        format!("{:?}", entry.source).to_lowercase(),
                        service.name,
                        service.ip,
                        match port.node_port {
                            Some(node_port) =>
                                format!("{}/{}:{node_port}", port.port, port.protocol),
                            None => format!("{}/{}", port.port, port.protocol),
                        },
                        if port.backends.is_empty() {
                            "(none: refused)".into()
                        } else {
                            listed(&port.backends, ",")
                        },
                    );
                }
                let more = |what: &str, text: String| {
                    println!("{:<11} {:<24} {what}{text}", "", "");
                };
                if !service.external_ips.is_empty() {
                    more("also on ", listed(&service.external_ips, ", "));
                }
                if !service.load_balancer_ips.is_empty() {
                    more(
                        "load balancer IPs ",
                        listed(&service.load_balancer_ips, ", "),
                    );
                }
                if !service.source_ranges.is_empty() {
                    more(
                        "from source ranges only: ",
                        listed(&service.source_ranges, ", "),
                    );
                }
                if let Some(seconds) = service.session_affinity_seconds {
                    more("session affinity ClientIP, ", format!("{seconds} s"));
                }
                for port in &service.ports {
                    if !port.terminating_backends.is_empty() {
                        let what = format!(
                            "{}/{} terminating (serve where none is ready): ",
                            port.port, port.protocol
                        );
                        more(&what, listed(&port.terminating_backends, ","));
                    }
                }
                for shadowed in &entry.shadowed {
                    more("not served at ", shadowed.clone());
                }
                if let Some(reason) = &entry.refused {
                    more("REFUSED, not programmed: ", reason.clone());
                }
            }
        }
        Response::ServiceMaps {
            frontends,
            connection_entries,
        } => {
            println!("{:<24} {:>6} {:>5} BACKEND", "FRONTEND", "ID", "SLOT");
            for entry in frontends {
                if entry.backends.is_empty() {
                    println!(
                        "{:<24} {:>6} {:>5} (none: refused)",
                        entry.frontend.to_string(),
                        entry.id,
                        "-"
                    );
                }
                for (slot, backend) in entry.backends.iter().enumerate() {
                    println!(
                        "{:<24} {:>6} {:>5} {backend}",
                        entry.frontend.to_string(),
                        entry.id,
                        slot
                    );
                }
            }
            println!("connection entries tracked: {connection_entries}");
        }
        Response::Policies { report } => print_policies(report),
        Response::PolicyVerdict { verdict } => {
            let allowed = if verdict.allowed() {
                "allowed"
            } else {
                "denied"
            };
            println!("{allowed}");
            println!(
                "egress (the source's policies):       {}",
                decision(&verdict.egress)
            );
            println!(
                "ingress (the destination's policies): {}",
                decision(&verdict.ingress)
            );
        }
    }
}

fn decision(decision: &Decision) -> String {
    match decision {
        Decision::NotIsolated => "not isolated".into(),
        Decision::Allowed { policy, rule } => format!("allowed by {policy}, rule {rule}"),
        Decision::Denied { policies } => {
            format!(
                "denied: isolated by {}, no rule allows it",
                policies.join(", ")
            )
        }
    }
}

fn print_policies(report: &PolicyReport) {
    println!("{:<16} {:<32} {:<40} EGRESS", "POD IP", "POD", "INGRESS");
    let isolation = |policies: &[String], rules: usize| {
        if policies.is_empty() {
            "not isolated".to_string()
        } else {
            format!("{} ({rules} rules)", policies.join(","))
        }
    };
    for pod in &report.pods {
        let partial = if report.partial.contains(&pod.ip) {
            "  NOT PROGRAMMED WHOLE: allows less"
        } else if pod.programmed {
            "  programmed"
        } else {
            ""
        };
        println!(
            "{:<16} {:<32} {:<40} {}{partial}",
            pod.ip.to_string(),
            pod.pod
                .as_deref()
                .unwrap_or("(unknown to the policy source)"),
            isolation(&pod.ingress, pod.ingress_rules),
            isolation(&pod.egress, pod.egress_rules),
        );
    }
    for (policy, reason) in &report.refused {
        println!("REFUSED {policy}: {reason}");
    }
    if let Some(problem) = &report.problem {
        println!("PROBLEM {problem}");
    }
    if !report.enforced {
        println!(
            "not enforced yet: the policy source has not listed everything once (the programs \
             keep what they enforced before)"
        );
    }
}

/// Every counter with what it counts (its help text, on one line).
pub fn explain_counters() {
    for counter in Counter::ALL {
        let help = counter
            .help()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        println!("{:<28} {help}", counter.name());
    }
}

/// `items` as text, separated by `separator`.
fn listed<T: std::fmt::Display>(items: &[T], separator: &str) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(separator)
}
