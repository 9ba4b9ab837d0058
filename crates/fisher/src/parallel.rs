//! Concurrency over the examples of a batch. Each example is computed by one worker
//! with its own forward and backward passes; results come back in input order.

use anyhow::{anyhow, Result};

/// `f(i, &items[i])` for every item, on up to `available_parallelism` threads,
/// returned in item order. The first error (in item order) wins.
pub fn map_in_order<T, R, F>(items: &[T], f: F) -> Result<Vec<R>>
where
    T: Sync,
    R: Send,
    F: Fn(usize, &T) -> Result<R> + Sync,
{
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(items.len())
        .max(1);
    if workers == 1 {
        return items.iter().enumerate().map(|(i, t)| f(i, t)).collect();
    }
    let f = &f;
    let mut slots: Vec<Option<Result<R>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                scope.spawn(move || {
                    (w..items.len())
                        .step_by(workers)
                        .map(|i| (i, f(i, &items[i])))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut slots: Vec<Option<Result<R>>> = (0..items.len()).map(|_| None).collect();
        for h in handles {
            match h.join() {
                Ok(done) => {
                    for (i, r) in done {
                        slots[i] = Some(r);
                    }
                }
                Err(_) => return vec![Some(Err(anyhow!("a worker thread panicked")))],
            }
        }
        slots
    });
    slots
        .iter_mut()
        .map(|s| {
            s.take()
                .unwrap_or_else(|| Err(anyhow!("a worker thread panicked")))
        })
        .collect()
}
