//! L2-regularized logistic regression trained by Newton's method (IRLS): the classification
//! head on frozen embeddings. Binary, or one-vs-rest for more classes. The objective matches
//! scikit-learn's default (`C = 1`): sum of log-losses + 0.5 ||w||^2, bias unpenalized.

/// A trained one-vs-rest classifier.
#[derive(Clone, Debug)]
pub struct LogReg {
    /// One weight vector (features + bias last) per class; a single vector for two classes.
    pub weights: Vec<Vec<f64>>,
    /// Number of classes.
    pub classes: usize,
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

fn dot_bias(w: &[f64], x: &[f32]) -> f64 {
    x.iter().zip(w).map(|(&a, &b)| a as f64 * b).sum::<f64>() + w[x.len()]
}

/// Solves `a x = b` for symmetric positive definite `a` (row-major n x n) by Cholesky.
fn cholesky_solve(mut a: Vec<f64>, mut b: Vec<f64>, n: usize) -> Vec<f64> {
    for j in 0..n {
        let mut d = a[j * n + j];
        for k in 0..j {
            d -= a[j * n + k] * a[j * n + k];
        }
        let d = d.max(1e-12).sqrt();
        a[j * n + j] = d;
        for i in j + 1..n {
            let mut s = a[i * n + j];
            for k in 0..j {
                s -= a[i * n + k] * a[j * n + k];
            }
            a[i * n + j] = s / d;
        }
    }
    for i in 0..n {
        for k in 0..i {
            b[i] -= a[i * n + k] * b[k];
        }
        b[i] /= a[i * n + i];
    }
    for i in (0..n).rev() {
        for k in i + 1..n {
            b[i] -= a[k * n + i] * b[k];
        }
        b[i] /= a[i * n + i];
    }
    b
}

fn train_binary(x: &[Vec<f32>], y: &[bool], l2: f64, iters: usize) -> Vec<f64> {
    let d = x.first().map_or(0, Vec::len);
    let n = d + 1;
    let mut w = vec![0.0; n];
    for _ in 0..iters {
        let mut g = vec![0.0; n];
        let mut h = vec![0.0; n * n];
        for (xi, &yi) in x.iter().zip(y) {
            let p = sigmoid(dot_bias(&w, xi));
            let r = p - yi as u8 as f64;
            let s = (p * (1.0 - p)).max(1e-10);
            let xe = |k: usize| if k < d { xi[k] as f64 } else { 1.0 };
            for a in 0..n {
                let xa = xe(a);
                g[a] += r * xa;
                let sxa = s * xa;
                for b in 0..=a {
                    h[a * n + b] += sxa * xe(b);
                }
            }
        }
        for a in 0..n {
            for b in 0..a {
                h[b * n + a] = h[a * n + b];
            }
            if a < d {
                g[a] += l2 * w[a];
                h[a * n + a] += l2;
            }
        }
        let step = cholesky_solve(h, g, n);
        let mut change: f64 = 0.0;
        for (wi, si) in w.iter_mut().zip(&step) {
            *wi -= si;
            change = change.max(si.abs());
        }
        if change < 1e-8 {
            break;
        }
    }
    w
}

impl LogReg {
    /// Trains on features `x` and labels in `0..classes`.
    pub fn train(x: &[Vec<f32>], labels: &[usize], classes: usize) -> LogReg {
        const L2: f64 = 1.0;
        const ITERS: usize = 25;
        let weights = if classes <= 2 {
            let y: Vec<bool> = labels.iter().map(|&l| l == 1).collect();
            vec![train_binary(x, &y, L2, ITERS)]
        } else {
            (0..classes)
                .map(|c| {
                    let y: Vec<bool> = labels.iter().map(|&l| l == c).collect();
                    train_binary(x, &y, L2, ITERS)
                })
                .collect()
        };
        LogReg { weights, classes }
    }

    /// Predicted class of one feature vector.
    pub fn predict(&self, x: &[f32]) -> usize {
        if self.weights.len() == 1 {
            return (dot_bias(&self.weights[0], x) > 0.0) as usize;
        }
        let scores = self.weights.iter().map(|w| dot_bias(w, x));
        scores
            .enumerate()
            .fold((0, f64::NEG_INFINITY), |best, (i, s)| {
                if s > best.1 {
                    (i, s)
                } else {
                    best
                }
            })
            .0
    }

    /// Predictions for many vectors.
    pub fn predict_all(&self, x: &[Vec<f32>]) -> Vec<usize> {
        x.iter().map(|v| self.predict(v)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hdp_core::rng::SplitMix64;

    #[test]
    fn separates_shifted_gaussians() {
        let mut r = SplitMix64::new(1);
        let mut x = Vec::new();
        let mut y = Vec::new();
        for i in 0..400 {
            let c = i % 3;
            x.push(
                (0..4)
                    .map(|k| (r.normal() + if k == c { 3.0 } else { 0.0 }) as f32)
                    .collect(),
            );
            y.push(c);
        }
        let m = LogReg::train(&x, &y, 3);
        let acc = crate::metrics::accuracy(&m.predict_all(&x), &y);
        assert!(acc > 0.9, "{acc}");
        let yb: Vec<usize> = y.iter().map(|&c| (c == 0) as usize).collect();
        let mb = LogReg::train(&x, &yb, 2);
        assert!(crate::metrics::accuracy(&mb.predict_all(&x), &yb) > 0.9);
    }

    #[test]
    fn cholesky_solves() {
        let a = vec![4.0, 2.0, 2.0, 3.0];
        let x = cholesky_solve(a, vec![2.0, 1.0], 2);
        assert!((x[0] - 0.5).abs() < 1e-12 && x[1].abs() < 1e-12);
    }
}
