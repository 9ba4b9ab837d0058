//! `npeff report`: one self-contained HTML file (no network, no external scripts or
//! styles) describing a decomposition: the fit's settings and loss curve, a summary table
//! sortable by any column, and per component its top examples, its parameter attribution
//! (inline SVG bars) and its perturbation results.
//!
//! Every element is closed and every attribute quoted, so the page is easy to check
//! and to post-process.

use crate::analysis::{ComponentTop, Share, TopReport};
use crate::fit::DecompositionInfo;
use crate::perturb::{ComponentPerturbation, PerturbReport, PlusMinus};
use std::fmt::Write;

/// Escape text for HTML element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() && c != '\n' && c != '\t' => {}
            c => out.push(c),
        }
    }
    out
}

/// A number for a table cell (`—` when absent or not finite).
fn num(x: Option<f64>) -> String {
    match x {
        Some(v) if v.is_finite() => {
            if v != 0.0 && (v.abs() >= 1e4 || v.abs() < 1e-3) {
                format!("{v:.3e}")
            } else {
                format!("{v:.4}")
            }
        }
        Some(v) if v.is_infinite() => "∞".into(),
        _ => "—".into(),
    }
}

/// Sort key of a cell: numbers sort numerically (∞ last, absent first).
fn key(x: Option<f64>) -> String {
    match x {
        Some(v) if v.is_nan() => "-1e308".into(),
        Some(v) if v.is_infinite() => "1e308".into(),
        Some(v) => format!("{v}"),
        None => "-1e308".into(),
    }
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;max-width:80em;color:#222}\
table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;padding:0.2em 0.5em;\
vertical-align:top;text-align:left}th.sortable{cursor:pointer;background:#f0f0f0}\
td.text{max-width:40em;white-space:pre-wrap;word-break:break-word}.wrong{background:#fde2e2}\
.right{background:#e2f5e2}section.component{border-top:2px solid #888;margin-top:2em}\
.note{color:#a33}svg text{font-size:11px;font-family:sans-serif}";

/// Click a header to sort its table by that column (numbers numerically, via
/// `data-key`), again to reverse.
const SCRIPT: &str = "document.querySelectorAll('table.sortable').forEach(function(t){\
var hs=t.querySelectorAll('th');hs.forEach(function(h,i){h.classList.add('sortable');\
h.addEventListener('click',function(){var b=t.tBodies[0];var rows=Array.prototype.slice.call(b.rows);\
var dir=h.getAttribute('data-dir')==='asc'?-1:1;h.setAttribute('data-dir',dir===1?'asc':'desc');\
rows.sort(function(x,y){var a=x.cells[i].getAttribute('data-key'),c=y.cells[i].getAttribute('data-key');\
if(a!==null&&c!==null){return dir*(parseFloat(a)-parseFloat(c));}\
return dir*x.cells[i].textContent.localeCompare(y.cells[i].textContent);});\
rows.forEach(function(r){b.appendChild(r);});});});});";

/// Horizontal bars of shares (largest `limit`), as inline SVG.
fn bars(title: &str, shares: &[Share], limit: usize) -> String {
    let shown: Vec<&Share> = shares.iter().take(limit).collect();
    let (row, label_w, bar_w) = (16, 330, 260);
    let height = row * shown.len() + 20;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" role=\"img\"><title>{}</title>",
        label_w + bar_w + 60,
        escape(title)
    );
    let _ = write!(svg, "<text x=\"0\" y=\"12\">{}</text>", escape(title));
    for (i, s) in shown.iter().enumerate() {
        let y = 20 + i * row;
        let w = (s.share.clamp(0.0, 1.0) * bar_w as f64).round();
        // Long tensor names keep their informative end.
        let chars = s.name.chars().count();
        let name = if chars > 52 {
            format!("…{}", s.name.chars().skip(chars - 51).collect::<String>())
        } else {
            s.name.clone()
        };
        let _ = write!(
            svg,
            "<text x=\"0\" y=\"{}\">{}</text><rect x=\"{label_w}\" y=\"{}\" width=\"{w}\" height=\"{}\" fill=\"#4a7ab5\"/>\
             <text x=\"{}\" y=\"{}\">{:.1} %</text>",
            y + 11,
            escape(&name),
            y + 2,
            row - 4,
            label_w as f64 + w + 4.0,
            y + 11,
            100.0 * s.share
        );
    }
    svg.push_str("</svg>");
    svg
}

/// The loss curve (log scale) as inline SVG.
fn loss_curve(history: &[(usize, f64)]) -> String {
    let points: Vec<(f64, f64)> = history
        .iter()
        .filter(|(_, l)| *l > 0.0 && l.is_finite())
        .map(|&(i, l)| (i as f64, l.log10()))
        .collect();
    if points.len() < 2 {
        return "<p>No loss history.</p>".into();
    }
    let (w, h, pad) = (480.0, 200.0, 40.0);
    let (x0, x1) = (
        points[0].0,
        points[points.len() - 1].0.max(points[0].0 + 1.0),
    );
    let lo = points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let hi = points
        .iter()
        .map(|p| p.1)
        .fold(f64::NEG_INFINITY, f64::max)
        .max(lo + 1e-9);
    let path: Vec<String> = points
        .iter()
        .map(|&(x, y)| {
            format!(
                "{:.1},{:.1}",
                pad + (x - x0) / (x1 - x0) * (w - 2.0 * pad),
                h - pad - (y - lo) / (hi - lo) * (h - 2.0 * pad)
            )
        })
        .collect();
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" role=\"img\"><title>loss</title>\
         <polyline fill=\"none\" stroke=\"#b5524a\" stroke-width=\"2\" points=\"{}\"/>\
         <text x=\"{pad}\" y=\"{}\">iteration {x0}</text><text x=\"{}\" y=\"{}\">{x1}</text>\
         <text x=\"0\" y=\"{}\">{:.3e}</text><text x=\"0\" y=\"{}\">{:.3e}</text></svg>",
        path.join(" "),
        h - 8.0,
        w - pad - 30.0,
        h - 8.0,
        pad,
        10f64.powf(hi),
        h - pad,
        10f64.powf(lo)
    )
}

fn perturbation_table(p: &ComponentPerturbation) -> String {
    let mut html = format!(
        "<p>ε = {}; top examples: {}, baseline examples: {}; overlap removed with components {:?}. \
         Unperturbed accuracy: top {}, baseline {}.</p>\
         <table><thead><tr><th>direction</th><th>sign</th><th>KL top</th><th>KL baseline</th>\
         <th>ratio</th><th>accuracy top</th><th>accuracy baseline</th></tr></thead><tbody>",
        num(Some(p.epsilon)),
        p.top_examples.len(),
        p.baseline_examples,
        p.rejected_components,
        num(Some(p.original_accuracy_top)),
        num(Some(p.original_accuracy_baseline))
    );
    let mut rows = |name: &str, pm: &PlusMinus| {
        for (sign, r) in [("+", &pm.plus), ("−", &pm.minus)] {
            let _ = write!(
                html,
                "<tr><td>{name}</td><td>{sign}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                num(Some(r.kl_top)),
                num(Some(r.kl_baseline)),
                num(Some(r.ratio)),
                num(Some(r.accuracy_top)),
                num(Some(r.accuracy_baseline))
            );
        }
    };
    rows("component", &p.component_direction);
    if let Some(random) = &p.random_direction {
        rows("random (control)", random);
    }
    html.push_str("</tbody></table>");
    html
}

fn component_section(c: &ComponentTop, perturbation: Option<&ComponentPerturbation>) -> String {
    let mut html = format!(
        "<section class=\"component\" id=\"component-{0}\"><h2>Component {0}</h2>\
         <p>{1} examples with a positive coefficient.",
        c.component, c.active_examples
    );
    if !c.label_fractions.is_empty() {
        let labels: Vec<String> = c
            .label_fractions
            .iter()
            .map(|s| format!("{} {:.0} %", escape(&s.name), 100.0 * s.share))
            .collect();
        let _ = write!(html, " Labels of its top examples: {}.", labels.join(", "));
    }
    if let Some(f) = c.correct_fraction {
        let _ = write!(html, " Predicted correctly: {:.0} %.", 100.0 * f);
    }
    html.push_str("</p><h3>Top examples</h3><table class=\"sortable\"><thead><tr><th>example</th>\
        <th>line</th><th>coefficient</th><th>input</th><th>target</th><th>label</th><th>prediction</th></tr></thead><tbody>");
    for e in &c.top_examples {
        let class = match e.correct {
            Some(true) => " class=\"right\"",
            Some(false) => " class=\"wrong\"",
            None => "",
        };
        let input = match (&e.text.input, &e.text.text_pair) {
            (Some(a), Some(b)) => format!("{a}\n— {b}"),
            (Some(a), None) => a.clone(),
            _ => String::new(),
        };
        let _ = write!(
            html,
            "<tr{class}><td data-key=\"{0}\">{0}</td><td>{1}</td><td data-key=\"{2}\">{3}</td>\
             <td class=\"text\">{4}</td><td class=\"text\">{5}</td><td>{6}</td><td>{7}</td></tr>",
            e.example,
            e.line.map(|l| l.to_string()).unwrap_or_default(),
            key(Some(f64::from(e.coefficient))),
            num(Some(f64::from(e.coefficient))),
            escape(&input),
            escape(e.text.target.as_deref().unwrap_or("")),
            escape(e.label.as_deref().unwrap_or("")),
            escape(e.prediction.as_deref().unwrap_or(""))
        );
    }
    html.push_str("</tbody></table>");
    if let Some(a) = &c.attribution {
        html.push_str("<h3>Parameter attribution</h3><div>");
        html.push_str(&bars("by sub-layer kind", &a.by_kind, 12));
        html.push_str(&bars("by layer", &a.by_layer, 48));
        html.push_str(&bars("largest tensors", &a.by_tensor, 12));
        html.push_str("</div>");
    }
    if let Some(p) = perturbation {
        html.push_str("<h3>Perturbation</h3>");
        html.push_str(&perturbation_table(p));
    }
    html.push_str("</section>");
    html
}

/// The whole page.
pub fn render(
    top: &TopReport,
    info: &DecompositionInfo,
    loss_history: &[(usize, f64)],
    perturbations: Option<&PerturbReport>,
) -> String {
    let perturbation_of =
        |j: usize| perturbations.and_then(|p| p.per_component.iter().find(|c| c.component == j));
    let mut html =
        String::from("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"/>");
    let _ = write!(
        html,
        "<title>NPEFF report: {}</title><style>{STYLE}</style></head><body>",
        escape(&top.decomposition.display().to_string())
    );
    let _ = write!(
        html,
        "<h1>NPEFF report</h1><p>Decomposition <code>{}</code> ({} NPEFF, {} components) of the PEFs \
         <code>{}</code> ({} examples).</p>",
        escape(&top.decomposition.display().to_string()),
        top.kind,
        top.components,
        escape(&top.pefs.display().to_string()),
        top.examples
    );
    for note in &top.notes {
        let _ = write!(html, "<p class=\"note\">{}</p>", escape(note));
    }
    let settings = serde_json::to_string_pretty(&info.settings).unwrap_or_default();
    let _ = write!(
        html,
        "<h2>Fit</h2><p>{} kept parameters of {}, {} iterations, final loss {} ({}).</p><pre>{}</pre>{}",
        info.n_kept,
        info.n_parameters,
        info.steps_done,
        num(info.final_loss),
        escape(&info.loss_definition),
        escape(&settings),
        loss_curve(loss_history)
    );
    if let Some(p) = perturbations {
        let _ = write!(
            html,
            "<p>Perturbation: median over components of the larger ± KL ratio (top / baseline) {}; \
             of a random direction of the same norm {}.</p>",
            num(Some(p.median_ratio)),
            num(p.median_random_ratio)
        );
    }
    html.push_str(
        "<h2>Summary</h2><table class=\"sortable\" id=\"summary\"><thead><tr><th>component</th>\
         <th>active examples</th><th>top label</th><th>top correct</th><th>main sub-layer kind</th>\
         <th>main layer</th><th>perturbation ratio</th><th>random-direction ratio</th></tr></thead><tbody>",
    );
    for c in &top.per_component {
        let biggest = |shares: &[Share]| {
            shares
                .iter()
                .max_by(|a, b| a.share.total_cmp(&b.share))
                .map(|s| format!("{} ({:.0} %)", s.name, 100.0 * s.share))
                .unwrap_or_default()
        };
        let top_label = biggest(&c.label_fractions);
        let (kind, layer) = c
            .attribution
            .as_ref()
            .map(|a| (biggest(&a.by_kind), biggest(&a.by_layer)))
            .unwrap_or_default();
        let p = perturbation_of(c.component);
        let ratio = p.map(|p| p.component_direction.max_ratio);
        let random = p.and_then(|p| p.random_direction.as_ref().map(|r| r.max_ratio));
        let _ = write!(
            html,
            "<tr><td data-key=\"{0}\"><a href=\"#component-{0}\">{0}</a></td><td data-key=\"{1}\">{1}</td>\
             <td>{2}</td><td data-key=\"{3}\">{4}</td><td>{5}</td><td>{6}</td><td data-key=\"{7}\">{8}</td>\
             <td data-key=\"{9}\">{10}</td></tr>",
            c.component,
            c.active_examples,
            escape(&top_label),
            key(c.correct_fraction),
            num(c.correct_fraction),
            escape(&kind),
            escape(&layer),
            key(ratio),
            num(ratio),
            key(random),
            num(random)
        );
    }
    html.push_str("</tbody></table>");
    for c in &top.per_component {
        html.push_str(&component_section(c, perturbation_of(c.component)));
    }
    let _ = writeln!(html, "<script>{SCRIPT}</script></body></html>");
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_markup_quotes_and_controls() {
        assert_eq!(
            escape("<script>alert(\"x&y\")</script>'\u{7}"),
            "&lt;script&gt;alert(&quot;x&amp;y&quot;)&lt;/script&gt;&#39;"
        );
    }

    #[test]
    fn numbers_format_for_cells_and_sort_keys() {
        assert_eq!(num(Some(0.5)), "0.5000");
        assert_eq!(num(Some(12346.0)), "1.235e4");
        assert_eq!(num(Some(f64::INFINITY)), "∞");
        assert_eq!(num(None), "—");
        assert_eq!(key(Some(f64::INFINITY)), "1e308");
    }
}
