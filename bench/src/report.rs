//! The results as a Markdown table (ratios first) and as JSON.

use std::path::Path;

use anyhow::Context as _;

use crate::{
    Settings,
    measure::{Comparison, EQUIVALENCE, Measure, Verdict, median},
    paths::CpuBreakdown,
};

/// Writes results.md and results.json into `directory`; returns the Markdown.
pub fn write(
    comparisons: &[Comparison],
    breakdown: &[CpuBreakdown],
    notes: &[String],
    settings: &Settings,
    directory: &Path,
) -> anyhow::Result<String> {
    let machine = machine();
    let pairs = comparisons
        .iter()
        .map(|comparison| comparison.ratio().pairs);
    let (fewest, most) = (pairs.clone().min().unwrap_or(0), pairs.max().unwrap_or(0));
    let mut markdown = format!(
        "{machine}; {fewest} to {most} interleaved repetitions, {} s per traffic run.\n\
         Ratio = how many times better this dataplane is than the baseline (> 1 better): \
         the geometric mean over repetitions of dataplane / baseline for rates and \
         baseline / dataplane for latencies, CPU time and durations, each pair measured in \
         the same repetition, with its 95% confidence interval. A row is a **tie** when \
         its interval holds 1.0 or lies within ±{:.0}%; **behind** rows are bold.\n\n\
         | scenario | measure | baseline | ratio [95% interval] | verdict | dataplane | baseline value |\n\
         |---|---|---|---|---|---|---|\n",
        settings.seconds,
        EQUIVALENCE * 100.0
    );
    let mut rows = Vec::new();
    for comparison in comparisons {
        let ratio = comparison.ratio();
        let verdict = ratio.verdict();
        let interval = if ratio.pairs < 2 {
            format!("{:.2}", ratio.value)
        } else {
            format!("{:.2} [{:.2}, {:.2}]", ratio.value, ratio.low, ratio.high)
        };
        let (shown_ratio, shown_verdict) = if verdict == Verdict::Behind {
            (format!("**{interval}**"), format!("**{}**", verdict.name()))
        } else {
            (interval, verdict.name().to_string())
        };
        let measure = comparison.measure;
        let (ours, theirs) = (median(&comparison.dataplane), median(&comparison.reference));
        markdown.push_str(&format!(
            "| {} | {} | {} | {shown_ratio} | {shown_verdict} | {} | {} |\n",
            comparison.scenario,
            measure.name(),
            comparison.baseline,
            measure.show(ours),
            measure.show(theirs),
        ));
        rows.push(serde_json::json!({
            "scenario": comparison.scenario,
            "measure": measure.name(),
            "baseline": comparison.baseline,
            "ratio": ratio.value,
            "ratio_low": ratio.low,
            "ratio_high": ratio.high,
            "pairs": ratio.pairs,
            "verdict": verdict.name(),
            "unit": measure.unit(),
            "higher_is_better": measure.higher_is_better(),
            "dataplane_median": ours,
            "baseline_median": theirs,
            "dataplane_runs": comparison.dataplane,
            "baseline_runs": comparison.reference,
        }));
    }
    if !breakdown.is_empty() {
        markdown.push_str(
            "\nWhere this dataplane's CPU time goes (TCP 1 stream, all CPUs, medians):\n\n\
             | path | CPU time per GB | of which in its BPF programs |\n|---|---|---|\n",
        );
    }
    let mut cpu = Vec::new();
    for path in breakdown {
        markdown.push_str(&format!(
            "| {} | {} | {} ({:.0}%) |\n",
            path.path,
            Measure::CpuPerGigabyte.show(path.total),
            Measure::BpfPerGigabyte.show(path.programs),
            100.0 * path.programs / path.total
        ));
        cpu.push(serde_json::json!({
            "path": path.path,
            "cpu_seconds_per_gb": path.total,
            "bpf_program_seconds_per_gb": path.programs,
        }));
    }
    for note in notes {
        markdown.push_str(&format!("\n{note}\n"));
    }
    let json = serde_json::json!({
        "machine": machine,
        "min_repetitions": settings.min_repetitions,
        "max_repetitions": settings.max_repetitions,
        "seconds_per_run": settings.seconds,
        "rows": rows,
        "cpu_breakdown": cpu,
        "notes": notes,
    });
    std::fs::write(directory.join("results.md"), &markdown).context("writing results.md")?;
    std::fs::write(
        directory.join("results.json"),
        serde_json::to_string_pretty(&json)?,
    )
    .context("writing results.json")?;
    Ok(markdown)
}

/// Kernel release and CPU count: what the numbers depend on most.
fn machine() -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").map_or_else(
        |_| "unknown".to_string(),
        |release| release.trim().to_string(),
    );
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    format!("Linux {kernel}, {cpus} CPUs")
}
