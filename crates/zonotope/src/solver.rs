//! A clarabel session that keeps one solver alive across problems with the same sparsity
//! structure. Neighbouring vertices give QPs (and LPs) whose matrices differ only in
//! values, so the solver's setup — allocation, KKT assembly and its symbolic
//! factorisation — is done once and later problems only overwrite the numbers.

use anyhow::{anyhow, Result};
use clarabel::algebra::CscMatrix;
use clarabel::solver::{
    DefaultSettings, DefaultSolver, IPSolver, SolverStatus, SupportedConeT::NonnegativeConeT,
};

/// The result of one solve, copied out of the solver.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub status: SolverStatus,
    pub x: Vec<f64>,
    pub objective: f64,
    pub iterations: u32,
}

struct Structure {
    p_colptr: Vec<usize>,
    p_rowval: Vec<usize>,
    a_colptr: Vec<usize>,
    a_rowval: Vec<usize>,
}

impl Structure {
    fn of(p: &CscMatrix<f64>, a: &CscMatrix<f64>) -> Self {
        Self {
            p_colptr: p.colptr.clone(),
            p_rowval: p.rowval.clone(),
            a_colptr: a.colptr.clone(),
            a_rowval: a.rowval.clone(),
        }
    }

    fn matches(&self, p: &CscMatrix<f64>, a: &CscMatrix<f64>) -> bool {
        self.p_colptr == p.colptr
            && self.p_rowval == p.rowval
            && self.a_colptr == a.colptr
            && self.a_rowval == a.rowval
    }
}

/// Solves `min ½xᵀPx + qᵀx s.t. Ax ≤ b` (P given as its upper triangle), reusing the
/// solver when the structure is unchanged (unless `reuse` is off).
pub struct Session {
    reuse: bool,
    current: Option<(Structure, DefaultSolver<f64>)>,
    /// Number of solver constructions (full setups) so far.
    pub setups: u64,
    /// Number of solves so far.
    pub solves: u64,
}

impl Session {
    pub fn new(reuse: bool) -> Self {
        Self {
            reuse,
            current: None,
            setups: 0,
            solves: 0,
        }
    }

    fn settings() -> DefaultSettings<f64> {
        DefaultSettings {
            verbose: false,
            // Data updates are refused once presolve has changed the problem.
            presolve_enable: false,
            input_sparse_dropzeros: false,
            ..DefaultSettings::default()
        }
    }

    pub fn solve(
        &mut self,
        p: &CscMatrix<f64>,
        q: &[f64],
        a: &CscMatrix<f64>,
        b: &[f64],
    ) -> Result<Outcome> {
        self.solves += 1;
        let reusable =
            self.reuse && matches!(&self.current, Some((structure, _)) if structure.matches(p, a));
        let updated = reusable && {
            let (_, solver) = self.current.as_mut().expect("checked above");
            solver.update_P(&p.nzval).is_ok()
                && solver.update_q(&q.to_vec()).is_ok()
                && solver.update_A(&a.nzval).is_ok()
                && solver.update_b(&b.to_vec()).is_ok()
        };
        if !updated {
            let cones = [NonnegativeConeT(b.len())];
            let solver = DefaultSolver::new(p, q, a, b, &cones, Self::settings())
                .map_err(|e| anyhow!("clarabel rejected the problem: {e}"))?;
            self.setups += 1;
            self.current = Some((Structure::of(p, a), solver));
        }
        let (_, solver) = self.current.as_mut().expect("solver present");
        solver.solve();
        let sol = &solver.solution;
        Ok(Outcome {
            status: sol.status,
            x: sol.x.clone(),
            objective: sol.obj_val,
            iterations: sol.iterations,
        })
    }
}

/// A column-major dense matrix as CSC with every entry stored (zeros included), so that
/// problems with the same shape share a sparsity structure.
pub fn dense_csc(rows: usize, cols: usize, value: impl Fn(usize, usize) -> f64) -> CscMatrix<f64> {
    let colptr = (0..=cols).map(|c| c * rows).collect();
    let rowval = (0..cols).flat_map(|_| 0..rows).collect();
    let nzval = (0..cols)
        .flat_map(|c| (0..rows).map(move |r| (r, c)))
        .map(|(r, c)| value(r, c))
        .collect();
    CscMatrix::new(rows, cols, colptr, rowval, nzval)
}

/// The upper triangle of a symmetric dense matrix as CSC, all entries stored.
pub fn upper_csc(size: usize, value: impl Fn(usize, usize) -> f64) -> CscMatrix<f64> {
    let mut colptr = vec![0];
    let mut rowval = Vec::with_capacity(size * (size + 1) / 2);
    let mut nzval = Vec::with_capacity(size * (size + 1) / 2);
    for c in 0..size {
        for r in 0..=c {
            rowval.push(r);
            nzval.push(value(r, c));
        }
        colptr.push(rowval.len());
    }
    CscMatrix::new(size, size, colptr, rowval, nzval)
}
