//! Batching: a fixed number of examples per batch, or a token budget with length
//! bucketing; a deterministic epoch order derived from the seed; a data position that
//! checkpoints record so a resumed run sees exactly the batches it would have seen.

use fisherkit_common::{ensure, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

/// How examples are grouped into (micro-)batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BatchBy {
    /// This many examples per batch, in a random order.
    Examples(usize),
    /// At most this many padded tokens (`rows × (longest input + longest target)`) per
    /// batch; examples are sorted by length so batches hold similar lengths, and the
    /// batch order is random.
    Tokens(usize),
}

/// Where the next micro-batch comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DataPosition {
    pub epoch: u64,
    /// Index of the next batch within the epoch's plan.
    pub batch: usize,
}

fn rng_for(seed: u64, epoch: u64) -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xDA7A)
}

/// The batches of one epoch as lists of example indices. `lengths[i]` is
/// `(input_len, target_len)` of example `i`.
pub fn epoch_plan(
    lengths: &[(usize, usize)],
    by: BatchBy,
    seed: u64,
    epoch: u64,
) -> Result<Vec<Vec<usize>>> {
    ensure!(!lengths.is_empty(), "no training examples");
    let mut rng = rng_for(seed, epoch);
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.shuffle(&mut rng);
    Ok(match by {
        BatchBy::Examples(n) => {
            ensure!(n > 0, "batch size must be positive");
            order.chunks(n).map(<[usize]>::to_vec).collect()
        }
        BatchBy::Tokens(budget) => {
            ensure!(budget > 0, "token budget must be positive");
            // Stable sort of a shuffled order: equal lengths land in a random order.
            order.sort_by_key(|&i| (lengths[i].0, lengths[i].1));
            let mut batches = Vec::new();
            let mut current: Vec<usize> = Vec::new();
            let (mut max_in, mut max_tgt) = (0, 0);
            for i in order {
                let (li, lt) = lengths[i];
                let (new_in, new_tgt) = (max_in.max(li), max_tgt.max(lt));
                if !current.is_empty() && (current.len() + 1) * (new_in + new_tgt) > budget {
                    batches.push(std::mem::take(&mut current));
                    (max_in, max_tgt) = (li, lt);
                } else {
                    (max_in, max_tgt) = (new_in, new_tgt);
                }
                current.push(i);
            }
            if !current.is_empty() {
                batches.push(current);
            }
            batches.shuffle(&mut rng);
            batches
        }
    })
}

/// An endless stream of micro-batches over epochs, resumable from a [`DataPosition`].
pub struct BatchStream {
    lengths: Vec<(usize, usize)>,
    by: BatchBy,
    seed: u64,
    position: DataPosition,
    plan: Vec<Vec<usize>>,
}

impl BatchStream {
    pub fn new(
        lengths: Vec<(usize, usize)>,
        by: BatchBy,
        seed: u64,
        position: DataPosition,
    ) -> Result<Self> {
        let plan = epoch_plan(&lengths, by, seed, position.epoch)?;
        ensure!(
            position.batch <= plan.len(),
            "data position {position:?} is past the end of epoch {} ({} batches): different data than the checkpoint?",
            position.epoch,
            plan.len()
        );
        Ok(Self {
            lengths,
            by,
            seed,
            position,
            plan,
        })
    }

    pub fn position(&self) -> DataPosition {
        self.position
    }

    /// Number of batches in the current epoch.
    pub fn batches_in_epoch(&self) -> usize {
        self.plan.len()
    }

    /// The next micro-batch (example indices).
    pub fn next_batch(&mut self) -> Result<Vec<usize>> {
        if self.position.batch == self.plan.len() {
            self.position = DataPosition {
                epoch: self.position.epoch + 1,
                batch: 0,
            };
            self.plan = epoch_plan(&self.lengths, self.by, self.seed, self.position.epoch)?;
        }
        let batch = self.plan[self.position.batch].clone();
        self.position.batch += 1;
        Ok(batch)
    }
}

/// Number of optimiser steps that `epochs` passes over the data take with `accum`
/// micro-batches per step (the last step of the run may use fewer).
pub fn steps_for_epochs(
    lengths: &[(usize, usize)],
    by: BatchBy,
    seed: u64,
    epochs: u64,
    accum: usize,
) -> Result<u64> {
    let mut micro = 0u64;
    for e in 0..epochs {
        micro += epoch_plan(lengths, by, seed, e)?.len() as u64;
    }
    Ok(micro.div_ceil(accum as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lengths() -> Vec<(usize, usize)> {
        (0..50)
            .map(|i| (3 + (i * 7) % 20, 1 + (i * 3) % 6))
            .collect()
    }

    #[test]
    fn example_batches_cover_each_example_once_per_epoch() {
        let plan = epoch_plan(&lengths(), BatchBy::Examples(8), 1, 0).unwrap();
        assert_eq!(plan.len(), 7);
        let mut all: Vec<usize> = plan.concat();
        all.sort();
        assert_eq!(all, (0..50).collect::<Vec<_>>());
        assert_ne!(
            plan,
            epoch_plan(&lengths(), BatchBy::Examples(8), 1, 1).unwrap(),
            "new order each epoch"
        );
        assert_eq!(
            plan,
            epoch_plan(&lengths(), BatchBy::Examples(8), 1, 0).unwrap(),
            "seeded"
        );
    }

    #[test]
    fn token_batches_respect_the_budget_and_bucket_lengths() {
        let l = lengths();
        let plan = epoch_plan(&l, BatchBy::Tokens(60), 3, 0).unwrap();
        let mut all: Vec<usize> = plan.concat();
        all.sort();
        assert_eq!(all, (0..50).collect::<Vec<_>>());
        for b in &plan {
            let max_in = b.iter().map(|&i| l[i].0).max().unwrap();
            let max_tgt = b.iter().map(|&i| l[i].1).max().unwrap();
            assert!(b.len() == 1 || b.len() * (max_in + max_tgt) <= 60, "{b:?}");
        }
        // Bucketing: padding waste far below a random grouping's.
        let waste = |plan: &[Vec<usize>]| -> usize {
            plan.iter()
                .map(|b| {
                    let m = b.iter().map(|&i| l[i].0).max().unwrap();
                    b.iter().map(|&i| m - l[i].0).sum::<usize>()
                })
                .sum()
        };
        let random = epoch_plan(&l, BatchBy::Examples(50usize.div_ceil(plan.len())), 3, 0).unwrap();
        assert!(
            waste(&plan) * 3 < waste(&random).max(1),
            "{} vs {}",
            waste(&plan),
            waste(&random)
        );
    }

    #[test]
    fn stream_resumes_at_its_position() {
        let mut a =
            BatchStream::new(lengths(), BatchBy::Examples(16), 9, DataPosition::default()).unwrap();
        let first: Vec<Vec<usize>> = (0..6).map(|_| a.next_batch().unwrap()).collect();
        let mut b =
            BatchStream::new(lengths(), BatchBy::Examples(16), 9, DataPosition::default()).unwrap();
        for _ in 0..3 {
            b.next_batch().unwrap();
        }
        let mut c = BatchStream::new(lengths(), BatchBy::Examples(16), 9, b.position()).unwrap();
        let rest: Vec<Vec<usize>> = (0..3).map(|_| c.next_batch().unwrap()).collect();
        assert_eq!(&first[3..], &rest[..]);
        assert_eq!(c.position(), DataPosition { epoch: 1, batch: 2 });
        assert_eq!(
            steps_for_epochs(&lengths(), BatchBy::Examples(16), 9, 3, 2).unwrap(),
            6
        );
    }
}
