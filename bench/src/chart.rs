//! The ratios as a horizontal bar chart (SVG): one bar per table row,
//! coloured by verdict, with its 95% confidence interval as a whisker.

use std::path::Path;

use anyhow::anyhow;
use plotters::{
    prelude::*,
    style::text_anchor::{HPos, Pos, VPos},
};

use crate::measure::{Comparison, Ratio, Verdict};

/// Ratios above this are drawn to it (their number is still written).
const AXIS_LIMIT: f64 = 4.0;
const ROW_PIXELS: u32 = 24;
const LABEL_PIXELS: u32 = 820;
const WIDTH: u32 = 1500;

pub fn draw(comparisons: &[Comparison], file: &Path) -> anyhow::Result<()> {
    let rows = comparisons.len();
    let height = 110 + ROW_PIXELS * u32::try_from(rows)?;
    let root = SVGBackend::new(file, (WIDTH, height)).into_drawing_area();
    let plot = |error| anyhow!("drawing {}: {error:?}", file.display());
    root.fill(&WHITE).map_err(plot)?;
    let intervals: Vec<Ratio> = comparisons.iter().map(Comparison::ratio).collect();
    let axis_end = intervals
        .iter()
        .map(|interval| interval.value)
        .filter(|ratio| ratio.is_finite())
        .fold(1.5, f64::max)
        .min(AXIS_LIMIT)
        .ceil();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "this dataplane vs the kernel path it replaces (ratio, > 1 = dataplane better)",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(LABEL_PIXELS)
        .build_cartesian_2d(0f64..axis_end, 0f64..rows as f64)
        .map_err(plot)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .disable_y_axis()
        .max_light_lines(1)
        .x_desc("ratio")
        .draw()
        .map_err(plot)?;
    let label_style = TextStyle::from(("sans-serif", 12)).pos(Pos::new(HPos::Right, VPos::Center));
    let value_style = TextStyle::from(("sans-serif", 12)).pos(Pos::new(HPos::Left, VPos::Center));
    for (index, (comparison, interval)) in comparisons.iter().zip(&intervals).enumerate() {
        let ratio = &interval.value;
        // The first row at the top, as in the table.
        let bottom = (rows - 1 - index) as f64;
        let color = match interval.verdict() {
            Verdict::Behind => RGBColor(200, 60, 50),
            Verdict::Tie | Verdict::Undecided => RGBColor(150, 150, 150),
            Verdict::Ahead => RGBColor(60, 150, 80),
        };
        let drawn = if ratio.is_finite() {
            ratio.min(axis_end)
        } else {
            0.0
        };
        chart
            .draw_series([Rectangle::new(
                [(0.0, bottom + 0.15), (drawn, bottom + 0.85)],
                color.filled(),
            )])
            .map_err(plot)?;
        if interval.low.is_finite() && interval.high.is_finite() {
            let whisker = [
                (interval.low.min(axis_end), bottom + 0.5),
                (interval.high.min(axis_end), bottom + 0.5),
            ];
            chart
                .draw_series([PathElement::new(whisker, BLACK.stroke_width(2))])
                .map_err(plot)?;
        }
        // A bar cut at the axis end carries its number inside, in white.
        let value = if *ratio > axis_end {
            Text::new(
                format!("{ratio:.1} →"),
                (drawn - axis_end / 200.0, bottom + 0.5),
                value_style
                    .pos(Pos::new(HPos::Right, VPos::Center))
                    .color(&WHITE),
            )
        } else {
            Text::new(
                format!("{ratio:.2}"),
                (drawn + axis_end / 200.0, bottom + 0.5),
                value_style.clone(),
            )
        };
        chart.draw_series([value]).map_err(plot)?;
        let (x, y) = chart.backend_coord(&(0.0, bottom + 0.5));
        let label = format!(
            "{} · {} · vs {}",
            comparison.scenario,
            comparison.measure.name(),
            comparison.baseline
        );
        root.draw(&Text::new(label, (x - 8, y), label_style.clone()))
            .map_err(plot)?;
    }
    chart
        .draw_series([PathElement::new(
            vec![(1.0, 0.0), (1.0, rows as f64)],
            BLACK.stroke_width(1),
        )])
        .map_err(plot)?;
    root.present().map_err(plot)?;
    Ok(())
}
