//! The resource budget: every size computed from input (file headers, flags, traces, shapes
//! for the simulator) is multiplied out with checked arithmetic and compared with one limit on
//! the elements of the largest single allocation it implies, before anything is allocated.
//!
//! The default, [`DEFAULT_MAX_ELEMENTS`] = 2^30 (4 GiB of f32, 8 GiB of f64), fits this
//! project's 24 GiB machines with room for the rest of a run; `--max-elements N` on the command
//! line or `HDP_MAX_ELEMENTS=N` in the environment changes it for the whole process.

use crate::{Error, Result};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Default element budget: 2^30.
pub const DEFAULT_MAX_ELEMENTS: usize = 1 << 30;

/// 0 = not set yet (read `HDP_MAX_ELEMENTS` or use the default on first use).
static MAX_ELEMENTS: AtomicUsize = AtomicUsize::new(0);

/// The budget in force: [`set_max_elements`], else `HDP_MAX_ELEMENTS`, else the default.
pub fn max_elements() -> usize {
    match MAX_ELEMENTS.load(Ordering::Relaxed) {
        0 => {
            let v = std::env::var("HDP_MAX_ELEMENTS")
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .filter(|&v| v > 0)
                .unwrap_or(DEFAULT_MAX_ELEMENTS);
            MAX_ELEMENTS.store(v, Ordering::Relaxed);
            v
        }
        v => v,
    }
}

/// Sets the budget for the rest of the process (at least 1).
pub fn set_max_elements(n: usize) {
    MAX_ELEMENTS.store(n.max(1), Ordering::Relaxed);
}

/// The product of `dims`, or an error naming `what` when it overflows or exceeds the budget.
pub fn check_elements(what: &str, dims: &[usize]) -> Result<usize> {
    let limit = max_elements();
    let total = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    match total {
        Some(n) if n <= limit => Ok(n),
        _ => Err(Error::TooLarge {
            what: what.to_string(),
            dims: dims.to_vec(),
            limit,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_and_budget_are_errors() {
        assert_eq!(check_elements("x", &[3, 4]).unwrap(), 12);
        let e = check_elements("scores", &[1 << 32, 1 << 32])
            .unwrap_err()
            .to_string();
        assert!(e.contains("scores") && e.contains("--max-elements"), "{e}");
        assert!(check_elements("x", &[usize::MAX, 2]).is_err());
        assert!(check_elements("x", &[DEFAULT_MAX_ELEMENTS.max(max_elements()) + 1]).is_err());
    }
}
