//! NetworkPolicy's cost per packet: from-pod's run time (`BPF_PROG_TEST_RUN`)
//! on a pod isolated for egress, with 10 to 10,000 allowed entries, against
//! the same program with no pod of the node isolated. The packet is a TCP
//! segment of a connection the policy has no record of that opens nothing:
//! judged in full (a class lookup, the entry lookups) at every run, and
//! allowed by the last entry, so it is forwarded as before.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::bail;
use dataplane_common::{ip_protocol, names};
use dataplane_tests::test_run::{Fixture, POD_A_IP, POD_B_IP, TC_ACT_REDIRECT, ipv4_packet, tcp};
use dataplane_user::model::policy::{Allowed, CompiledPolicy, Direction, Subject};
use ipnetwork::IpNetwork;

use crate::{
    Progress, Settings,
    measure::{Comparison, Measure},
    scale::thousands,
};

/// Allowed entries of the isolated pod, fewest first (the first is the
/// reference of flatness).
const ENTRIES: [u32; 4] = [10, 100, 1_000, 10_000];

/// The port the measured segment goes to.
const PORT: u16 = 80;

/// Progress steps `run` reports.
pub fn steps(settings: &Settings) -> usize {
    settings.min_repetitions * (1 + ENTRIES.len())
}

/// The flatness rows (each entry count against the fewest), and a note of
/// what the verdict costs against no pod isolated.
pub fn run(
    settings: &Settings,
    progress: &mut Progress,
) -> anyhow::Result<(Vec<Comparison>, String)> {
    let mut fixture = Fixture::new()?;
    // An ACK of a connection nobody recorded: judged at every run.
    let packet = ipv4_packet(
        POD_A_IP,
        POD_B_IP,
        ip_protocol::TCP,
        &tcp((POD_A_IP, 40_000), (POD_B_IP, PORT), TCP_ACK),
    );
    let mut unpoliced = Vec::new();
    let mut policed = vec![Vec::new(); ENTRIES.len()];
    for repetition in 1..=settings.min_repetitions {
        set_policy(&mut fixture, None)?;
        let cost = program_cost(&mut fixture, &packet, settings.program_runs)?;
        progress.step(
            &format!("run {repetition} policy: no pod isolated"),
            &Measure::ProgramCost.show(cost),
        );
        unpoliced.push(cost);
        for (entries, into) in ENTRIES.iter().zip(&mut policed) {
            set_policy(&mut fixture, Some(*entries))?;
            let cost = program_cost(&mut fixture, &packet, settings.program_runs)?;
            progress.step(
                &format!(
                    "run {repetition} policy: pod isolated, {} entries",
                    thousands(*entries)
                ),
                &Measure::ProgramCost.show(cost),
            );
            into.push(cost);
        }
    }
    let mut comparisons = Vec::new();
    for (entries, costs) in ENTRIES.iter().zip(&policed).skip(1) {
        let mut flat = Comparison::new(
            format!(
                "policy: a new connection judged, pod isolated for egress, {} entries",
                thousands(*entries)
            ),
            format!("same program, {} entries", ENTRIES[0]),
            Measure::ProgramCost,
        );
        flat.dataplane = costs.clone();
        flat.reference = policed[0].clone();
        comparisons.push(flat);
    }
    let note = format!(
        "Policy verdict: from-pod takes {:.0} ns (median) on a connection it judges for a pod \
         isolated with {} entries, {:.0} ns on the same packet with no pod of the node \
         isolated (nothing looked up).",
        median(&policed[0]),
        ENTRIES[0],
        median(&unpoliced)
    );
    Ok((comparisons, note))
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or_default()
}

const TCP_ACK: u8 = 0x10;

/// Pod A isolated for egress with `entries` allowed entries (the last one
/// allowing pod B at `PORT`), or no pod isolated.
fn set_policy(fixture: &mut Fixture, entries: Option<u32>) -> anyhow::Result<()> {
    fixture.set_policy(&entries.map_or_else(CompiledPolicy::default, isolating_pod_a))
}

/// Pod A isolated for egress with `entries` entries, each to its own /32
/// peer (its own class); the last is pod B's.
fn isolating_pod_a(entries: u32) -> CompiledPolicy {
    let mut compiled = CompiledPolicy::default();
    let subject = Subject {
        id: 1,
        ingress: false,
        egress: true,
    };
    compiled.subjects.insert(POD_A_IP.into(), subject);
    for class in 1..=entries {
        let peer = if class == entries {
            POD_B_IP
        } else {
            Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 200, 0, 0)) + class)
        };
        compiled
            .classes
            .insert(IpNetwork::from(IpAddr::from(peer)), class);
        compiled.allowed.insert(Allowed {
            subject: subject.id,
            direction: Direction::Egress,
            class,
            protocol: ip_protocol::TCP,
            port: PORT,
            port_bits: 16,
        });
    }
    compiled
}

/// The from-pod program's average run time on `packet`, in nanoseconds.
fn program_cost(fixture: &mut Fixture, packet: &[u8], runs: u32) -> anyhow::Result<f64> {
    let (average, verdict) = fixture.run_time(names::FROM_POD_PROGRAM, packet, runs)?;
    if verdict != TC_ACT_REDIRECT {
        let drops: Vec<String> = fixture
            .maps
            .counters()?
            .into_iter()
            .filter(|total| total.counter.is_drop() && total.value.packets > 0)
            .map(|total| total.counter.name().to_string())
            .collect();
        bail!(
            "the from-pod program did not forward the benchmark packet (verdict {verdict}, \
             drops: {})",
            drops.join(", ")
        );
    }
    Ok(average.as_nanos() as f64)
}
