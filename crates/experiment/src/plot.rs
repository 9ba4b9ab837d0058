//! A self-contained SVG line chart (no fonts, scripts or external files): axes with
//! ticks and labels, one polyline per series, and a legend.

use std::fmt::Write;

/// One line of the chart.
#[derive(Debug, Clone)]
pub struct Series {
    pub label: String,
    /// Any SVG colour, e.g. `#1f77b4`.
    pub color: String,
    pub dashed: bool,
    /// `(x, y)` in data units, drawn in the given order.
    pub points: Vec<(f64, f64)>,
}

#[derive(Debug, Clone)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub x_range: (f64, f64),
    pub y_range: (f64, f64),
    pub series: Vec<Series>,
}

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 440.0;
/// The plotting area inside the margins (axis labels left and below, legend right).
const LEFT: f64 = 70.0;
const RIGHT: f64 = 530.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 380.0;
const TICKS: usize = 5;

/// Map `v` from the data interval `from` to the pixel interval `to` (linearly; a
/// degenerate data interval maps to the middle of `to`).
pub fn scale(v: f64, from: (f64, f64), to: (f64, f64)) -> f64 {
    let span = from.1 - from.0;
    if span.abs() < f64::EPSILON {
        return (to.0 + to.1) / 2.0;
    }
    to.0 + (v - from.0) / span * (to.1 - to.0)
}

/// Pixel position of a data point (y grows upwards in data, downwards in SVG).
pub fn to_pixels(chart: &Chart, (x, y): (f64, f64)) -> (f64, f64) {
    (
        scale(x, chart.x_range, (LEFT, RIGHT)),
        scale(y, chart.y_range, (BOTTOM, TOP)),
    )
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Render the chart as an SVG document. Series with non-finite points are drawn
/// without those points.
pub fn svg(chart: &Chart) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r#"<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
        (LEFT + RIGHT) / 2.0,
        escape(&chart.title)
    );
    // Grid lines and tick labels.
    for i in 0..=TICKS {
        let f = i as f64 / TICKS as f64;
        let xv = chart.x_range.0 + f * (chart.x_range.1 - chart.x_range.0);
        let yv = chart.y_range.0 + f * (chart.y_range.1 - chart.y_range.0);
        let (px, py) = to_pixels(chart, (xv, yv));
        let _ = writeln!(
            s,
            r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{BOTTOM}" stroke="#e0e0e0"/>"##
        );
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{py:.1}" x2="{RIGHT}" y2="{py:.1}" stroke="#e0e0e0"/>"##
        );
        let _ = writeln!(
            s,
            r#"<text x="{px:.1}" y="{}" text-anchor="middle">{}</text>"#,
            BOTTOM + 18.0,
            tick(xv)
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 6.0,
            py + 4.0,
            tick(yv)
        );
    }
    let _ = writeln!(
        s,
        r#"<rect x="{LEFT}" y="{TOP}" width="{}" height="{}" fill="none" stroke="black"/>"#,
        RIGHT - LEFT,
        BOTTOM - TOP
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        (LEFT + RIGHT) / 2.0,
        BOTTOM + 42.0,
        escape(&chart.x_label)
    );
    let _ = writeln!(
        s,
        r#"<text x="18" y="{0}" text-anchor="middle" transform="rotate(-90 18 {0})">{1}</text>"#,
        (TOP + BOTTOM) / 2.0,
        escape(&chart.y_label)
    );
    for (k, series) in chart.series.iter().enumerate() {
        let points: Vec<String> = series
            .points
            .iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .map(|&p| {
                let (px, py) = to_pixels(chart, p);
                format!("{px:.1},{py:.1}")
            })
            .collect();
        let dash = if series.dashed {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        let _ = writeln!(
            s,
            r#"<polyline class="series" fill="none" stroke="{}" stroke-width="2"{dash} points="{}"><title>{}</title></polyline>"#,
            escape(&series.color),
            points.join(" "),
            escape(&series.label)
        );
        // Legend entry: a short sample of the line and its label.
        let ly = TOP + 10.0 + 20.0 * k as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{}" y1="{ly}" x2="{}" y2="{ly}" stroke="{}" stroke-width="2"{dash}/>"#,
            RIGHT + 15.0,
            RIGHT + 45.0,
            escape(&series.color)
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}">{}</text>"#,
            RIGHT + 52.0,
            ly + 4.0,
            escape(&series.label)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// A tick label without trailing noise: 0, 0.2, 0.25, 1.
fn tick(v: f64) -> String {
    let text = format!("{v:.2}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart(series: Vec<Series>) -> Chart {
        Chart {
            title: "a < b & c".into(),
            x_label: "λ".into(),
            y_label: "accuracy".into(),
            x_range: (0.0, 1.0),
            y_range: (0.0, 1.0),
            series,
        }
    }

    #[test]
    fn scaling_maps_the_data_corners_to_the_plot_corners() {
        let c = chart(vec![]);
        assert_eq!(to_pixels(&c, (0.0, 0.0)), (LEFT, BOTTOM));
        assert_eq!(to_pixels(&c, (1.0, 1.0)), (RIGHT, TOP));
        let (mx, my) = to_pixels(&c, (0.5, 0.25));
        assert!((mx - (LEFT + RIGHT) / 2.0).abs() < 1e-9);
        assert!((my - (BOTTOM - 0.25 * (BOTTOM - TOP))).abs() < 1e-9);
        // Another data range: the same relative position lands on the same pixel.
        let wide = Chart {
            x_range: (-2.0, 2.0),
            y_range: (10.0, 30.0),
            ..c.clone()
        };
        assert_eq!(to_pixels(&wide, (0.0, 20.0)), (mx, (TOP + BOTTOM) / 2.0));
        assert_eq!(scale(3.0, (1.0, 1.0), (0.0, 10.0)), 5.0);
        assert_eq!(tick(0.2), "0.2");
        assert_eq!(tick(1.0), "1");
        assert_eq!(tick(0.25), "0.25");
    }

    #[test]
    fn one_polyline_per_series_with_escaped_text() {
        let series = |label: &str, dashed| Series {
            label: label.into(),
            color: "#123456".into(),
            dashed,
            points: vec![(0.0, 0.0), (0.5, f64::NAN), (1.0, 1.0)],
        };
        let text = svg(&chart(vec![series("fisher", false), series("x<y", true)]));
        assert_eq!(text.matches("<polyline").count(), 2);
        assert_eq!(text.matches("</polyline>").count(), 2);
        assert!(text.contains("a &lt; b &amp; c") && text.contains("x&lt;y"));
        assert!(!text.contains("a < b"));
        // The NaN point is dropped; the two others are the plot corners.
        assert!(text.contains(&format!(
            r#"points="{LEFT:.1},{BOTTOM:.1} {RIGHT:.1},{TOP:.1}""#
        )));
        assert_eq!(text.matches("stroke-dasharray").count(), 2, "line + legend");
        assert!(text.starts_with("<svg") && text.trim_end().ends_with("</svg>"));
    }
}
