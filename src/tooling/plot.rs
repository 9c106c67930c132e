//! Line charts as hand-written SVG, for `warpnorm bench --plot`.
//!
//! A benchmark chart needs a handful of polylines, two axes and a legend; a plotting crate
//! would add far more to the build than that. The output is a self-contained SVG 1.1
//! document (no scripts, no external fonts) that browsers and image viewers open as is.
//!
//! ```
//! use warpnorm::tooling::plot::{Chart, Dash, Series};
//! let chart = Chart {
//!     title: "LayerNorm forward".into(),
//!     x_label: "row length D".into(),
//!     y_label: "GB/s".into(),
//!     log2_x: true,
//!     series: vec![Series {
//!         label: "bf16 fwd".into(),
//!         points: vec![(128.0, 900.0), (4096.0, 2800.0)],
//!         color: 0,
//!         dash: Dash::Solid,
//!     }],
//! };
//! assert!(chart.to_svg().starts_with("<svg"));
//! ```

use std::fmt::Write as _;

/// Line style of a series, so series of one colour (one dtype) stay distinguishable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dash {
    Solid,
    Dashed,
    Dotted,
    DashDot,
}

impl Dash {
    fn attribute(self) -> &'static str {
        match self {
            Dash::Solid => "",
            Dash::Dashed => r#" stroke-dasharray="8 4""#,
            Dash::Dotted => r#" stroke-dasharray="2 3""#,
            Dash::DashDot => r#" stroke-dasharray="8 3 2 3""#,
        }
    }
}

/// One line: `(x, y)` points in data units, drawn in the order given.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    /// Index into a fixed palette of distinguishable colours (wraps around).
    pub color: usize,
    pub dash: Dash,
}

/// A line chart: linear y from 0, linear or log2 x.
#[derive(Clone, Debug, PartialEq)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// Row lengths span 2^7..2^16: on a linear axis everything below 8192 would collapse.
    pub log2_x: bool,
    pub series: Vec<Series>,
}

/// Colour-blind-safe palette (Okabe-Ito), dark enough on white.
const PALETTE: [&str; 7] = [
    "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000",
];

const WIDTH: f64 = 860.0;
const HEIGHT: f64 = 500.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 200.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;

impl Chart {
    /// The chart as an SVG document. Points that are not finite (or not positive on a log
    /// axis) are left out; a chart without any point still renders, with empty axes.
    pub fn to_svg(&self) -> String {
        let series: Vec<(&Series, Vec<(f64, f64)>)> = self
            .series
            .iter()
            .map(|s| {
                let pts = s
                    .points
                    .iter()
                    .copied()
                    .filter(|&(x, y)| x.is_finite() && y.is_finite())
                    .filter(|&(x, _)| !self.log2_x || x > 0.0)
                    .map(|(x, y)| (if self.log2_x { x.log2() } else { x }, y))
                    .collect();
                (s, pts)
            })
            .collect();
        let all = || series.iter().flat_map(|(_, p)| p.iter().copied());
        let (mut x0, mut x1) = all()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), (x, _)| {
                (lo.min(x), hi.max(x))
            });
        if x0 > x1 {
            (x0, x1) = (0.0, 1.0);
        }
        if x1 - x0 < 1e-9 {
            (x0, x1) = (x0 - 0.5, x1 + 0.5);
        }
        let y_max = nice_ceiling(all().map(|(_, y)| y).fold(0.0, f64::max));

        let plot_w = WIDTH - LEFT - RIGHT;
        let plot_h = HEIGHT - TOP - BOTTOM;
        let px = |x: f64| LEFT + (x - x0) / (x1 - x0) * plot_w;
        let py = |y: f64| TOP + plot_h - (y.max(0.0) / y_max) * plot_h;

        let mut svg = String::new();
        let _ = writeln!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(
            svg,
            r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#
        );
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="22" text-anchor="middle" font-size="15" font-weight="bold">{}</text>"#,
            LEFT + plot_w / 2.0,
            escape(&self.title)
        );

        // Y grid and ticks: 5 steps of a round number.
        for i in 0..=5 {
            let v = y_max * f64::from(i) / 5.0;
            let y = py(v);
            let _ = writeln!(
                svg,
                r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e0e0e0"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                LEFT + plot_w,
                LEFT - 6.0,
                y + 4.0,
                format_number(v)
            );
        }
        // X ticks: powers of two on a log axis (at most ~12 labels), else 5 steps.
        for (pos, label) in x_ticks(x0, x1, self.log2_x) {
            let x = px(pos);
            let _ = writeln!(
                svg,
                r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#f0f0f0"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                TOP + plot_h,
                TOP + plot_h + 18.0,
                escape(&label)
            );
        }
        let _ = writeln!(
            svg,
            r#"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="black"/>"#
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            LEFT + plot_w / 2.0,
            HEIGHT - 18.0,
            escape(&self.x_label)
        );
        let _ = writeln!(
            svg,
            r#"<text x="18" y="{:.1}" text-anchor="middle" transform="rotate(-90 18 {:.1})">{}</text>"#,
            TOP + plot_h / 2.0,
            TOP + plot_h / 2.0,
            escape(&self.y_label)
        );

        for (i, (s, pts)) in series.iter().enumerate() {
            let color = PALETTE[s.color % PALETTE.len()];
            if !pts.is_empty() {
                let path: Vec<String> = pts
                    .iter()
                    .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
                    .collect();
                let _ = writeln!(
                    svg,
                    r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"{}/>"#,
                    path.join(" "),
                    s.dash.attribute()
                );
                for &(x, y) in pts {
                    let _ = writeln!(
                        svg,
                        r#"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{color}"/>"#,
                        px(x),
                        py(y)
                    );
                }
            }
            let ly = TOP + 10.0 + 18.0 * i as f64;
            let lx = LEFT + plot_w + 16.0;
            let _ = writeln!(
                svg,
                r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="2"{}/><text x="{}" y="{}">{}</text>"#,
                lx + 28.0,
                s.dash.attribute(),
                lx + 34.0,
                ly + 4.0,
                escape(&s.label)
            );
        }
        svg.push_str("</svg>\n");
        svg
    }
}

/// The smallest 1, 2 or 5 x 10^k at or above `v` (1 for nothing positive), so the y axis
/// ends on a round number.
fn nice_ceiling(v: f64) -> f64 {
    if !(v > 0.0 && v.is_finite()) {
        return 1.0;
    }
    let magnitude = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|&c| c >= v * (1.0 - 1e-12))
        .unwrap_or(10.0 * magnitude)
}

/// Tick positions (in axis units) and labels.
fn x_ticks(x0: f64, x1: f64, log2: bool) -> Vec<(f64, String)> {
    if log2 {
        let (lo, hi) = (x0.ceil() as i64, x1.floor() as i64);
        let step = ((hi - lo) / 12 + 1).max(1);
        (lo..=hi)
            .step_by(step as usize)
            .map(|e| (e as f64, format_power_of_two(e)))
            .collect()
    } else {
        (0..=5)
            .map(|i| {
                let v = x0 + (x1 - x0) * f64::from(i) / 5.0;
                (v, format_number(v))
            })
            .collect()
    }
}

/// `2^e` the way row lengths are written: 128, 1Ki, 64Ki, 1Mi.
fn format_power_of_two(e: i64) -> String {
    match e {
        i64::MIN..=-1 => format!("2^{e}"),
        0..=9 => (1u64 << e).to_string(),
        10..=19 => format!("{}Ki", 1u64 << (e - 10)),
        20..=29 => format!("{}Mi", 1u64 << (e - 20)),
        _ => format!("2^{e}"),
    }
}

/// A tick label: integers as such, otherwise up to two decimals.
fn format_number(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{}", v.round() as i64)
    } else {
        format!("{v:.2}")
    }
}

/// Escapes text for SVG content and attributes.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart(series: Vec<Series>) -> Chart {
        Chart {
            title: "t <&>".into(),
            x_label: "D".into(),
            y_label: "GB/s".into(),
            log2_x: true,
            series,
        }
    }

    fn line(label: &str, points: Vec<(f64, f64)>) -> Series {
        Series {
            label: label.into(),
            points,
            color: 1,
            dash: Dash::Dashed,
        }
    }

    #[test]
    fn renders_a_document_with_one_polyline_per_series() {
        let svg = chart(vec![
            line(
                "bf16 fwd",
                vec![(128.0, 100.0), (1024.0, 900.0), (65536.0, 2900.0)],
            ),
            line("copy", vec![(128.0, 3000.0), (65536.0, 3100.0)]),
        ])
        .to_svg();
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert_eq!(svg.matches("<circle").count(), 5);
        assert!(svg.contains("t &lt;&amp;&gt;") && !svg.contains("t <&>"));
        assert!(svg.contains(">64Ki<") && svg.contains(">128<"));
        // The y axis ends on a round number above the largest value.
        assert!(svg.contains(">5000<"));
        assert!(svg.contains("stroke-dasharray"));
    }

    #[test]
    fn empty_single_point_and_non_finite_inputs_still_render() {
        for series in [
            vec![],
            vec![line("one", vec![(4096.0, 10.0)])],
            vec![line(
                "bad",
                vec![(f64::NAN, 1.0), (0.0, 2.0), (8.0, f64::INFINITY)],
            )],
        ] {
            let svg = chart(series).to_svg();
            assert!(svg.starts_with("<svg") && svg.contains("</svg>"));
            assert!(!svg.contains("NaN") && !svg.contains("inf"));
        }
    }

    #[test]
    fn round_axis_ends() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(2900.0), 5000.0);
        assert_eq!(nice_ceiling(1000.0), 1000.0);
        assert_eq!(nice_ceiling(1001.0), 2000.0);
        assert_eq!(nice_ceiling(0.03), 0.05);
        assert_eq!(format_power_of_two(7), "128");
        assert_eq!(format_power_of_two(20), "1Mi");
    }
}
