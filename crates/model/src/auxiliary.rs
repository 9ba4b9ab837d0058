//! Auxiliary training losses produced inside a forward pass — a mixture-of-experts
//! router's load-balancing and z-losses — gathered for the trainer without widening every
//! forward signature of every architecture.
//!
//! The trainer runs `collect(|| model.logits(batch))`; a part that has an auxiliary loss
//! calls [`push`] during that forward pass, on the same thread. Outside a collection
//! (scoring, decoding, Fisher passes) [`is_collecting`] is false and parts skip the work.

use std::cell::RefCell;

use burn::tensor::Tensor;

thread_local! {
    static COLLECTED: RefCell<Option<Vec<Tensor<1>>>> = const { RefCell::new(None) };
}

/// Run `forward` and return its result with every auxiliary loss pushed during it (in
/// push order). Collections nest: an inner one takes only its own losses.
pub fn collect<T>(forward: impl FnOnce() -> T) -> (T, Vec<Tensor<1>>) {
    /// Restores the enclosing collection even when `forward` panics.
    struct Restore(Option<Vec<Tensor<1>>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let outer = self.0.take();
            COLLECTED.with(|c| *c.borrow_mut() = outer);
        }
    }
    let restore = Restore(COLLECTED.with(|c| c.borrow_mut().replace(Vec::new())));
    let out = forward();
    let losses = COLLECTED.with(|c| c.borrow_mut().take().unwrap_or_default());
    drop(restore);
    (out, losses)
}

/// Whether a [`collect`] is running on this thread.
pub fn is_collecting() -> bool {
    COLLECTED.with(|c| c.borrow().is_some())
}

/// Add a weighted auxiliary loss `[1]` to the running collection (ignored outside one).
pub fn push(loss: Tensor<1>) {
    COLLECTED.with(|c| {
        if let Some(losses) = c.borrow_mut().as_mut() {
            losses.push(loss);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    fn value(t: &Tensor<1>) -> f32 {
        t.clone().into_scalar::<f32>()
    }

    /// Losses pushed inside a collection come back in order; outside one they are
    /// dropped; a nested collection takes its own and leaves the outer ones.
    #[test]
    fn collections_gather_their_own_pushes() {
        let device = Device::flex();
        let scalar = |v: f32| Tensor::<1>::from_floats([v], &device);
        push(scalar(9.0));
        assert!(!is_collecting());
        let ((), outer) = collect(|| {
            assert!(is_collecting());
            push(scalar(1.0));
            let ((), inner) = collect(|| push(scalar(2.0)));
            assert_eq!(inner.iter().map(value).collect::<Vec<_>>(), vec![2.0]);
            push(scalar(3.0));
        });
        assert_eq!(outer.iter().map(value).collect::<Vec<_>>(), vec![1.0, 3.0]);
        assert!(!is_collecting());
    }
}
