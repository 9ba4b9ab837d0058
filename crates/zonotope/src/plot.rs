//! A hand-written SVG plot of paired final losses: one column per method, one dot per
//! seed, grey lines joining a seed's results, a bar at each median, log-scaled y axis.

use std::fmt::Write;

/// Losses at or below this are drawn on the floor of the log axis.
const FLOOR: f64 = 1e-16;

/// `columns`: (method name, final loss per seed), all the same length.
pub fn paired_losses_svg(title: &str, columns: &[(String, Vec<f64>)]) -> String {
    let (width, height) = (160.0 + 150.0 * columns.len() as f64, 440.0);
    let (left, right, top, bottom) = (80.0, 30.0, 50.0, 60.0);
    let logs: Vec<Vec<f64>> = columns
        .iter()
        .map(|(_, v)| v.iter().map(|x| x.max(FLOOR).log10()).collect())
        .collect();
    let all = logs.iter().flatten().copied();
    let lo = all.clone().fold(f64::INFINITY, f64::min).floor();
    let mut hi = all.fold(f64::NEG_INFINITY, f64::max).ceil();
    if hi <= lo {
        hi = lo + 1.0;
    }
    let y_of = |l: f64| top + (hi - l) / (hi - lo) * (height - top - bottom);
    let x_of = |c: usize| left + (c as f64 + 0.5) * (width - left - right) / columns.len() as f64;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="14">{}</text>"#,
        width / 2.0,
        escape(title)
    );
    // Axis with a tick at every power of ten.
    let _ = writeln!(
        s,
        r#"<line x1="{left}" y1="{top}" x2="{left}" y2="{}" stroke="black"/>"#,
        height - bottom
    );
    let step = ((hi - lo) / 10.0).ceil().max(1.0);
    let mut e = lo;
    while e <= hi {
        let y = y_of(e);
        let _ = writeln!(
            s,
            r##"<line x1="{}" y1="{y}" x2="{}" y2="{y}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">1e{e}</text>"##,
            left,
            width - right,
            left - 6.0,
            y + 4.0
        );
        e += step;
    }
    let _ = writeln!(
        s,
        r#"<text x="18" y="{}" transform="rotate(-90 18 {})" text-anchor="middle">final training loss (MSE, log scale)</text>"#,
        height / 2.0,
        height / 2.0
    );
    let seeds = logs.first().map_or(0, Vec::len);
    for seed in 0..seeds {
        let pts: Vec<String> = (0..columns.len())
            .map(|c| format!("{:.2},{:.2}", x_of(c), y_of(logs[c][seed])))
            .collect();
        let _ = writeln!(
            s,
            r##"<polyline points="{}" fill="none" stroke="#bbb" stroke-width="1"/>"##,
            pts.join(" ")
        );
    }
    let palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"];
    for (c, (name, values)) in columns.iter().enumerate() {
        let colour = palette[c % palette.len()];
        for &l in &logs[c] {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.2}" cy="{:.2}" r="3.5" fill="{colour}" fill-opacity="0.8"/>"#,
                x_of(c),
                y_of(l)
            );
        }
        let median = crate::stats::summary(values).median.max(FLOOR).log10();
        let _ = writeln!(
            s,
            r#"<line x1="{}" y1="{y:.2}" x2="{}" y2="{y:.2}" stroke="black" stroke-width="2.5"/>"#,
            x_of(c) - 22.0,
            x_of(c) + 22.0,
            y = y_of(median)
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
            x_of(c),
            height - bottom + 22.0,
            escape(name)
        );
    }
    let _ = writeln!(
        s,
        r##"<text x="{}" y="{}" text-anchor="middle" fill="#555">{seeds} seeds; lines join one seed's runs; bars are medians</text>"##,
        width / 2.0,
        height - 12.0
    );
    s.push_str("</svg>\n");
    s
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svg_has_one_dot_per_result_and_is_well_formed() {
        let cols = vec![
            ("gd".to_string(), vec![0.1, 0.2, 0.0]),
            ("search <greedy>".to_string(), vec![0.05, 0.2, 1e-3]),
        ];
        let svg = paired_losses_svg("t & u", &cols);
        assert_eq!(svg.matches("<circle").count(), 6);
        assert_eq!(svg.matches("<polyline").count(), 3);
        assert!(svg.contains("search &lt;greedy&gt;") && svg.contains("t &amp; u"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
    }
}
