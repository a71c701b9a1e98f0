//! What is measured, in which unit, and which direction is better.

/// One number a scenario yields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Measure {
    TcpOneStream,
    TcpFourStreams,
    UdpSmallPackets,
    LatencyP50,
    LatencyP99,
    ConnectionsPerSecond,
    CpuPerGigabyte,
    /// The part of `CpuPerGigabyte` spent in this dataplane's programs.
    BpfPerGigabyte,
    /// Average run time of the from-pod program on one packet (BPF_PROG_TEST_RUN).
    ProgramCost,
    /// Wall time to program a set of remote nodes.
    ProgrammingTime,
}

impl Measure {
    /// Everything measured on every traffic path.
    pub const ON_EVERY_PATH: [Measure; 7] = [
        Measure::TcpOneStream,
        Measure::TcpFourStreams,
        Measure::UdpSmallPackets,
        Measure::LatencyP50,
        Measure::LatencyP99,
        Measure::ConnectionsPerSecond,
        Measure::CpuPerGigabyte,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Measure::TcpOneStream => "iperf3 TCP, 1 stream",
            Measure::TcpFourStreams => "iperf3 TCP, 4 streams",
            Measure::UdpSmallPackets => "iperf3 UDP 64 B, packets/s received",
            Measure::LatencyP50 => "TCP request/response 64 B, p50",
            Measure::LatencyP99 => "TCP request/response 64 B, p99",
            Measure::ConnectionsPerSecond => "new TCP connections/s, 4 clients",
            Measure::CpuPerGigabyte => "CPU time per GB (TCP 1 stream)",
            Measure::BpfPerGigabyte => "BPF program time per GB (TCP 1 stream)",
            Measure::ProgramCost => "BPF from-pod run time per packet",
            Measure::ProgrammingTime => "time to program",
        }
    }

    /// The unit of the raw values, as written to JSON.
    pub fn unit(self) -> &'static str {
        match self {
            Measure::TcpOneStream | Measure::TcpFourStreams => "bit/s",
            Measure::UdpSmallPackets => "packets/s",
            Measure::LatencyP50 | Measure::LatencyP99 => "microseconds",
            Measure::ConnectionsPerSecond => "connections/s",
            Measure::CpuPerGigabyte | Measure::BpfPerGigabyte => "CPU seconds/GB",
            Measure::ProgramCost => "nanoseconds",
            Measure::ProgrammingTime => "seconds",
        }
    }

    pub fn higher_is_better(self) -> bool {
        matches!(
            self,
            Measure::TcpOneStream
                | Measure::TcpFourStreams
                | Measure::UdpSmallPackets
                | Measure::ConnectionsPerSecond
        )
    }

    pub fn show(self, value: f64) -> String {
        match self {
            Measure::TcpOneStream | Measure::TcpFourStreams => {
                format!("{:.2} Gbit/s", value / 1e9)
            }
            Measure::UdpSmallPackets => format!("{:.0} kpps", value / 1e3),
            Measure::LatencyP50 | Measure::LatencyP99 => format!("{value:.1} µs"),
            Measure::ConnectionsPerSecond => format!("{value:.0} conn/s"),
            Measure::CpuPerGigabyte | Measure::BpfPerGigabyte => format!("{value:.3} CPU s/GB"),
            Measure::ProgramCost => format!("{value:.0} ns"),
            Measure::ProgrammingTime => format!("{:.0} ms", value * 1e3),
        }
    }
}

/// This dataplane against one baseline on one measure, every run kept.
#[derive(Debug, Clone)]
pub struct Comparison {
    pub scenario: String,
    pub baseline: String,
    pub measure: Measure,
    pub dataplane: Vec<f64>,
    pub reference: Vec<f64>,
}

impl Comparison {
    pub fn new(scenario: impl Into<String>, baseline: impl Into<String>, measure: Measure) -> Self {
        Self {
            scenario: scenario.into(),
            baseline: baseline.into(),
            measure,
            dataplane: Vec::new(),
            reference: Vec::new(),
        }
    }

    /// How many times better this dataplane is than the baseline (> 1:
    /// better), from the medians: rates divide ours by theirs, times and
    /// costs theirs by ours.
    pub fn advantage(&self) -> f64 {
        let (ours, theirs) = (median(&self.dataplane), median(&self.reference));
        if self.measure.higher_is_better() {
            ours / theirs
        } else {
            theirs / ours
        }
    }
}

pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advantage_is_above_one_when_the_dataplane_is_better_either_way() {
        let mut throughput = Comparison::new("s", "b", Measure::TcpOneStream);
        throughput.dataplane = vec![12.0, 10.0, 11.0];
        throughput.reference = vec![5.0, 6.0, 4.0];
        assert_eq!(throughput.advantage(), 2.2);
        let mut latency = Comparison::new("s", "b", Measure::LatencyP50);
        latency.dataplane = vec![20.0];
        latency.reference = vec![30.0];
        assert_eq!(latency.advantage(), 1.5);
    }

    #[test]
    fn median_of_nothing_is_not_a_number() {
        assert!(median(&[]).is_nan());
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
    }
}
