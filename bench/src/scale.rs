//! Scale: per-packet cost and latency as the tables fill (this dataplane's
//! maps, the kernel's routes), and the time to program remote nodes.

use std::{net::Ipv4Addr, path::PathBuf, time::Instant};

use anyhow::{Context as _, bail};
use dataplane_common::{Endpoint, names};
use dataplane_tests::{
    cluster::add_flannel_device,
    netns::Netns,
    test_run::{
        Fixture, LOOPBACK_IFINDEX, NODE_IP, POD_A_IP, POD_B_IP, REMOTE_POD_IP, TC_ACT_REDIRECT,
        udp_frame,
    },
};
use dataplane_user::{
    loader,
    maps::{Maps, ProgrammedNode},
    model::NodePath,
};
use ipnetwork::Ipv4Network;

use crate::{
    Clusters, Progress, Settings,
    measure::{Comparison, Measure},
    paths::{OTHER_NODE, Placement, SAME_NODE, latency, pod_to_pod},
};

/// Table sizes measured, smallest first.
#[derive(Debug, Clone, Copy)]
struct Level {
    endpoints: u32,
    remote_nodes: u32,
}

const LEVELS: [Level; 3] = [
    Level {
        endpoints: 10,
        remote_nodes: 2,
    },
    Level {
        endpoints: 1_000,
        remote_nodes: 500,
    },
    Level {
        endpoints: 50_000,
        remote_nodes: 5_000,
    },
];

/// What every node of the clusters (and the private copy) starts with.
const REAL_ENDPOINTS: u32 = 2;
const REAL_REMOTE_NODES: u32 = 1;

/// Progress steps `run` reports (announced before any run starts).
pub fn steps(settings: &Settings) -> usize {
    const LATENCY_RUNS: usize = 4;
    const PACKETS: usize = 2;
    LEVELS.len() * (1 + settings.min_repetitions * (LATENCY_RUNS + PACKETS))
}

pub fn run(
    clusters: &Clusters,
    settings: &Settings,
    progress: &mut Progress,
) -> anyhow::Result<Vec<Comparison>> {
    // Latency at scale: client and server on two CPUs where there are two.
    let placement = *Placement::all(false)
        .last()
        .expect("one placement at least");
    let mut comparisons = Vec::new();
    // A private copy of the programs and maps to run from-pod on, filled
    // like the nodes' maps.
    let mut private = Fixture::new()?;
    let mut private_filled = Filled::default();
    let mut ours = clusters
        .dataplane
        .nodes
        .iter()
        .map(|node| DataplaneTables::pinned(node.bpf_root()?))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut theirs = clusters
        .kernel
        .nodes
        .iter()
        .map(|node| KernelNode::open(&node.netns))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let packets = [
        ("same-node", pod_a_datagram(POD_B_IP)),
        ("cross-node", pod_a_datagram(REMOTE_POD_IP)),
    ];
    let mut smallest_level_costs: Option<Vec<Vec<f64>>> = None;
    for level in LEVELS {
        let fake = Filled {
            endpoints: level.endpoints - REAL_ENDPOINTS,
            nodes: level.remote_nodes - REAL_REMOTE_NODES,
        };
        let started = Instant::now();
        fill(&mut private.maps, &mut private_filled, fake)?;
        for tables in &mut ours {
            fill(&mut tables.maps, &mut tables.filled, fake)?;
        }
        for tables in &mut theirs {
            tables.fill(fake)?;
        }
        let scenario = format!(
            "scale {} endpoints / {} nodes",
            thousands(level.endpoints),
            thousands(level.remote_nodes)
        );
        let placed = format!("{scenario} ({})", placement.label());
        progress.step(
            &format!("{scenario}: maps and kernel routes of 4 nodes filled"),
            &format!("{:.1} s", started.elapsed().as_secs_f64()),
        );
        let baseline = "kernel, as many routes + flannel entries";
        let mut latencies = Vec::new();
        for (direction, _) in DIRECTIONS {
            for measure in [Measure::LatencyP50, Measure::LatencyP99] {
                latencies.push(Comparison::new(
                    format!("{placed}, {direction}"),
                    baseline,
                    measure,
                ));
            }
        }
        let mut costs = vec![Vec::new(); packets.len()];
        for repetition in 1..=settings.min_repetitions {
            for (index, (direction, to)) in DIRECTIONS.into_iter().enumerate() {
                for (cluster, ours) in [(&clusters.dataplane, true), (&clusters.kernel, false)] {
                    let path = pod_to_pod(direction, cluster, (0, 0), to);
                    let (p50, p99) = latency(&path, settings.duration(), placement)?;
                    for (row, value) in latencies[2 * index..2 * index + 2]
                        .iter_mut()
                        .zip([p50, p99])
                    {
                        if ours {
                            row.dataplane.push(value);
                        } else {
                            row.reference.push(value);
                        }
                    }
                    progress.step(
                        &format!(
                            "run {repetition} {scenario}, {direction} latency, {}",
                            if ours { "dataplane" } else { "kernel" }
                        ),
                        &format!("p50 {p50:.1} µs, p99 {p99:.1} µs"),
                    );
                }
            }
            for ((direction, packet), into) in packets.iter().zip(&mut costs) {
                let cost = program_cost(&mut private, packet, settings.program_runs)?;
                progress.step(
                    &format!("run {repetition} {scenario}, from-pod program, {direction} packet"),
                    &Measure::ProgramCost.show(cost),
                );
                into.push(cost);
            }
        }
        comparisons.extend(latencies);
        match &smallest_level_costs {
            None => smallest_level_costs = Some(costs),
            Some(smallest) => {
                for ((direction, _), (cost, reference)) in
                    packets.iter().zip(costs.into_iter().zip(smallest))
                {
                    let mut comparison = Comparison::new(
                        format!("{scenario}, {direction}"),
                        format!(
                            "same program, {} endpoints / {} nodes",
                            LEVELS[0].endpoints, LEVELS[0].remote_nodes
                        ),
                        Measure::ProgramCost,
                    );
                    comparison.dataplane = cost;
                    comparison.reference = reference.clone();
                    comparisons.push(comparison);
                }
            }
        }
    }
    Ok(comparisons)
}

const DIRECTIONS: [(&str, (usize, usize)); 2] =
    [("same-node", SAME_NODE), ("cross-node", OTHER_NODE)];

pub(crate) fn seconds_taken(work: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    let started = Instant::now();
    work()?;
    Ok(started.elapsed().as_secs_f64())
}

/// How many fake entries a set of tables holds.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Filled {
    pub endpoints: u32,
    pub nodes: u32,
}

/// Fake endpoint `index`: 10.250.0.0/16 onwards, never addressed by traffic.
fn fake_endpoint(index: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 250, 0, 0)) + index)
}

/// Fake remote node `index`: its IP (198.18.0.0/15), its /24 pod CIDR in
/// 10.0.0.0/11 (apart from the clusters' 10.244.0.0/16) and its VTEP MAC.
fn fake_node(index: u32) -> (Ipv4Addr, Ipv4Network, [u8; 6]) {
    let [_, _, high, low] = index.to_be_bytes();
    let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + index);
    let pod_cidr =
        Ipv4Network::new(Ipv4Addr::new(10, high, low, 0), 24).expect("a /24 is a valid prefix");
    (ip, pod_cidr, [0x02, 0xfe, 0, 0, high, low])
}

/// A node agent's pinned maps, filled with fake entries.
struct DataplaneTables {
    maps: Maps,
    filled: Filled,
}

impl DataplaneTables {
    fn pinned(bpf_root: PathBuf) -> anyhow::Result<Self> {
        Ok(Self {
            maps: pinned_maps(&bpf_root)?,
            filled: Filled::default(),
        })
    }
}

/// The maps an agent pinned under `bpf_root`.
pub fn pinned_maps(bpf_root: &std::path::Path) -> anyhow::Result<Maps> {
    let mut ebpf = loader::load(&loader::pin_directory(bpf_root))
        .with_context(|| format!("opening the maps pinned under {}", bpf_root.display()))?;
    // The maps keep their own descriptors; the programs are not needed.
    Ok(Maps::take_from(&mut ebpf)?)
}

/// Adds fake entries to `maps` until `target` of them are there.
fn fill(maps: &mut Maps, filled: &mut Filled, target: Filled) -> anyhow::Result<()> {
    for index in filled.endpoints..target.endpoints {
        let fake = Endpoint {
            host_ifindex: LOOPBACK_IFINDEX,
            pod_mac: [0x02, 0xfd, 0, 0, 0, 1],
            host_mac: [0x02, 0xfd, 0, 0, 0, 2],
        };
        maps.insert_endpoint(fake_endpoint(index).into(), fake)?;
    }
    for index in filled.nodes..target.nodes {
        let (ip, pod_cidr, _) = fake_node(index);
        let node = ProgrammedNode {
            pod_cidr,
            pod_cidr_ipv6: None,
            path: NodePath::Tunnel,
            mac: None,
        };
        maps.insert_remote_node(ip, node)?;
    }
    *filled = target;
    Ok(())
}

/// The from-pod program's average run time on `packet`, in nanoseconds.
fn program_cost(fixture: &mut Fixture, packet: &[u8], runs: u32) -> anyhow::Result<f64> {
    let (average, verdict) = fixture.run_time(names::FROM_POD_PROGRAM, packet, runs)?;
    if verdict != TC_ACT_REDIRECT {
        bail!("the from-pod program did not forward the benchmark packet (verdict {verdict})");
    }
    Ok(average.as_nanos() as f64)
}

/// One node's kernel tables: /32 routes out of its first pod's veth, flannel
/// entries on its `flannel.1`.
pub(crate) struct KernelNode<'a> {
    netns: &'a Netns,
    pod_veth: Option<u32>,
    vxlan: u32,
    filled: Filled,
}

impl<'a> KernelNode<'a> {
    fn open(netns: &'a Netns) -> anyhow::Result<Self> {
        Ok(Self {
            pod_veth: Some(netns.index_of("vp0")?),
            vxlan: netns.index_of("flannel.1")?,
            netns,
            filled: Filled::default(),
        })
    }

    /// `netns` with nothing but flannel's vxlan device.
    pub(crate) fn vxlan_only(netns: &'a Netns) -> anyhow::Result<Self> {
        // An uplink for flannel's device to sit on (this kernel has no dummy links).
        netns.add_veth("eth0", netns, "eth0p")?;
        netns.set_up("eth0")?;
        add_flannel_device(netns, NODE_IP)?;
        Ok(Self {
            pod_veth: None,
            vxlan: netns.index_of("flannel.1")?,
            netns,
            filled: Filled::default(),
        })
    }

    pub(crate) fn fill(&mut self, target: Filled) -> anyhow::Result<()> {
        if let Some(pod_veth) = self.pod_veth {
            for index in self.filled.endpoints..target.endpoints {
                self.netns.add_pod_route(pod_veth, fake_endpoint(index))?;
            }
        }
        for index in self.filled.nodes..target.nodes {
            let (ip, pod_cidr, mac) = fake_node(index);
            self.netns
                .add_flannel_node(self.vxlan, ip, pod_cidr, mac.into())?;
        }
        self.filled = target;
        Ok(())
    }
}

/// An IPv4 UDP datagram with 64 bytes of payload from pod A to `destination`,
/// as it leaves the pod (to its gateway's MAC).
fn pod_a_datagram(destination: Ipv4Addr) -> Vec<u8> {
    udp_frame((POD_A_IP, 40_000), (destination, 5_201), &[0; 64])
}

/// 50000 as "50,000".
pub(crate) fn thousands(value: u32) -> String {
    let digits = value.to_string();
    let mut grouped = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    grouped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_entries_stay_clear_of_the_clusters_addresses() {
        let cluster: Ipv4Network = "10.244.0.0/16".parse().unwrap();
        let largest = LEVELS[LEVELS.len() - 1];
        for index in [0, largest.remote_nodes - 1] {
            let (ip, pod_cidr, _) = fake_node(index);
            assert!(!cluster.overlaps(pod_cidr));
            assert!(ip.octets()[0] == 198 && ip.octets()[1] == 18);
        }
        let last = fake_endpoint(largest.endpoints - 1);
        assert!(!cluster.contains(last) && last.octets()[1] == 250);
        assert_ne!(fake_node(0).1, fake_node(256).1);
    }

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(2), "2");
        assert_eq!(thousands(5_000), "5,000");
        assert_eq!(thousands(50_000), "50,000");
        assert_eq!(thousands(1_000_000), "1,000,000");
    }
}
