//! Arguments of the `zonotope` commands and `bench zonotope`: parse, validate, call
//! `fisherkit-zonotope`, print a table or (with `--json`) one JSON document on stdout.

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use fisherkit_common::progress;
use fisherkit_zonotope::{
    brute, compare, construct, data, gd, patterns, plot, qp::QpSolver, search, sensitivity,
    vertices, Dataset, Network,
};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Instant;

/// `println!` that returns an error instead of panicking when stdout is closed (e.g.
/// piped into `head`).
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout(), $($arg)*).context("writing to stdout")?;
    }};
}

#[derive(Args, Debug)]
pub struct ZonotopeArgs {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Enumerate (or sample) the zonotope's vertices = feasible patterns of one unit.
    Vertices(VerticesArgs),
    /// Solve the convex QP for fixed patterns and output signs.
    Solve(SolveArgs),
    /// The 2× construction: nested patterns with ± unit pairs that interpolate the data.
    Construct(ConstructArgs),
    /// Greedy local search over vertex tuples of Z^m.
    Search(SearchArgs),
    /// Gradient-descent (or Adam) baseline on the same network family and loss.
    Gd(GdArgs),
    /// The exact global optimum by enumerating all vertex tuples (tiny problems).
    Brute(BruteArgs),
    /// GD, Adam and greedy search over many seeds: table, paired test, SVG plot.
    Compare(CompareArgs),
    /// The optimum under small perturbations of degenerate data (the spec's example).
    Sensitivity(SensitivityArgs),
}

/// Where the data comes from: a CSV file or a synthetic teacher network.
#[derive(Args, Debug, Clone)]
struct DataArgs {
    /// CSV with columns x1..xd,y (header optional; last column is the target).
    #[arg(long, conflicts_with = "synthetic")]
    data: Option<PathBuf>,
    /// Use data from a random teacher network instead of a file.
    #[arg(long)]
    synthetic: bool,
    /// Synthetic: number of examples.
    #[arg(long, default_value_t = 100)]
    n: usize,
    /// Synthetic: input dimension.
    #[arg(long, default_value_t = 2)]
    d: usize,
    /// Synthetic: hidden units of the teacher.
    #[arg(long, default_value_t = 8)]
    teacher_units: usize,
    /// Synthetic: standard deviation of Gaussian label noise.
    #[arg(long, default_value_t = 0.0)]
    noise: f64,
    /// Synthetic: seed of the teacher and inputs.
    #[arg(long, default_value_t = 0)]
    data_seed: u64,
    /// Also write the data used to this CSV (handy for re-running on a file).
    #[arg(long)]
    save_data: Option<PathBuf>,
}

impl DataArgs {
    fn spec(&self) -> data::SyntheticSpec {
        data::SyntheticSpec {
            n: self.n,
            d: self.d,
            teacher_units: self.teacher_units,
            noise: self.noise,
            seed: self.data_seed,
        }
    }

    /// Load the data and its diagnostics; warnings go to stderr unless `json`.
    fn load(&self, json: bool) -> Result<(Dataset, data::Diagnostics)> {
        let dataset = match (&self.data, self.synthetic) {
            (Some(path), _) => data::load_csv(path)?,
            (None, true) => self.spec().generate()?,
            (None, false) => bail!("pass --data FILE.csv or --synthetic"),
        };
        if let Some(path) = &self.save_data {
            dataset.write_csv(path)?;
        }
        let diagnostics = data::diagnose(&dataset, 200_000);
        if !json {
            for w in &diagnostics.warnings {
                eprintln!("warning: {w}");
            }
        }
        Ok((dataset, diagnostics))
    }
}

fn data_json(data: &Dataset, diag: &data::Diagnostics) -> Value {
    json!({"source": data.source, "n": data.n, "d": data.d, "diagnostics": diag})
}

fn print_json(value: &Value) -> Result<()> {
    out!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn network_lines(net: &Network) -> Vec<String> {
    (0..net.units())
        .map(|j| {
            let w: Vec<String> = net
                .unit_weights(j)
                .iter()
                .map(|v| format!("{v:.6e}"))
                .collect();
            format!(
                "  unit {:>3} sign {:+}  w = [{}] (last = bias)",
                j + 1,
                net.signs[j],
                w.join(", ")
            )
        })
        .collect()
}

#[derive(Args, Debug)]
struct VerticesArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Stop after this many vertices.
    #[arg(long)]
    max: Option<usize>,
    /// Print the patterns themselves.
    #[arg(long)]
    list: bool,
    /// Instead of enumerating, sample K random directions and count distinct vertices hit.
    #[arg(long)]
    sample: Option<usize>,
    /// Seed of the sampled directions.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long)]
    json: bool,
}

fn run_vertices(a: VerticesArgs) -> Result<()> {
    let (data, diag) = a.data.load(a.json)?;
    let formula = (diag.general_position == Some(true) && diag.duplicate_inputs.is_empty())
        .then(|| data::general_position_vertex_count(data.n, data.d));
    let start = Instant::now();
    if let Some(k) = a.sample {
        let s = vertices::sample(&data, k, a.seed);
        if a.json {
            let mut v = json!({"data": data_json(&data, &diag), "sampled_directions": k,
                "distinct": s.distinct, "max_hits": s.max_hits, "min_hits": s.min_hits,
                "general_position_count": formula, "seconds": start.elapsed().as_secs_f64()});
            if a.list {
                v["vertices"] = s
                    .vertices
                    .iter()
                    .map(|(p, h)| json!({"pattern": bits(p), "hits": h}))
                    .collect();
            }
            return print_json(&v);
        }
        out!(
            "{k} random directions hit {} distinct vertices (hits per vertex: {}..{})",
            s.distinct,
            s.min_hits,
            s.max_hits
        );
        if let Some(f) = formula {
            out!("the zonotope has {f} vertices (general position); sampling favours wide activation regions");
        }
        if a.list {
            for (p, h) in &s.vertices {
                out!("{} {h}", bits(p));
            }
        }
        return Ok(());
    }
    let bar = progress::spinner("vertices");
    let e = vertices::enumerate(&data, a.max, &bar)?;
    bar.finish_and_clear();
    if a.json {
        let mut v = json!({"data": data_json(&data, &diag), "vertices": e.vertices.len(),
            "complete": e.complete, "general_position_count": formula, "lp_solves": e.lp_solves,
            "seconds": start.elapsed().as_secs_f64()});
        if a.list {
            v["patterns"] = e.vertices.iter().map(|p| Value::from(bits(p))).collect();
        }
        return print_json(&v);
    }
    out!(
        "{} vertices{} ({} LPs, {:.2}s)",
        e.vertices.len(),
        if e.complete {
            ""
        } else {
            " (stopped at --max: incomplete)"
        },
        e.lp_solves,
        start.elapsed().as_secs_f64()
    );
    if let Some(f) = formula {
        out!("general-position formula 2·Σ_(k≤d) C(n−1,k) = {f}");
    }
    if a.list {
        for p in &e.vertices {
            out!("{}", bits(p));
        }
    }
    Ok(())
}

fn bits(p: &[bool]) -> String {
    p.iter().map(|&b| if b { '1' } else { '0' }).collect()
}

#[derive(Args, Debug)]
struct SolveArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Patterns file: one unit per line, `<sign> <bits>` (e.g. `+1 0110…`).
    #[arg(long)]
    patterns: PathBuf,
    #[arg(long)]
    json: bool,
}

fn solution_json(sol: &fisherkit_zonotope::qp::Solution) -> Value {
    json!({"loss": sol.loss, "qp_objective": sol.objective, "status": sol.status,
        "iterations": sol.iterations, "max_violation": sol.max_violation,
        "signs": sol.network.signs, "weights": (0..sol.network.units()).map(|j| sol.network.unit_weights(j).to_vec()).collect::<Vec<_>>()})
}

fn print_solution(sol: &fisherkit_zonotope::qp::Solution) -> Result<()> {
    out!(
        "loss {:.10e} (forward pass; QP objective {:.10e}, status {}, {} iterations, max constraint violation {:.1e})",
        sol.loss, sol.objective, sol.status, sol.iterations, sol.max_violation
    );
    for line in network_lines(&sol.network) {
        out!("{line}");
    }
    Ok(())
}

fn run_solve(a: SolveArgs) -> Result<()> {
    let (data, diag) = a.data.load(a.json)?;
    let units = patterns::load(&a.patterns, &data)?;
    let sol = QpSolver::default()
        .solve(&data, &units)
        .with_context(|| format!("solving the QP for {}", a.patterns.display()))?;
    if a.json {
        return print_json(
            &json!({"data": data_json(&data, &diag), "units": units.len(), "solution": solution_json(&sol)}),
        );
    }
    print_solution(&sol)
}

#[derive(ValueEnum, Debug, Clone, Copy)]
enum ConstructMethod {
    Auto,
    BackSubstitution,
    Qp,
}

#[derive(Args, Debug)]
struct ConstructArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Number of nested patterns k (units = 2k). Default ⌈n/(d+1)⌉, the smallest that
    /// interpolates generic targets.
    #[arg(long)]
    groups: Option<usize>,
    /// How to solve at the constructed vertex (auto: back substitution when possible).
    #[arg(long, value_enum, default_value = "auto")]
    method: ConstructMethod,
    /// Seed of the random projection direction.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write the constructed units' patterns (patterns-file format).
    #[arg(long)]
    save_patterns: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

fn run_construct(a: ConstructArgs) -> Result<()> {
    let (data, diag) = a.data.load(a.json)?;
    let k = a
        .groups
        .unwrap_or_else(|| construct::default_patterns(&data));
    let method = match a.method {
        ConstructMethod::Auto => construct::Method::Auto,
        ConstructMethod::BackSubstitution => construct::Method::BackSubstitution,
        ConstructMethod::Qp => construct::Method::Qp,
    };
    let c = construct::construct(&data, k, method, a.seed)?;
    if let Some(path) = &a.save_patterns {
        patterns::save(path, &c.unit_patterns)?;
    }
    if a.json {
        return print_json(&json!({"data": data_json(&data, &diag), "construction": c}));
    }
    out!(
        "{} nested patterns → {} units, {} parameters (n = {}); solved by {:?}",
        c.patterns,
        c.units,
        c.parameters,
        data.n,
        c.method
    );
    out!("group sizes {:?}", c.group_sizes);
    out!(
        "loss {:.3e} (max constraint violation {:.1e})",
        c.loss,
        c.max_violation
    );
    for line in network_lines(&c.network) {
        out!("{line}");
    }
    Ok(())
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq)]
enum Init {
    Random,
    Gd,
}

#[derive(ValueEnum, Debug, Clone, Copy)]
enum OptimizerArg {
    Gd,
    Adam,
}

impl From<OptimizerArg> for gd::Optimizer {
    fn from(o: OptimizerArg) -> Self {
        match o {
            OptimizerArg::Gd => gd::Optimizer::Gd,
            OptimizerArg::Adam => gd::Optimizer::Adam,
        }
    }
}

/// Gradient training options shared by `gd` and `search --init gd`.
#[derive(Args, Debug, Clone)]
struct TrainArgs {
    /// Hidden units m (output signs alternate +, −, +, …).
    #[arg(long)]
    units: usize,
    /// Seed of the initial network (the same for `gd` and `search`).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, value_enum, default_value = "adam")]
    optimizer: OptimizerArg,
    /// Learning rate (default: 0.05 for gd, 0.01 for adam).
    #[arg(long)]
    lr: Option<f64>,
    /// Full-batch steps.
    #[arg(long, default_value_t = 5000)]
    steps: usize,
}

impl TrainArgs {
    fn init(&self, data: &Dataset) -> Result<Network> {
        anyhow::ensure!(self.units >= 1, "--units must be at least 1");
        Ok(Network::random(data.d, self.units, self.seed))
    }

    fn train(&self, data: &Dataset) -> Result<gd::Run> {
        let optimizer: gd::Optimizer = self.optimizer.into();
        let opts = gd::Options {
            optimizer,
            lr: self.lr.unwrap_or(optimizer.default_lr()),
            steps: self.steps,
        };
        gd::train(data, &self.init(data)?, &opts)
    }
}

#[derive(Args, Debug)]
struct GdArgs {
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    train: TrainArgs,
    #[arg(long)]
    json: bool,
}

fn run_gd(a: GdArgs) -> Result<()> {
    let (data, diag) = a.data.load(a.json)?;
    let run = a.train.train(&data)?;
    // The QP at GD's final vertex is a free certificate of how far GD is from the best
    // network with its own activation patterns.
    let at_pattern = QpSolver::default().solve(&data, &run.network.units_at(&data))?;
    if a.json {
        return print_json(&json!({"data": data_json(&data, &diag), "run": run,
            "qp_at_final_pattern": at_pattern.loss}));
    }
    out!(
        "{} lr {} for {} steps from seed {}",
        run.optimizer.name(),
        run.lr,
        run.steps,
        a.train.seed
    );
    for (step, loss) in &run.trajectory {
        out!("  step {step:>7}  loss {loss:.10e}");
    }
    out!(
        "final loss {:.10e}; QP optimum at its final activation patterns {:.10e}",
        run.final_loss,
        at_pattern.loss
    );
    for line in network_lines(&run.network) {
        out!("{line}");
    }
    Ok(())
}

#[derive(Args, Debug)]
struct SearchArgs {
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    train: TrainArgs,
    /// Start at the vertex of the random initialisation or of gradient training's result.
    #[arg(long, value_enum, default_value = "random")]
    init: Init,
    /// Take the first improving neighbour (seeded random order) instead of the best.
    #[arg(long)]
    first_improvement: bool,
    /// Budget of accepted moves.
    #[arg(long, default_value_t = 1000)]
    max_steps: usize,
    /// Write the final units' patterns (patterns-file format).
    #[arg(long)]
    save_patterns: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

fn run_search(a: SearchArgs) -> Result<()> {
    let (data, diag) = a.data.load(a.json)?;
    let (start, gd_run) = match a.init {
        Init::Random => (a.train.init(&data)?.units_at(&data), None),
        Init::Gd => {
            let run = a.train.train(&data)?;
            (run.network.units_at(&data), Some(run))
        }
    };
    let gd_loss = gd_run.as_ref().map(|r| r.final_loss);
    let opts = search::Options {
        first_improvement: a.first_improvement,
        max_steps: a.max_steps,
        seed: a.train.seed,
    };
    let bar = progress::spinner("moves");
    let started = Instant::now();
    let incumbent = gd_run.as_ref().map(|r| &r.network);
    let run = search::greedy(
        &data,
        start,
        incumbent,
        &opts,
        &mut QpSolver::default(),
        &bar,
    )?;
    bar.finish_and_clear();
    if let Some(path) = &a.save_patterns {
        patterns::save(path, &run.units)?;
    }
    if a.json {
        return print_json(&json!({"data": data_json(&data, &diag), "gd_loss": gd_loss,
            "run": run, "seconds": started.elapsed().as_secs_f64()}));
    }
    if let Some(l) = gd_loss {
        out!("gradient training ended at loss {l:.10e}; searching from its vertex");
    }
    out!("step        loss              move");
    out!("   0  {:.10e}  start", run.initial_loss);
    for (s, m) in run.moves.iter().enumerate() {
        out!(
            "{:>4}  {:.10e}  unit {} flips example {} ({} neighbours tried)",
            s + 1,
            m.loss,
            m.unit,
            m.example,
            m.neighbours_evaluated
        );
    }
    out!(
        "stopped: {} after {} moves; final loss {:.10e} ({} QPs, {} LPs, {:.2}s)",
        run.stopped,
        run.moves.len(),
        run.final_loss,
        run.qp_solves,
        run.lp_solves,
        started.elapsed().as_secs_f64()
    );
    if run.failed_neighbours > 0 {
        eprintln!(
            "warning: {} neighbour QPs failed (solver status or constraint check) and were skipped",
            run.failed_neighbours
        );
    }
    for line in network_lines(&run.solution.network) {
        out!("{line}");
    }
    Ok(())
}

#[derive(Args, Debug)]
struct BruteArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Hidden units m.
    #[arg(long)]
    units: usize,
    /// Refuse when more than this many QPs would be needed.
    #[arg(long, default_value_t = brute::DEFAULT_LIMIT)]
    limit: u64,
    #[arg(long)]
    json: bool,
}

fn run_brute(a: BruteArgs) -> Result<()> {
    let (data, diag) = a.data.load(a.json)?;
    let started = Instant::now();
    let best = brute::solve(&data, a.units, a.limit, &|n| progress::bar(n, "QPs"))?;
    if a.json {
        return print_json(
            &json!({"data": data_json(&data, &diag), "vertices": best.vertices,
            "tuples": best.tuples, "failed": best.failed, "units": best.units,
            "solution": solution_json(&best.solution), "seconds": started.elapsed().as_secs_f64()}),
        );
    }
    out!(
        "global optimum over {} vertex tuples ({} vertices, {} units): loss {:.10e} ({:.2}s)",
        best.tuples,
        best.vertices,
        a.units,
        best.loss,
        started.elapsed().as_secs_f64()
    );
    if best.failed > 0 {
        eprintln!(
            "warning: {} QPs failed and were excluded; the optimum is over the rest",
            best.failed
        );
    }
    for u in &best.units {
        out!("  {:+} {}", u.sign, u.bits());
    }
    print_solution(&best.solution)
}

#[derive(Args, Debug)]
struct CompareArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Hidden units m.
    #[arg(long)]
    units: usize,
    /// Number of seeds K (seeds first-seed..first-seed+K).
    #[arg(long, default_value_t = 20)]
    seeds: usize,
    #[arg(long, default_value_t = 0)]
    first_seed: u64,
    /// Full-batch steps of gd and adam.
    #[arg(long, default_value_t = 5000)]
    steps: usize,
    #[arg(long, default_value_t = 0.05)]
    gd_lr: f64,
    #[arg(long, default_value_t = 0.01)]
    adam_lr: f64,
    /// Move budget of greedy search.
    #[arg(long, default_value_t = 1000)]
    max_steps: usize,
    #[arg(long)]
    first_improvement: bool,
    /// Where to write the SVG plot of final losses.
    #[arg(long, default_value = "zonotope-compare.svg")]
    plot: PathBuf,
    #[arg(long)]
    json: bool,
}

fn compare_config(a: &CompareArgs) -> compare::Config {
    compare::Config {
        units: a.units,
        seeds: a.seeds,
        first_seed: a.first_seed,
        steps: a.steps,
        gd_lr: a.gd_lr,
        adam_lr: a.adam_lr,
        search_max_steps: a.max_steps,
        first_improvement: a.first_improvement,
    }
}

fn run_compare(a: CompareArgs) -> Result<()> {
    anyhow::ensure!(a.units >= 1, "--units must be at least 1");
    let problem = if a.data.data.is_some() || !a.data.synthetic {
        let (data, _) = a.data.load(a.json)?;
        compare::Problem::Fixed(data)
    } else {
        compare::Problem::Synthetic(a.data.spec())
    };
    let cfg = compare_config(&a);
    let bar = progress::bar(a.seeds as u64, "seeds");
    let started = Instant::now();
    let report = compare::run(&problem, &cfg, &bar)?;
    bar.finish_and_clear();
    let title = format!("final loss over {} seeds, m = {} units", a.seeds, a.units);
    fisherkit_common::atomic::write_bytes(
        &a.plot,
        plot::paired_losses_svg(&title, &report.columns()).as_bytes(),
    )?;
    if a.json {
        return print_json(
            &json!({"report": report, "plot": a.plot, "seconds": started.elapsed().as_secs_f64()}),
        );
    }
    print_compare(&report)?;
    out!(
        "plot written to {} ({:.1}s)",
        a.plot.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn print_compare(r: &compare::Report) -> Result<()> {
    out!("seed   initial        gd             adam           search         moves");
    for s in &r.seeds {
        out!(
            "{:>4}   {:.6e}   {:.6e}   {:.6e}   {:.6e}   {}",
            s.seed,
            s.initial_loss,
            s.gd,
            s.adam,
            s.search,
            s.search_moves
        );
    }
    out!();
    out!("method   mean           median         min            max");
    for (name, s) in [("gd", &r.gd), ("adam", &r.adam), ("search", &r.search)] {
        out!(
            "{name:<8} {:.6e}   {:.6e}   {:.6e}   {:.6e}",
            s.mean,
            s.median,
            s.min,
            s.max
        );
    }
    out!();
    out!("search vs   wins  ties  losses  Wilcoxon signed-rank p (two-sided)");
    for (name, p) in [("gd", &r.search_vs_gd), ("adam", &r.search_vs_adam)] {
        out!(
            "{name:<10} {:>5} {:>5} {:>7}  {:.4} ({})",
            p.wins,
            p.ties,
            p.losses,
            p.p_value,
            p.method
        );
    }
    Ok(())
}

#[derive(Args, Debug)]
struct SensitivityArgs {
    /// Perturbations ε of the second point (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = sensitivity::DEFAULT_EPSILONS)]
    eps: Vec<f64>,
    #[arg(long)]
    json: bool,
}

fn run_sensitivity(a: SensitivityArgs) -> Result<()> {
    anyhow::ensure!(
        a.eps.iter().all(|e| e.is_finite()),
        "--eps values must be finite"
    );
    let rows = sensitivity::table(&a.eps)?;
    if a.json {
        return print_json(&json!({"example": "d=1, m=1, x=(0, eps), y=(1, 2)", "rows": rows}));
    }
    out!("d = 1, m = 1, x = (0, ε), y = (1, 2): exact optimum by brute force");
    out!("ε          vertices  optimal loss   ‖w‖            best unit");
    for r in &rows {
        out!(
            "{:<10.1e} {:>8}  {:.6e}   {:.6e}   {:+} {} ({})",
            r.epsilon,
            r.vertices,
            r.optimal_loss,
            r.weight_norm,
            r.sign,
            r.pattern,
            r.solver_status
        );
    }
    out!("at ε = 0 the points coincide (degenerate): the best network is a constant, loss 0.25;");
    out!("any ε ≠ 0 adds patterns and the loss drops to 0 with weights ~1/ε: the optimum is discontinuous.");
    Ok(())
}

pub fn zonotope(args: ZonotopeArgs) -> Result<()> {
    match args.command {
        Command::Vertices(a) => run_vertices(a),
        Command::Solve(a) => run_solve(a),
        Command::Construct(a) => run_construct(a),
        Command::Search(a) => run_search(a),
        Command::Gd(a) => run_gd(a),
        Command::Brute(a) => run_brute(a),
        Command::Compare(a) => run_compare(a),
        Command::Sensitivity(a) => run_sensitivity(a),
    }
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// QP workload: examples, input dimension, units, number of neighbouring-vertex QPs.
    #[arg(long, default_value_t = 100)]
    n: usize,
    #[arg(long, default_value_t = 2)]
    d: usize,
    #[arg(long, default_value_t = 4)]
    m: usize,
    #[arg(long, default_value_t = 2000)]
    solves: usize,
    /// QPs handed to the Python peer (it is much slower).
    #[arg(long, default_value_t = 200)]
    peer_solves: usize,
    /// Compare run: examples, units, seeds (single-threaded on both sides).
    #[arg(long, default_value_t = 40)]
    compare_n: usize,
    #[arg(long, default_value_t = 3)]
    compare_m: usize,
    #[arg(long, default_value_t = 4)]
    compare_seeds: usize,
    #[arg(long, default_value_t = 2000)]
    compare_steps: usize,
    /// Python interpreter with cvxpy, clarabel and numpy; empty to skip the peer.
    #[arg(long, default_value = "python3")]
    python: String,
    #[arg(long, default_value = "scripts/zonotope_peer.py")]
    peer_script: PathBuf,
    /// Where the problem files for the peer are written.
    #[arg(long, default_value = "target/zonotope-bench")]
    workdir: PathBuf,
}

fn run_peer(a: &BenchArgs, mode: &str, input: &std::path::Path) -> Result<Option<Value>> {
    if a.python.is_empty() {
        return Ok(None);
    }
    let out = std::process::Command::new(&a.python)
        .arg(&a.peer_script)
        .arg(mode)
        .arg(input)
        .output()
        .with_context(|| format!("running {} {}", a.python, a.peer_script.display()))?;
    if !out.status.success() {
        eprintln!(
            "warning: Python peer failed ({mode}): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return Ok(None);
    }
    Ok(Some(
        serde_json::from_slice(&out.stdout).context("parsing the peer's JSON output")?,
    ))
}

fn max_relative_difference(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / y.abs().max(1e-12))
        .fold(0.0, f64::max)
}

fn rows_json(data: &Dataset) -> Value {
    (0..data.n)
        .map(|i| data.x[i * data.d..(i + 1) * data.d].to_vec())
        .collect()
}

pub fn bench(a: BenchArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&a.workdir)
        .with_context(|| format!("creating {}", a.workdir.display()))?;
    let (data, walk) = fisherkit_zonotope::bench::neighbour_walk(a.n, a.d, a.m, a.solves, 0)?;
    // Facet-reduced QPs: the oracle starts empty, so finding each new pattern's facets
    // (one LP + a convex hull) is inside the timing.
    let started = Instant::now();
    let mut solver = QpSolver::new(true);
    let mut oracle = fisherkit_zonotope::vertices::Oracle::new(&data);
    let losses = walk
        .iter()
        .map(|u| solver.solve_reduced(&data, u, &mut oracle).map(|s| s.loss))
        .collect::<Result<Vec<f64>>>()?;
    let mut rates = vec![walk.len() as f64 / started.elapsed().as_secs_f64()];
    let mut full_losses = Vec::new();
    for reuse in [true, false] {
        let mut solver = QpSolver::new(reuse);
        let started = Instant::now();
        full_losses = walk
            .iter()
            .map(|u| solver.solve(&data, u).map(|s| s.loss))
            .collect::<Result<Vec<f64>>>()?;
        rates.push(walk.len() as f64 / started.elapsed().as_secs_f64());
    }
    let agree = max_relative_difference(&losses, &full_losses);
    out!(
        "QP solves at neighbouring vertices, n={} d={} m={} ({} QPs):",
        a.n,
        a.d,
        a.m,
        walk.len()
    );
    out!(
        "  rust, facet constraints only (default path):  {:>9.1} solves/s",
        rates[0]
    );
    out!(
        "  rust, all m·n constraints, solver reused:     {:>9.1} solves/s",
        rates[1]
    );
    out!(
        "  rust, all m·n constraints, fresh solver:      {:>9.1} solves/s",
        rates[2]
    );
    out!(
        "  facet-only vs all-constraint losses: max relative difference {agree:.1e} ({} facet-only solves fell back to all constraints)",
        solver.fallbacks()
    );
    let peer_walk = &walk[..a.peer_solves.min(walk.len())];
    let problems: Vec<Value> = peer_walk
        .iter()
        .map(|units| json!({"signs": units.iter().map(|u| u.sign).collect::<Vec<_>>(), "patterns": units.iter().map(|u| u.bits()).collect::<Vec<_>>()}))
        .collect();
    let qp_file = a.workdir.join("qp_problems.json");
    fisherkit_common::atomic::write_json(
        &qp_file,
        &json!({"x": rows_json(&data), "y": data.y, "problems": problems}),
    )?;
    let mut report = json!({"qp": {"n": a.n, "d": a.d, "m": a.m, "solves": walk.len(), "rust_facets_per_s": rates[0], "rust_all_reused_per_s": rates[1], "rust_all_fresh_per_s": rates[2], "facets_vs_all_max_relative_difference": agree}});
    if let Some(peer) = run_peer(&a, "qp", &qp_file)? {
        let peer_rate = peer["solves_per_s"].as_f64().unwrap_or(f64::NAN);
        let peer_losses: Vec<f64> = serde_json::from_value(peer["losses"].clone())?;
        let max_rel = max_relative_difference(&peer_losses, &losses);
        out!(
            "  python cvxpy + clarabel:                      {:>9.1} solves/s ({} QPs)",
            peer_rate,
            peer_losses.len()
        );
        out!(
            "  ratio (rust default / python): {:.1}×; all-constraint rust / python: {:.1}×; max relative loss difference {:.1e}",
            rates[0] / peer_rate,
            rates[1] / peer_rate,
            max_rel
        );
        report["qp"]["python_per_s"] = json!(peer_rate);
        report["qp"]["ratio"] = json!(rates[0] / peer_rate);
        report["qp"]["max_relative_loss_difference"] = json!(max_rel);
    }
    let spec = data::SyntheticSpec {
        n: a.compare_n,
        d: a.d,
        teacher_units: 8,
        noise: 0.1,
        seed: 0,
    };
    let problem = compare::Problem::Synthetic(spec);
    let cfg = compare::Config {
        units: a.compare_m,
        seeds: a.compare_seeds,
        first_seed: 0,
        steps: a.compare_steps,
        gd_lr: gd::Optimizer::Gd.default_lr(),
        adam_lr: gd::Optimizer::Adam.default_lr(),
        search_max_steps: 1000,
        first_improvement: false,
    };
    let started = Instant::now();
    let seeds = (0..cfg.seeds as u64)
        .map(|s| compare::run_seed(&problem, &cfg, s))
        .collect::<Result<Vec<_>>>()?;
    let rust_seconds = started.elapsed().as_secs_f64();
    out!(
        "compare run, n={} d={} m={} seeds={} steps={} (single thread):",
        a.compare_n,
        a.d,
        a.compare_m,
        a.compare_seeds,
        a.compare_steps
    );
    out!("  rust: {rust_seconds:.2}s");
    let cases: Vec<Value> = (0..cfg.seeds as u64)
        .map(|s| -> Result<Value> {
            let data = problem.data_for(s)?;
            let init = Network::random(data.d, cfg.units, s);
            let w: Vec<Vec<f64>> = (0..init.units()).map(|j| init.unit_weights(j).to_vec()).collect();
            Ok(json!({"seed": s, "x": rows_json(&data), "y": data.y, "signs": init.signs, "init": w}))
        })
        .collect::<Result<_>>()?;
    let compare_file = a.workdir.join("compare_problems.json");
    fisherkit_common::atomic::write_json(
        &compare_file,
        &json!({"gd_lr": cfg.gd_lr, "adam_lr": cfg.adam_lr, "steps": cfg.steps, "max_steps": cfg.search_max_steps, "seeds": cases}),
    )?;
    report["compare"] = json!({"rust_seconds": rust_seconds, "rust": seeds});
    if let Some(peer) = run_peer(&a, "compare", &compare_file)? {
        let py = peer["seconds"].as_f64().unwrap_or(f64::NAN);
        out!("  python: {py:.2}s; ratio {:.1}×", py / rust_seconds);
        out!("  seed  rust gd / adam / search              python gd / adam / search");
        for (r, p) in seeds
            .iter()
            .zip(peer["seeds"].as_array().into_iter().flatten())
        {
            out!(
                "  {:>4}  {:.4e} {:.4e} {:.4e}   {:.4e} {:.4e} {:.4e}",
                r.seed,
                r.gd,
                r.adam,
                r.search,
                p["gd"].as_f64().unwrap_or(f64::NAN),
                p["adam"].as_f64().unwrap_or(f64::NAN),
                p["search"].as_f64().unwrap_or(f64::NAN)
            );
        }
        report["compare"]["python_seconds"] = json!(py);
        report["compare"]["python"] = peer["seeds"].clone();
    }
    fisherkit_common::atomic::write_json(&a.workdir.join("report.json"), &report)?;
    out!("full report: {}", a.workdir.join("report.json").display());
    Ok(())
}
