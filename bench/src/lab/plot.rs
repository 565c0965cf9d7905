//! The report's plots, as SVG (no font files needed): grouped horizontal
//! bars with the runs' range as whiskers (TCP throughput, packet rate),
//! and percentile curves of round-trip latency.

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::latency::CurvePoint;
use super::stats::Spread;

/// Series colours, one per bar group or contender.
const COLOURS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];
/// Pixels right of the bars for the legend.
const LEGEND_WIDTH: u32 = 150;
/// Width of a bar chart, without the names' room.
const BAR_CHART_WIDTH: u32 = 780;
const FONT: &str = "sans-serif";

/// The colour of series `i`.
fn colour(i: usize) -> RGBColor {
    COLOURS[i % COLOURS.len()]
}

fn plot_error<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing a plot: {e:?}")
}

/// One row of a bar chart: a contender and its figure per series.
pub struct BarRow<'a> {
    /// The contender's name.
    pub name: &'a str,
    /// One figure per series (`None`: not measured).
    pub values: Vec<Option<Spread>>,
}

/// A horizontal bar chart: one band per row, one bar per series, the
/// median as the bar and the range over runs as a whisker.
pub fn bar_chart(
    path: &Path,
    title: &str,
    unit: &str,
    series: &[&str],
    rows: &[BarRow],
) -> Result<()> {
    let n = rows.len().max(1);
    let height = 90 + 34 * n as u32 * series.len().max(1) as u32 / 2 + 30 * n as u32;
    // Room left of the bars for the longest name (about 8 px a character).
    let name_width = 24
        + 8 * rows
            .iter()
            .map(|r| r.name.chars().count())
            .max()
            .unwrap_or(0) as u32;
    let root = SVGBackend::new(path, (name_width + BAR_CHART_WIDTH, height)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let top = rows
        .iter()
        .flat_map(|r| r.values.iter().flatten())
        .map(|s| s.max.max(s.median))
        .fold(0.0, f64::max);
    let x_max = if top > 0.0 { top * 1.15 } else { 1.0 };
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 20))
        .margin(12)
        .margin_left(name_width)
        .margin_right(LEGEND_WIDTH)
        .x_label_area_size(40)
        .build_cartesian_2d(0f64..x_max, 0f64..n as f64)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .light_line_style(WHITE)
        .y_labels(0)
        .x_desc(unit)
        .label_style((FONT, 13))
        .draw()
        .map_err(plot_error)?;
    let band = 0.8 / series.len().max(1) as f64;
    // Row 0 at the top.
    let y_of =
        |row: usize, k: usize| (n - 1 - row) as f64 + 0.1 + band * (series.len() - 1 - k) as f64;
    for k in 0..series.len() {
        let colour = colour(k);
        let bars = rows.iter().enumerate().filter_map(|(row, r)| {
            let s = r.values.get(k).copied().flatten()?;
            let y = y_of(row, k);
            Some(Rectangle::new(
                [(0.0, y + band * 0.1), (s.median, y + band * 0.9)],
                colour.filled(),
            ))
        });
        chart.draw_series(bars).map_err(plot_error)?;
        for (row, r) in rows.iter().enumerate() {
            let Some(s) = r.values.get(k).copied().flatten() else {
                continue;
            };
            let y = y_of(row, k) + band / 2.0;
            if s.runs > 1 {
                chart
                    .draw_series(std::iter::once(PathElement::new(
                        vec![(s.min, y), (s.max, y)],
                        BLACK.stroke_width(1),
                    )))
                    .map_err(plot_error)?;
            }
            let label = EmptyElement::at((s.max.max(s.median), y))
                + Text::new(
                    format_value(s.median),
                    (6, 0),
                    TextStyle::from((FONT, 12).into_font()).pos(Pos::new(HPos::Left, VPos::Center)),
                );
            chart
                .draw_series(std::iter::once(label))
                .map_err(plot_error)?;
        }
    }
    let names = TextStyle::from((FONT, 14).into_font()).pos(Pos::new(HPos::Right, VPos::Center));
    for (row, r) in rows.iter().enumerate() {
        let (_, py) = chart.backend_coord(&(0.0, (n - 1 - row) as f64 + 0.5));
        root.draw(&Text::new(
            r.name.to_string(),
            (name_width as i32 - 8, py),
            names.clone(),
        ))
        .map_err(plot_error)?;
    }
    // The legend goes right of the plotting area, clear of the bars.
    let x = (name_width + BAR_CHART_WIDTH - LEGEND_WIDTH) as i32 + 4;
    let legend = TextStyle::from((FONT, 13).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
    for (k, name) in series.iter().enumerate() {
        let y = 60 + 24 * k as i32;
        root.draw(&Rectangle::new(
            [(x, y - 6), (x + 14, y + 6)],
            colour(k).filled(),
        ))
        .map_err(plot_error)?;
        root.draw(&Text::new(name.to_string(), (x + 20, y), legend.clone()))
            .map_err(plot_error)?;
    }
    root.present().map_err(plot_error)
}

/// A figure with three significant digits or so.
fn format_value(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// One panel of the latency plot: a title and a curve per contender.
pub struct LatencyPanel<'a> {
    /// The panel's title.
    pub title: &'a str,
    /// Contender name and curve (the colour follows its index).
    pub curves: Vec<(&'a str, usize, &'a [CurvePoint])>,
}

/// Percentile curves side by side: x in "nines" (90 %, 99 %, 99.9 % …),
/// y the round trip in µs on a log scale.
pub fn latency_chart(path: &Path, title: &str, panels: &[LatencyPanel]) -> Result<()> {
    let root = SVGBackend::new(path, (1100, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let root = root.titled(title, (FONT, 20)).map_err(plot_error)?;
    let areas = root.split_evenly((1, panels.len().max(1)));
    for (area, panel) in areas.iter().zip(panels) {
        latency_panel(area, panel)?;
    }
    root.present().map_err(plot_error)
}

fn latency_panel(area: &DrawingArea<SVGBackend, Shift>, panel: &LatencyPanel) -> Result<()> {
    let points = panel.curves.iter().flat_map(|(_, _, c)| c.iter());
    let (mut lo, mut hi, mut right) = (f64::MAX, 0.0f64, 1.0f64);
    for p in points {
        lo = lo.min(p.us);
        hi = hi.max(p.us);
        right = right.max(p.nines);
    }
    if hi <= 0.0 {
        lo = 1.0;
        hi = 10.0;
    }
    let mut chart = ChartBuilder::on(area)
        .caption(panel.title, (FONT, 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(
            0f64..right + 0.1,
            ((lo * 0.8).max(0.1)..hi * 1.5).log_scale(),
        )
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_labels(right.floor() as usize + 1)
        .x_label_formatter(&|x| nines_label(*x))
        .y_label_formatter(&|y| format_value(*y))
        .light_line_style(WHITE)
        .x_desc("percentile (the last point: the maximum)")
        .y_desc("round trip, µs")
        .label_style((FONT, 12))
        .draw()
        .map_err(plot_error)?;
    for (name, index, curve) in &panel.curves {
        let colour = colour(*index);
        chart
            .draw_series(LineSeries::new(
                curve.iter().map(|p| (p.nines, p.us)),
                colour.stroke_width(2),
            ))
            .map_err(plot_error)?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], colour.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font((FONT, 12))
        .draw()
        .map_err(plot_error)
}

/// The percentile a whole number of nines stands for (0 → 0 %, 1 → 90 %,
/// 3 → 99.9 %); nothing between whole numbers.
fn nines_label(nines: f64) -> String {
    if (nines - nines.round()).abs() > 1e-6 {
        return String::new();
    }
    match nines.round() as i32 {
        0 => "0%".into(),
        1 => "90%".into(),
        2 => "99%".into(),
        k => format!("99.{}%", "9".repeat((k - 2) as usize)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_nines() {
        assert_eq!(nines_label(0.0), "0%");
        assert_eq!(nines_label(1.0), "90%");
        assert_eq!(nines_label(2.0), "99%");
        assert_eq!(nines_label(3.0), "99.9%");
        assert_eq!(nines_label(4.0), "99.99%");
        assert_eq!(nines_label(2.5), "");
    }

    #[test]
    fn formats_values() {
        assert_eq!(format_value(1234.6), "1235");
        assert_eq!(format_value(12.345), "12.3");
        assert_eq!(format_value(1.2345), "1.23");
        assert_eq!(format_value(0.12345), "0.123");
    }

    #[test]
    fn draws_both_kinds() {
        let dir = std::env::temp_dir().join(format!("bl-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bars = dir.join("bars.svg");
        bar_chart(
            &bars,
            "TCP",
            "Gbit/s",
            &["1 stream", "4 streams"],
            &[
                BarRow {
                    name: "kernel",
                    values: vec![Spread::of([10.0, 12.0, 11.0]), Spread::of([13.0])],
                },
                BarRow {
                    name: "podswitch",
                    values: vec![Spread::of([2.0]), None],
                },
            ],
        )
        .unwrap();
        let svg = std::fs::read_to_string(&bars).unwrap();
        assert!(svg.contains("podswitch") && svg.contains("4 streams") && svg.contains("11.0"));
        let curve = [
            CurvePoint {
                percentile: 50.0,
                nines: 0.3,
                us: 40.0,
            },
            CurvePoint {
                percentile: 99.0,
                nines: 2.0,
                us: 90.0,
            },
        ];
        let lat = dir.join("latency.svg");
        latency_chart(
            &lat,
            "RTT",
            &[LatencyPanel {
                title: "idle",
                curves: vec![("kernel", 0, &curve[..])],
            }],
        )
        .unwrap();
        assert!(std::fs::read_to_string(&lat).unwrap().contains("kernel"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
