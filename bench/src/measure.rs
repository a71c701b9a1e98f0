//! What is measured, in which unit, and which direction is better; ratios
//! with their confidence intervals.

use statrs::distribution::{ContinuousCDF as _, StudentsT};

/// One number a scenario yields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Measure {
    TcpOneStream,
    TcpFourStreams,
    UdpSmallPackets,
    LatencyP50,
    LatencyP99,
    /// Time for `connect` on a new connection: its first packet's way.
    ConnectP50,
    ConnectP99,
    ConnectionsPerSecond,
    CpuPerGigabyte,
    /// The part of `CpuPerGigabyte` spent in this dataplane's programs.
    BpfPerGigabyte,
    /// Average run time of the from-pod program on one packet (BPF_PROG_TEST_RUN).
    ProgramCost,
    /// Wall time to program a set of remote nodes.
    ProgrammingTime,
    /// Wall time from one change at a source to the agent having applied it.
    TimePerChange,
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
            Measure::ConnectP50 => "TCP connect (first packet), p50",
            Measure::ConnectP99 => "TCP connect (first packet), p99",
            Measure::ConnectionsPerSecond => "new TCP connections/s, 4 clients",
            Measure::CpuPerGigabyte => "CPU time per GB (TCP 1 stream)",
            Measure::BpfPerGigabyte => "BPF program time per GB (TCP 1 stream)",
            Measure::ProgramCost => "BPF from-pod run time per packet",
            Measure::ProgrammingTime => "time to program",
            Measure::TimePerChange => "time per change, event to map",
        }
    }

    /// The unit of the raw values, as written to JSON.
    pub fn unit(self) -> &'static str {
        match self {
            Measure::TcpOneStream | Measure::TcpFourStreams => "bit/s",
            Measure::UdpSmallPackets => "packets/s",
            Measure::LatencyP50
            | Measure::LatencyP99
            | Measure::ConnectP50
            | Measure::ConnectP99 => "microseconds",
            Measure::ConnectionsPerSecond => "connections/s",
            Measure::CpuPerGigabyte | Measure::BpfPerGigabyte => "CPU seconds/GB",
            Measure::ProgramCost => "nanoseconds",
            Measure::ProgrammingTime | Measure::TimePerChange => "seconds",
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
            Measure::LatencyP50
            | Measure::LatencyP99
            | Measure::ConnectP50
            | Measure::ConnectP99 => format!("{value:.1} µs"),
            Measure::ConnectionsPerSecond => format!("{value:.0} conn/s"),
            Measure::CpuPerGigabyte | Measure::BpfPerGigabyte => format!("{value:.3} CPU s/GB"),
            Measure::ProgramCost => format!("{value:.0} ns"),
            Measure::ProgrammingTime => format!("{:.0} ms", value * 1e3),
            Measure::TimePerChange => format!("{:.1} µs", value * 1e6),
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

    /// Per repetition, how many times better this dataplane was than the
    /// baseline measured in the same repetition (> 1: better): rates divide
    /// ours by theirs, times and costs theirs by ours. Pairing runs of one
    /// repetition cancels what drifts between repetitions on a shared host.
    fn paired_advantages(&self) -> Vec<f64> {
        self.dataplane
            .iter()
            .zip(&self.reference)
            .map(|(ours, theirs)| {
                if self.measure.higher_is_better() {
                    ours / theirs
                } else {
                    theirs / ours
                }
            })
            .collect()
    }

    /// The geometric mean of the paired advantages and its 95% confidence
    /// interval (Student's t on their logarithms).
    pub fn ratio(&self) -> Ratio {
        let logs: Vec<f64> = self.paired_advantages().iter().map(|r| r.ln()).collect();
        let pairs = logs.len();
        let mean = logs.iter().sum::<f64>() / pairs as f64;
        if pairs < 2 {
            return Ratio {
                value: mean.exp(),
                low: f64::NAN,
                high: f64::NAN,
                pairs,
            };
        }
        let variance =
            logs.iter().map(|log| (log - mean).powi(2)).sum::<f64>() / (pairs - 1) as f64;
        let t = StudentsT::new(0.0, 1.0, (pairs - 1) as f64)
            .expect("degrees of freedom are positive")
            .inverse_cdf(0.975);
        let half_width = t * (variance / pairs as f64).sqrt();
        Ratio {
            value: mean.exp(),
            low: (mean - half_width).exp(),
            high: (mean + half_width).exp(),
            pairs,
        }
    }
}

impl Ratio {
    /// Which side of 1.0 the row lies on, if the runs show one.
    pub fn verdict(&self) -> Verdict {
        if self.pairs < 2 {
            Verdict::Undecided
        } else if self.low <= 1.0 && self.high >= 1.0
            || self.low >= 1.0 - EQUIVALENCE && self.high <= 1.0 + EQUIVALENCE
        {
            Verdict::Tie
        } else if self.low > 1.0 {
            Verdict::Ahead
        } else {
            Verdict::Behind
        }
    }

    /// Whether more repetitions would not change what the row says: it is
    /// on one side of 1.0, or a tie within ±`NARROW`.
    pub fn is_settled(&self) -> bool {
        match self.verdict() {
            Verdict::Undecided => false,
            Verdict::Ahead | Verdict::Behind => true,
            Verdict::Tie => self.high / self.low <= (1.0 + NARROW) / (1.0 - NARROW),
        }
    }
}

/// Differences smaller than this (either way) are not claimed: a row whose
/// whole interval lies within ±2% is a tie.
pub const EQUIVALENCE: f64 = 0.02;

/// A tie is settled once its interval is this narrow (±3%).
pub const NARROW: f64 = 0.03;

/// A comparison's ratio with its 95% confidence interval (NaN bounds with
/// fewer than two pairs).
#[derive(Debug, Clone, Copy)]
pub struct Ratio {
    pub value: f64,
    pub low: f64,
    pub high: f64,
    pub pairs: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The interval lies above 1.0: this dataplane is better.
    Ahead,
    /// The interval lies below 1.0.
    Behind,
    /// The interval holds 1.0, or lies within ±`EQUIVALENCE`.
    Tie,
    /// One pair: no interval.
    Undecided,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Ahead => "ahead",
            Verdict::Behind => "behind",
            Verdict::Tie => "tie",
            Verdict::Undecided => "1 run",
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
    fn ratios_are_above_one_when_the_dataplane_is_better_either_way() {
        let mut throughput = Comparison::new("s", "b", Measure::TcpOneStream);
        throughput.dataplane = vec![12.0, 10.0, 11.0];
        throughput.reference = vec![6.0, 5.0, 5.5];
        let ratio = throughput.ratio();
        assert!((ratio.value - 2.0).abs() < 1e-9);
        assert!((ratio.low - 2.0).abs() < 1e-9 && (ratio.high - 2.0).abs() < 1e-9);
        assert_eq!(throughput.ratio().verdict(), Verdict::Ahead);
        let mut latency = Comparison::new("s", "b", Measure::LatencyP50);
        latency.dataplane = vec![20.0];
        latency.reference = vec![30.0];
        assert!((latency.ratio().value - 1.5).abs() < 1e-9);
        assert_eq!(latency.ratio().verdict(), Verdict::Undecided);
    }

    #[test]
    fn an_interval_holding_one_or_within_two_percent_is_a_tie() {
        let mut noisy = Comparison::new("s", "b", Measure::TcpOneStream);
        noisy.dataplane = vec![45.0, 74.0, 42.0, 70.0];
        noisy.reference = vec![62.0, 72.0, 66.0, 60.0];
        let ratio = noisy.ratio();
        assert!(ratio.low < 1.0 && ratio.high > 1.0, "{ratio:?}");
        assert_eq!(noisy.ratio().verdict(), Verdict::Tie);
        assert!(!noisy.ratio().is_settled(), "a wide tie wants more runs");

        let mut close = Comparison::new("s", "b", Measure::TcpOneStream);
        close.dataplane = vec![10.1, 10.12, 10.08, 10.1];
        close.reference = vec![10.0; 4];
        assert_eq!(close.ratio().verdict(), Verdict::Tie);
        assert!(close.ratio().is_settled());

        let mut behind = Comparison::new("s", "b", Measure::CpuPerGigabyte);
        behind.dataplane = vec![0.26, 0.27, 0.28, 0.27];
        behind.reference = vec![0.17, 0.18, 0.17, 0.18];
        assert_eq!(behind.ratio().verdict(), Verdict::Behind);
        assert!(behind.ratio().is_settled());
    }

    #[test]
    fn median_of_nothing_is_not_a_number() {
        assert!(median(&[]).is_nan());
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
    }
}
