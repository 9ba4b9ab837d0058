//! The patterns file: one unit per line, `<sign> <bits>`, e.g. `+1 0110…` where bit i is
//! whether example i (data row order) activates the unit. `#` starts a comment line.

use crate::data::Dataset;
use crate::network::Unit;
use crate::vertices::Oracle;
use anyhow::{bail, ensure, Context, Result};
use std::io::Write;
use std::path::Path;

/// Units with the line each came from.
#[derive(Debug)]
pub struct PatternFile {
    pub units: Vec<Unit>,
    pub lines: Vec<usize>,
}

pub fn parse(text: &str, name: &str) -> Result<PatternFile> {
    let mut units = Vec::new();
    let mut lines = Vec::new();
    for (idx, raw) in text.lines().enumerate() {
        let line_no = idx + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.split_whitespace();
        let (Some(sign), Some(bits), None) = (parts.next(), parts.next(), parts.next()) else {
            bail!("{name}:{line_no}: expected `<sign> <bits>`, e.g. `+1 0110`, got {line:?}");
        };
        let sign = match sign {
            "+1" | "+" | "1" => 1,
            "-1" | "-" => -1,
            other => bail!("{name}:{line_no}: sign {other:?} must be +1 or -1"),
        };
        let pattern = bits
            .chars()
            .enumerate()
            .map(|(col, ch)| match ch {
                '1' => Ok(true),
                '0' => Ok(false),
                other => bail!(
                    "{name}:{line_no}: bit {} is {other:?}; patterns are strings of 0 and 1",
                    col + 1
                ),
            })
            .collect::<Result<Vec<bool>>>()?;
        units.push(Unit { sign, pattern });
        lines.push(line_no);
    }
    ensure!(
        !units.is_empty(),
        "{name}: no units found (empty patterns file)"
    );
    Ok(PatternFile { units, lines })
}

/// Read a patterns file and check it against the data: bit counts, and that each pattern
/// is a vertex (an open, non-empty activation region), naming the offending line.
pub fn load(path: &Path, data: &Dataset) -> Result<Vec<Unit>> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {name}"))?;
    let file = parse(&text, &name)?;
    let mut oracle = Oracle::new(data);
    for (unit, line) in file.units.iter().zip(&file.lines) {
        ensure!(
            unit.pattern.len() == data.n,
            "{name}:{line}: pattern has {} bits but the data has {} rows",
            unit.pattern.len(),
            data.n
        );
        ensure!(
            oracle.is_vertex(&unit.pattern)?,
            "{name}:{line}: infeasible pattern: no weight vector w gives exactly these \
             activations (x̃_iᵀw > 0 where the bit is 1, < 0 where it is 0); it is not a \
             vertex of the data's zonotope"
        );
    }
    Ok(file.units)
}

/// Write units in the patterns-file format, atomically.
pub fn save(path: &Path, units: &[Unit]) -> Result<()> {
    fisherkit_common::atomic::write_file(path, |w| {
        writeln!(
            w,
            "# fisherkit zonotope patterns: one unit per line, <sign> <bits> (bit i = row i active)"
        )?;
        for u in units {
            writeln!(w, "{:+} {}", u.sign, u.bits())?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_round_trip_and_errors() {
        let f = parse("# c\n+1 0110\n-1 1111\n", "p").unwrap();
        assert_eq!(f.units.len(), 2);
        assert_eq!(f.units[1].sign, -1);
        assert_eq!(f.units[0].bits(), "0110");
        assert_eq!(f.lines, vec![2, 3]);
        let err = parse("+1 01x0\n", "p").unwrap_err().to_string();
        assert!(err.contains("p:1") && err.contains("bit 3"), "{err}");
        assert!(parse("2 0101\n", "p").is_err());
        assert!(parse("\n", "p").is_err());
    }

    #[test]
    fn infeasible_pattern_rejected_with_line() {
        // d = 1, points 0,1,2: activating 0 and 2 but not 1 is impossible for a halfline.
        let data = crate::data::parse_csv("0,0\n1,1\n2,0\n", "t").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.txt");
        std::fs::write(&path, "+1 011\n-1 101\n").unwrap();
        let err = load(&path, &data).unwrap_err().to_string();
        assert!(
            err.contains("p.txt:2") && err.contains("infeasible"),
            "{err}"
        );
        std::fs::write(&path, "+1 0110\n").unwrap();
        assert!(load(&path, &data)
            .unwrap_err()
            .to_string()
            .contains("4 bits"));
        save(
            &path,
            &[Unit {
                sign: -1,
                pattern: vec![true, true, false],
            }],
        )
        .unwrap();
        let units = load(&path, &data).unwrap();
        assert_eq!(units[0].bits(), "110");
        assert_eq!(units[0].sign, -1);
    }
}
