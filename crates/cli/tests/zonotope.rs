//! End-to-end tests of `fisherkit zonotope …` through the built binary.

use std::path::Path;
use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fisherkit"))
        .arg("zonotope")
        .args(args)
        .env("FISHERKIT_NO_PROGRESS", "1")
        .output()
        .expect("binary runs")
}

fn json(args: &[&str]) -> serde_json::Value {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("valid JSON on stdout")
}

fn failure(args: &[&str]) -> String {
    let out = run(args);
    assert!(!out.status.success(), "{args:?} should fail");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!err.contains("panicked"), "{err}");
    err
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn bad_csv_inputs_fail_with_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("x1,x2,y\n1,2,3\n4,oops,6\n", "bad.csv:3:2"),
        ("1,2,3\n4,5\n", "ragged"),
        ("1,2\nNaN,3\n", "bad.csv:2:1"),
        ("1,2\n3,inf\n", "non-finite"),
        ("", "empty"),
    ];
    for (text, expected) in cases {
        let path = write(dir.path(), "bad.csv", text);
        let err = failure(&["vertices", "--data", &path]);
        assert!(err.contains(expected), "{text:?}: {err}");
    }
    let err = failure(&["vertices", "--data", "/nonexistent/zonotope.csv"]);
    assert!(err.contains("/nonexistent/zonotope.csv"), "{err}");
    let err = failure(&["vertices"]);
    assert!(
        err.contains("--data") && err.contains("--synthetic"),
        "{err}"
    );
}

#[test]
fn duplicates_are_explained_and_infeasible_patterns_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let data = write(dir.path(), "dup.csv", "x,y\n0,1\n0,2\n1,0\n2,1\n");
    let v = json(&["vertices", "--data", &data, "--json"]);
    // 3 distinct positions on a line: 2·3 vertices, and the report says why.
    assert_eq!(v["vertices"], 6);
    assert_eq!(
        v["data"]["diagnostics"]["duplicate_inputs"][0],
        serde_json::json!([1, 2])
    );
    assert_eq!(v["data"]["diagnostics"]["conflicting_targets"], true);
    let out = run(&["vertices", "--data", &data]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("duplicated") && err.contains("positive floor"),
        "{err}"
    );
    // Activating rows 1,2 and 4 but not 3 is impossible on a line.
    let pats = write(dir.path(), "p.txt", "+1 1100\n-1 1101\n");
    let err = failure(&["solve", "--data", &data, "--patterns", &pats]);
    assert!(
        err.contains("p.txt:2") && err.contains("infeasible"),
        "{err}"
    );
}

#[test]
fn brute_force_is_no_worse_than_any_method_on_tiny_problems() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("tiny.csv");
    let data = data.to_str().unwrap();
    for units in ["1", "2"] {
        let common = [
            "--synthetic",
            "--n",
            "7",
            "--d",
            "1",
            "--teacher-units",
            "3",
            "--noise",
            "0.1",
        ];
        let with = |cmd: &[&str]| -> Vec<String> {
            cmd.iter()
                .chain(common.iter())
                .map(|s| s.to_string())
                .chain(["--json".into()])
                .collect()
        };
        let args = with(&["brute", "--units", units, "--save-data", data]);
        let brute = json(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let best = brute["solution"]["loss"].as_f64().unwrap();
        // The optimum is checked against a solve of its own patterns file.
        assert!(brute["solution"]["max_violation"].as_f64().unwrap() <= 1e-6);
        let mut others = Vec::new();
        for seed in ["0", "1", "2"] {
            for extra in [
                &["search", "--init", "random"][..],
                &["search", "--init", "gd", "--steps", "500"][..],
            ] {
                let mut cmd = extra.to_vec();
                cmd.extend(["--units", units, "--seed", seed]);
                let r = json(&with(&cmd).iter().map(String::as_str).collect::<Vec<_>>());
                others.push(r["run"]["final_loss"].as_f64().unwrap());
                let traj: Vec<f64> =
                    serde_json::from_value(r["run"]["trajectory"].clone()).unwrap();
                assert!(
                    traj.windows(2).all(|w| w[1] < w[0]),
                    "greedy must be monotone: {traj:?}"
                );
                if let Some(gd) = r["gd_loss"].as_f64() {
                    assert!(
                        r["run"]["final_loss"].as_f64().unwrap() <= gd,
                        "search from GD ended above it"
                    );
                }
            }
            for opt in ["gd", "adam"] {
                let r = json(
                    &with(&[
                        "gd",
                        "--units",
                        units,
                        "--seed",
                        seed,
                        "--optimizer",
                        opt,
                        "--steps",
                        "500",
                    ])
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>(),
                );
                let gd = r["run"]["final_loss"].as_f64().unwrap();
                assert!(r["qp_at_final_pattern"].as_f64().unwrap() <= gd * (1.0 + 1e-6) + 1e-9);
                others.push(gd);
            }
        }
        for o in others {
            assert!(
                best <= o * (1.0 + 1e-6) + 1e-9,
                "m={units}: brute {best} > {o}"
            );
        }
    }
}

#[test]
fn brute_refuses_large_problems_with_the_tuple_count() {
    let err = failure(&["brute", "--synthetic", "--n", "30", "--units", "3"]);
    // 872 vertices (2·Σ_{k≤2} C(29,k)), 3 units.
    assert!(err.contains("872 vertices") && err.contains("QPs"), "{err}");
}

#[test]
fn construct_solve_sensitivity_and_compare_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let pats = dir.path().join("c.txt");
    let data = dir.path().join("c.csv");
    let c = json(&[
        "construct",
        "--synthetic",
        "--n",
        "24",
        "--noise",
        "0.3",
        "--save-patterns",
        pats.to_str().unwrap(),
        "--save-data",
        data.to_str().unwrap(),
        "--json",
    ]);
    assert!(c["construction"]["loss"].as_f64().unwrap() <= 1e-8);
    assert_eq!(c["construction"]["units"], 16);
    // The saved patterns are feasible and the QP there also interpolates.
    let s = json(&[
        "solve",
        "--data",
        data.to_str().unwrap(),
        "--patterns",
        pats.to_str().unwrap(),
        "--json",
    ]);
    assert!(s["solution"]["loss"].as_f64().unwrap() <= 1e-6, "{s}");
    assert_eq!(s["solution"]["status"], "Solved");
    let t = json(&["sensitivity", "--eps", "0,0.001", "--json"]);
    assert!((t["rows"][0]["optimal_loss"].as_f64().unwrap() - 0.25).abs() < 1e-7);
    assert!(t["rows"][1]["optimal_loss"].as_f64().unwrap() < 1e-6);
    let plot = dir.path().join("cmp.svg");
    let r = json(&[
        "compare",
        "--synthetic",
        "--n",
        "12",
        "--units",
        "2",
        "--seeds",
        "3",
        "--steps",
        "300",
        "--plot",
        plot.to_str().unwrap(),
        "--json",
    ]);
    let seeds = r["report"]["seeds"].as_array().unwrap();
    assert_eq!(seeds.len(), 3);
    let p = &r["report"]["search_vs_gd"];
    assert_eq!(
        p["wins"].as_u64().unwrap() + p["ties"].as_u64().unwrap() + p["losses"].as_u64().unwrap(),
        3
    );
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert_eq!(svg.matches("<circle").count(), 9);
}
