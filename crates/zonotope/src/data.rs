//! Data sets: CSV loading with precise errors, synthetic teacher networks, and the
//! degeneracy diagnostics that decide whether the zonotope theory applies cleanly.

use crate::linalg;
use anyhow::{bail, ensure, Context, Result};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use serde::Serialize;
use std::path::Path;

/// Inputs `x` (n×d, row-major), targets `y`, and the homogenised inputs `x̃ = (x, 1)`.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub n: usize,
    pub d: usize,
    pub x: Vec<f64>,
    pub y: Vec<f64>,
    /// Homogenised inputs, n×(d+1) row-major: the bias is folded into the last column.
    pub xt: Vec<f64>,
    /// Where the data came from (file path or synthetic recipe), for reports.
    pub source: String,
}

impl Dataset {
    /// Build a data set from row-major inputs; rejects empty, ragged or non-finite data.
    pub fn new(x: Vec<f64>, y: Vec<f64>, d: usize, source: impl Into<String>) -> Result<Self> {
        let n = y.len();
        ensure!(d >= 1, "data needs at least one input column (got d = 0)");
        ensure!(n >= 1, "data has no rows");
        ensure!(
            x.len() == n * d,
            "inputs have {} values, expected n·d = {}·{}",
            x.len(),
            n,
            d
        );
        ensure!(
            x.iter().chain(&y).all(|v| v.is_finite()),
            "data contains NaN or infinite values"
        );
        let xt = (0..n)
            .flat_map(|i| x[i * d..(i + 1) * d].iter().copied().chain([1.0]))
            .collect();
        Ok(Self {
            n,
            d,
            x,
            y,
            xt,
            source: source.into(),
        })
    }

    /// Width of a homogenised row (d + 1).
    pub fn dim(&self) -> usize {
        self.d + 1
    }

    /// Homogenised row i.
    pub fn row(&self, i: usize) -> &[f64] {
        let k = self.dim();
        &self.xt[i * k..(i + 1) * k]
    }

    /// Rows grouped by identical inputs (0-based, each group ascending, groups ordered by
    /// their first row). Identical rows share every activation bit of every unit.
    pub fn identical_rows(&self) -> Vec<Vec<usize>> {
        let row_x = |i: usize| &self.x[i * self.d..(i + 1) * self.d];
        let mut order: Vec<usize> = (0..self.n).collect();
        order.sort_by(|&a, &b| {
            row_x(a)
                .partial_cmp(row_x(b))
                .expect("finite data")
                .then(a.cmp(&b))
        });
        let mut groups: Vec<Vec<usize>> = Vec::new();
        for i in order {
            match groups.last_mut() {
                Some(g) if row_x(g[0]) == row_x(i) => g.push(i),
                _ => groups.push(vec![i]),
            }
        }
        groups.sort_by_key(|g| g[0]);
        groups
    }

    /// Mean squared error of predicting the mean of y: the loss of the best constant.
    pub fn variance(&self) -> f64 {
        let mean = self.y.iter().sum::<f64>() / self.n as f64;
        self.y.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / self.n as f64
    }

    /// Write as CSV with a header `x1,…,xd,y` (full precision, so a reload is exact).
    pub fn write_csv(&self, path: &Path) -> Result<()> {
        use std::io::Write;
        fisherkit_common::atomic::write_file(path, |w| {
            let header: Vec<String> = (1..=self.d).map(|k| format!("x{k}")).collect();
            writeln!(w, "{},y", header.join(","))?;
            for i in 0..self.n {
                for v in &self.x[i * self.d..(i + 1) * self.d] {
                    write!(w, "{v:?},")?;
                }
                writeln!(w, "{:?}", self.y[i])?;
            }
            Ok(())
        })
    }
}

/// Load a CSV with columns `x1..xd,y` (the last column is the target). A first line
/// whose cells are not all numbers is taken as a header. Blank lines and lines starting
/// with `#` are skipped. Errors name the file, line and column.
pub fn load_csv(path: &Path) -> Result<Dataset> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading data file {}", path.display()))?;
    parse_csv(&text, &path.display().to_string())
}

/// Parse CSV text; `name` is used in error messages.
pub fn parse_csv(text: &str, name: &str) -> Result<Dataset> {
    let mut width: Option<(usize, usize)> = None; // (cells per row, line of the first row)
    let mut x = Vec::new();
    let mut y = Vec::new();
    let mut seen_content = false;
    for (idx, raw) in text.lines().enumerate() {
        let line_no = idx + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let cells: Vec<&str> = line.split(',').map(str::trim).collect();
        let first_content = !seen_content;
        seen_content = true;
        if first_content && cells.iter().any(|c| c.parse::<f64>().is_err()) {
            ensure!(
                cells.len() >= 2,
                "{name}:{line_no}: the header has {} column(s); expected x1,…,xd,y (at least 2)",
                cells.len()
            );
            width = Some((cells.len(), line_no));
            continue;
        }
        match width {
            None => {
                ensure!(
                    cells.len() >= 2,
                    "{name}:{line_no}: a row needs at least 2 cells (x1,…,xd,y), found {}",
                    cells.len()
                );
                width = Some((cells.len(), line_no));
            }
            Some((w, first)) if w != cells.len() => bail!(
                "{name}:{line_no}: ragged row: {} cells, but line {first} has {w}",
                cells.len()
            ),
            Some(_) => {}
        }
        let last = cells.len() - 1;
        for (col, cell) in cells.iter().enumerate() {
            let value: f64 = cell.parse().map_err(|_| {
                anyhow::anyhow!(
                    "{name}:{line_no}:{}: cell {cell:?} is not a number",
                    col + 1
                )
            })?;
            ensure!(
                value.is_finite(),
                "{name}:{line_no}:{}: non-finite value {cell:?} (NaN and infinities are not allowed)",
                col + 1
            );
            if col == last {
                y.push(value);
            } else {
                x.push(value);
            }
        }
    }
    let Some((w, _)) = width else {
        bail!("{name}: no data rows found (the file is empty)");
    };
    ensure!(!y.is_empty(), "{name}: only a header, no data rows");
    Dataset::new(x, y, w - 1, name)
}

/// A random teacher network `y = Σ s_j relu(w_jᵀ x̃) + noise` on Gaussian inputs.
#[derive(Debug, Clone, Serialize)]
pub struct SyntheticSpec {
    pub n: usize,
    pub d: usize,
    pub teacher_units: usize,
    pub noise: f64,
    pub seed: u64,
}

impl SyntheticSpec {
    pub fn generate(&self) -> Result<Dataset> {
        ensure!(
            self.n >= 1 && self.d >= 1,
            "synthetic data needs n ≥ 1 and d ≥ 1"
        );
        ensure!(
            self.teacher_units >= 1,
            "the teacher needs at least one unit"
        );
        ensure!(
            self.noise.is_finite() && self.noise >= 0.0,
            "noise must be ≥ 0"
        );
        let mut rng = StdRng::seed_from_u64(self.seed);
        let mut normal = || -> f64 { StandardNormal.sample(&mut rng) };
        let x: Vec<f64> = (0..self.n * self.d).map(|_| normal()).collect();
        let teacher: Vec<f64> = (0..self.teacher_units * (self.d + 1))
            .map(|_| normal())
            .collect();
        let noise: Vec<f64> = (0..self.n).map(|_| normal() * self.noise).collect();
        let source = format!(
            "synthetic teacher (n={}, d={}, teacher units={}, noise={}, seed={})",
            self.n, self.d, self.teacher_units, self.noise, self.seed
        );
        let mut data = Dataset::new(x, vec![0.0; self.n], self.d, source)?;
        let net = crate::Network::from_weights(
            self.d,
            teacher,
            crate::network::alternating_signs(self.teacher_units),
        );
        let pred = net.predict(&data);
        for i in 0..self.n {
            data.y[i] = pred[i] + noise[i];
        }
        Ok(data)
    }
}

/// What is unusual about a data set, and what it means for the results.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Diagnostics {
    /// Groups of rows (1-based data-row numbers) with identical inputs.
    pub duplicate_inputs: Vec<Vec<usize>>,
    /// Whether some duplicated inputs carry different targets (no network fits both).
    pub conflicting_targets: bool,
    /// Whether every d+1 homogenised rows are linearly independent (None: not checked).
    pub general_position: Option<bool>,
    /// One set of rows (1-based) that violates general position, as an example.
    pub degenerate_example: Option<Vec<usize>>,
    /// How many (d+1)-subsets were checked (all of them, or a random sample).
    pub subsets_checked: u64,
    pub exhaustive: bool,
    /// Plain-language warnings for the user.
    pub warnings: Vec<String>,
}

/// Check for duplicated points and general position. At most `max_subsets`
/// (d+1)-subsets are tested for linear independence; above that a seeded sample is used.
pub fn diagnose(data: &Dataset, max_subsets: u64) -> Diagnostics {
    let mut diag = Diagnostics::default();
    for group in data.identical_rows().into_iter().filter(|g| g.len() > 1) {
        if group.iter().any(|&i| data.y[i] != data.y[group[0]]) {
            diag.conflicting_targets = true;
        }
        diag.duplicate_inputs
            .push(group.iter().map(|i| i + 1).collect());
    }
    diag.duplicate_inputs.sort();
    if !diag.duplicate_inputs.is_empty() {
        let shown: Vec<String> = diag
            .duplicate_inputs
            .iter()
            .take(3)
            .map(|g| format!("rows {g:?}"))
            .collect();
        diag.warnings.push(format!(
            "{} group(s) of duplicated inputs ({}{}): duplicated points always share an \
             activation bit, so there are fewer zonotope vertices than 2·Σ C(n−1,k){}",
            diag.duplicate_inputs.len(),
            shown.join(", "),
            if diag.duplicate_inputs.len() > 3 {
                ", …"
            } else {
                ""
            },
            if diag.conflicting_targets {
                "; some have different targets, so no network can reach zero loss \
                 (the loss has a positive floor)"
            } else {
                ""
            }
        ));
    }
    check_general_position(data, max_subsets, &mut diag);
    diag
}

fn check_general_position(data: &Dataset, max_subsets: u64, diag: &mut Diagnostics) {
    let k = data.dim().min(data.n);
    let total = binomial(data.n as u64, k as u64);
    diag.exhaustive = total <= max_subsets;
    let mut rng = StdRng::seed_from_u64(0);
    let mut subset: Vec<usize> = (0..k).collect();
    let mut checked = 0u64;
    let limit = total.min(max_subsets);
    while checked < limit {
        if !diag.exhaustive {
            subset = rand::seq::index::sample(&mut rng, data.n, k).into_vec();
        }
        let rows: Vec<&[f64]> = subset.iter().map(|&i| data.row(i)).collect();
        checked += 1;
        if !linalg::rows_independent(&rows) {
            let mut example: Vec<usize> = subset.iter().map(|&i| i + 1).collect();
            example.sort_unstable();
            diag.degenerate_example = Some(example);
            break;
        }
        if diag.exhaustive && !next_combination(&mut subset, data.n) {
            break;
        }
    }
    diag.subsets_checked = checked;
    match &diag.degenerate_example {
        Some(rows) => {
            diag.general_position = Some(false);
            diag.warnings.push(format!(
                "data not in general position: rows {rows:?} are affinely dependent \
                 (for d = 2: collinear; for d = 1: equal). The vertex count falls below \
                 2·Σ_(k≤d) C(n−1,k), and the optimal loss is discontinuous here: a tiny \
                 perturbation can create new activation patterns and lower the optimum by \
                 a finite amount (see `fisherkit zonotope sensitivity`)"
            ));
        }
        None if diag.exhaustive => diag.general_position = Some(true),
        None => {
            // A sample cannot prove general position; say so rather than claim it.
            diag.general_position = None;
            diag.warnings.push(format!(
                "general position checked on {checked} random subsets of {total} only"
            ));
        }
    }
}

/// Advance `c` (sorted indices < n) to the next k-combination in lexicographic order.
fn next_combination(c: &mut [usize], n: usize) -> bool {
    let k = c.len();
    for i in (0..k).rev() {
        if c[i] < n - k + i {
            c[i] += 1;
            for j in i + 1..k {
                c[j] = c[j - 1] + 1;
            }
            return true;
        }
    }
    false
}

/// C(n, k) saturating at u64::MAX.
pub fn binomial(n: u64, k: u64) -> u64 {
    if k > n {
        return 0;
    }
    let k = k.min(n - k);
    let mut acc: u128 = 1;
    for i in 0..k {
        acc = acc * (n - i) as u128 / (i + 1) as u128;
        if acc > u64::MAX as u128 {
            return u64::MAX;
        }
    }
    acc as u64
}

/// The number of zonotope vertices for n points in general position in dimension d:
/// 2·Σ_{k=0..d} C(n−1, k).
pub fn general_position_vertex_count(n: usize, d: usize) -> u64 {
    2 * (0..=d as u64)
        .map(|k| binomial(n as u64 - 1, k))
        .fold(0u64, u64::saturating_add)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_header_optional_and_errors_located() {
        let d = parse_csv("x1,x2,y\n1,2,3\n4,5,6\n", "t.csv").unwrap();
        assert_eq!((d.n, d.d), (2, 2));
        assert_eq!(d.row(1), &[4.0, 5.0, 1.0]);
        assert_eq!(d.y, vec![3.0, 6.0]);
        let d = parse_csv("# comment\n1,3\n\n2,4\n", "t.csv").unwrap();
        assert_eq!((d.n, d.d), (2, 1));
        let err = parse_csv("1,2,3\n4,abc,6\n", "t.csv")
            .unwrap_err()
            .to_string();
        assert!(err.contains("t.csv:2:2") && err.contains("abc"), "{err}");
        let err = parse_csv("1,2,3\n4,5\n", "t.csv").unwrap_err().to_string();
        assert!(err.contains("t.csv:2") && err.contains("ragged"), "{err}");
        let err = parse_csv("1,2\nnan,3\n", "t.csv").unwrap_err().to_string();
        assert!(
            err.contains("t.csv:2:1") && err.contains("non-finite"),
            "{err}"
        );
        let err = parse_csv("1,inf\n", "t.csv").unwrap_err().to_string();
        assert!(err.contains("t.csv:1:2"), "{err}");
        assert!(parse_csv("x,y\n", "t.csv").is_err());
        assert!(parse_csv("", "t.csv").is_err());
    }

    #[test]
    fn diagnostics_find_duplicates_and_collinear_points() {
        let data = parse_csv("0,1\n1,2\n0,3\n2,0\n", "t").unwrap();
        let diag = diagnose(&data, 1000);
        assert_eq!(diag.duplicate_inputs, vec![vec![1, 3]]);
        assert!(diag.conflicting_targets);
        assert_eq!(diag.general_position, Some(false));
        // Three collinear points in the plane violate general position for d = 2.
        let data = parse_csv("0,0,1\n1,1,1\n2,2,1\n0,1,1\n", "t").unwrap();
        let diag = diagnose(&data, 1000);
        assert!(diag.duplicate_inputs.is_empty());
        assert_eq!(diag.degenerate_example, Some(vec![1, 2, 3]));
        let spec = SyntheticSpec {
            n: 12,
            d: 2,
            teacher_units: 3,
            noise: 0.0,
            seed: 1,
        };
        let diag = diagnose(&spec.generate().unwrap(), 1_000_000);
        assert_eq!(diag.general_position, Some(true));
        assert_eq!(diag.subsets_checked, binomial(12, 3));
    }

    #[test]
    fn vertex_count_formula_matches_spec_examples() {
        assert_eq!(general_position_vertex_count(5, 2), 22);
        assert_eq!(general_position_vertex_count(7, 1), 14);
        assert_eq!(general_position_vertex_count(9, 2), 9 * 9 - 9 + 2);
    }
}
