//! Where a forward pass spends its time, by kind of op (`easel bench --profile`).
//!
//! Off by default: then a scope costs one relaxed atomic load. When on, each `scope` adds its
//! wall time to its kind. Scopes do not nest in the totals: an inner scope's time is taken out of
//! the enclosing one, so the kinds add up to the pass's time and "other" is what no scope covers.
//! Totals are per thread: the model's forward pass runs its scopes on the calling thread (the
//! kernels' own worker threads are inside a scope), and tests running side by side stay apart.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The kinds a step's time is split into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Convolution,
    Attention,
    Linear,
    Normalisation,
    ElementWise,
    Copy,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Convolution,
        Kind::Attention,
        Kind::Linear,
        Kind::Normalisation,
        Kind::ElementWise,
        Kind::Copy,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Kind::Convolution => "convolution",
            Kind::Attention => "attention (scores, softmax, values)",
            Kind::Linear => "matmul / linear",
            Kind::Normalisation => "normalisation (group, layer)",
            Kind::ElementWise => "element-wise (adds, activations)",
            Kind::Copy => "copies (layout, concat, upsample)",
        }
    }
}

static ENABLED: AtomicBool = AtomicBool::new(false);

thread_local! {
    static TOTALS: RefCell<[(Duration, u64); 6]> = const { RefCell::new([(Duration::ZERO, 0); 6]) };
    // Time spent in scopes nested inside the current one, per nesting level.
    static CHILD_TIME: RefCell<Vec<Duration>> = const { RefCell::new(Vec::new()) };
}

/// Turns recording on or off and clears this thread's totals.
pub fn enable(on: bool) {
    reset();
    ENABLED.store(on, Ordering::Relaxed);
}

pub fn reset() {
    TOTALS.with(|t| *t.borrow_mut() = [(Duration::ZERO, 0); 6]);
}

/// The recorded (time, calls) per kind, in `Kind::ALL` order.
pub fn totals() -> Vec<(Kind, Duration, u64)> {
    let t = TOTALS.with(|t| *t.borrow());
    Kind::ALL
        .iter()
        .zip(t)
        .map(|(k, (d, n))| (*k, d, n))
        .collect()
}

/// Runs `f`, charging its time (less that of nested scopes) to `kind` when profiling is on.
#[inline]
pub fn scope<R>(kind: Kind, f: impl FnOnce() -> R) -> R {
    if !ENABLED.load(Ordering::Relaxed) {
        return f();
    }
    CHILD_TIME.with(|c| c.borrow_mut().push(Duration::ZERO));
    let start = Instant::now();
    let out = f();
    let elapsed = start.elapsed();
    let children = CHILD_TIME.with(|c| {
        let mut c = c.borrow_mut();
        let mine = c.pop().unwrap_or_default();
        if let Some(parent) = c.last_mut() {
            *parent += elapsed;
        }
        mine
    });
    TOTALS.with(|t| {
        let slot = &mut t.borrow_mut()[kind as usize];
        slot.0 += elapsed.saturating_sub(children);
        slot.1 += 1;
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn busy(d: Duration) {
        let t = Instant::now();
        while t.elapsed() < d {
            std::hint::spin_loop();
        }
    }

    #[test]
    fn nested_scopes_are_not_counted_twice() {
        enable(true);
        let wall = Instant::now();
        scope(Kind::Copy, || {
            busy(Duration::from_millis(5));
            scope(Kind::Attention, || busy(Duration::from_millis(8)));
        });
        let wall = wall.elapsed();
        let t = totals();
        enable(false);
        let get = |k: Kind| t.iter().find(|(kk, _, _)| *kk == k).unwrap();
        let (copy, attention) = (get(Kind::Copy), get(Kind::Attention));
        assert_eq!((copy.2, attention.2), (1, 1), "one call each");
        assert!(attention.1 >= Duration::from_millis(8));
        assert!(copy.1 >= Duration::from_millis(5));
        // The copy scope's 13 ms include the attention's 8: charged once, the two fit the wall.
        assert!(copy.1 + attention.1 <= wall, "{t:?} in {wall:?}");
    }
}
