//! Learning-rate schedules. `step` is 1-based: the number of the update being taken.

use fisherkit_common::{bail, ensure, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScheduleKind {
    /// `lr`, after an optional linear warm-up.
    Constant,
    /// T5's `lr · sqrt(w / max(step, w))`: constant `lr` for the first `w` warm-up steps,
    /// then decaying as `1/sqrt(step)`. With `lr = 0.01, w = 10⁴` it is the paper's
    /// `1/sqrt(max(step, 10⁴))`.
    InverseSqrt,
    /// Linear warm-up to `lr` over `w` steps, then linear decay to 0 at the last step.
    LinearDecay,
}

impl std::str::FromStr for ScheduleKind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "constant" => Self::Constant,
            "inverse-sqrt" | "rsqrt" => Self::InverseSqrt,
            "linear-decay" | "linear" => Self::LinearDecay,
            other => {
                bail!("unknown schedule {other:?}; expected constant, inverse-sqrt or linear-decay")
            }
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub kind: ScheduleKind,
    /// Peak learning rate.
    pub lr: f64,
    pub warmup_steps: u64,
    /// Total number of updates (for `linear-decay`).
    pub total_steps: u64,
}

impl Schedule {
    pub fn new(kind: ScheduleKind, lr: f64, warmup_steps: u64, total_steps: u64) -> Result<Self> {
        ensure!(
            lr.is_finite() && lr > 0.0,
            "learning rate must be positive, got {lr}"
        );
        if kind == ScheduleKind::LinearDecay {
            ensure!(
                total_steps > warmup_steps,
                "linear-decay needs more total steps ({total_steps}) than warm-up steps ({warmup_steps})"
            );
        }
        Ok(Self {
            kind,
            lr,
            warmup_steps,
            total_steps,
        })
    }

    /// Learning rate of update `step` (1-based).
    pub fn lr_at(&self, step: u64) -> f64 {
        let step = step.max(1) as f64;
        let w = self.warmup_steps as f64;
        let ramp = if w > 0.0 { (step / w).min(1.0) } else { 1.0 };
        match self.kind {
            ScheduleKind::Constant => self.lr * ramp,
            ScheduleKind::InverseSqrt => self.lr * (w.max(1.0) / step.max(w.max(1.0))).sqrt(),
            ScheduleKind::LinearDecay => {
                if step <= w {
                    self.lr * ramp
                } else {
                    let total = self.total_steps as f64;
                    self.lr * ((total - step) / (total - w)).max(0.0)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * b.abs().max(1.0)
    }

    #[test]
    fn t5_inverse_sqrt_is_one_over_sqrt_max_step_1e4() {
        let s = Schedule::new(ScheduleKind::InverseSqrt, 0.01, 10_000, 0).unwrap();
        for step in [1u64, 500, 10_000, 10_001, 40_000, 1_000_000] {
            assert!(
                close(s.lr_at(step), 1.0 / (step.max(10_000) as f64).sqrt()),
                "step {step}"
            );
        }
        let no_warmup = Schedule::new(ScheduleKind::InverseSqrt, 0.5, 0, 0).unwrap();
        assert!(close(no_warmup.lr_at(4), 0.25));
    }

    #[test]
    fn constant_and_linear_decay_at_known_steps() {
        let c = Schedule::new(ScheduleKind::Constant, 1e-3, 0, 0).unwrap();
        assert!(close(c.lr_at(1), 1e-3) && close(c.lr_at(123_456), 1e-3));
        let cw = Schedule::new(ScheduleKind::Constant, 1e-3, 10, 0).unwrap();
        assert!(
            close(cw.lr_at(1), 1e-4)
                && close(cw.lr_at(5), 5e-4)
                && close(cw.lr_at(10), 1e-3)
                && close(cw.lr_at(11), 1e-3)
        );
        let l = Schedule::new(ScheduleKind::LinearDecay, 1.0, 10, 110).unwrap();
        assert!(close(l.lr_at(5), 0.5));
        assert!(close(l.lr_at(10), 1.0));
        assert!(close(l.lr_at(60), 0.5));
        assert!(close(l.lr_at(110), 0.0));
        assert!(Schedule::new(ScheduleKind::LinearDecay, 1.0, 10, 10).is_err());
        assert!("cosine".parse::<ScheduleKind>().is_err());
    }
}
