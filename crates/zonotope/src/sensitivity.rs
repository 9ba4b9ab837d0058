//! The optimum at degenerate data is discontinuous: the spec's example (d = 1, m = 1,
//! x = (0, ε), y = (1, 2)). At ε = 0 both points share every activation bit, the best
//! network is a constant and the loss is 0.25; for any ε ≠ 0 the pattern "both active"
//! fits a line through both points (loss 0) with weights ~1/ε.

use crate::brute;
use crate::data::Dataset;
use anyhow::Result;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub epsilon: f64,
    pub vertices: usize,
    pub optimal_loss: f64,
    pub weight_norm: f64,
    pub sign: i8,
    pub pattern: String,
    pub solver_status: String,
}

/// Default perturbation sizes of the table.
pub const DEFAULT_EPSILONS: [f64; 6] = [0.0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5];

/// The example's data for one ε.
pub fn example_data(epsilon: f64) -> Result<Dataset> {
    Dataset::new(
        vec![0.0, epsilon],
        vec![1.0, 2.0],
        1,
        format!("x = (0, {epsilon}), y = (1, 2)"),
    )
}

/// Exact optimum (brute force over vertices, one unit, both signs) for each ε.
pub fn table(epsilons: &[f64]) -> Result<Vec<Row>> {
    let hidden = |_| indicatif::ProgressBar::hidden();
    epsilons
        .iter()
        .map(|&epsilon| {
            let data = example_data(epsilon)?;
            let best = brute::solve(&data, 1, brute::DEFAULT_LIMIT, &hidden)?;
            let w = &best.solution.network.weights;
            Ok(Row {
                epsilon,
                vertices: best.vertices,
                optimal_loss: best.loss,
                weight_norm: w.iter().map(|v| v * v).sum::<f64>().sqrt(),
                sign: best.units[0].sign,
                pattern: best.units[0].bits(),
                solver_status: best.solution.status.clone(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn degenerate_example_jumps_from_quarter_to_zero() {
        let rows = table(&[0.0, 1e-2, 1e-3]).unwrap();
        assert!((rows[0].optimal_loss - 0.25).abs() < 1e-7, "{:?}", rows[0]);
        assert_eq!(rows[0].vertices, 2);
        for row in &rows[1..] {
            assert_eq!(row.vertices, 4);
            assert!(row.optimal_loss < 1e-6, "{row:?}");
            assert_eq!(row.pattern, "11");
            // Slope 1/ε: the weights blow up as the data approaches degeneracy.
            assert!(row.weight_norm > 0.5 / row.epsilon, "{row:?}");
        }
    }
}
