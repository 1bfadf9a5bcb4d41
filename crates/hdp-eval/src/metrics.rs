//! Metrics: accuracy, Pearson and Spearman correlation, cosine similarity.

/// Fraction of equal entries.
pub fn accuracy(pred: &[usize], gold: &[usize]) -> f64 {
    if gold.is_empty() {
        return 0.0;
    }
    pred.iter().zip(gold).filter(|(a, b)| a == b).count() as f64 / gold.len() as f64
}

/// Pearson correlation; 0 when either side is constant.
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len().min(y.len()) as f64;
    if n < 2.0 {
        return 0.0;
    }
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (&a, &b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    if sxx == 0.0 || syy == 0.0 {
        0.0
    } else {
        sxy / (sxx * syy).sqrt()
    }
}

/// Ranks starting at 1, ties get the mean of their ranks.
pub fn ranks(x: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut r = vec![0.0; x.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && x[idx[j + 1]] == x[idx[i]] {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            r[k] = rank;
        }
        i = j + 1;
    }
    r
}

/// Spearman rank correlation (Pearson of tie-averaged ranks).
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    pearson(&ranks(x), &ranks(y))
}

/// Cosine similarity, accumulated in f64.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        ab += x as f64 * y as f64;
        aa += x as f64 * x as f64;
        bb += y as f64 * y as f64;
    }
    if aa == 0.0 || bb == 0.0 {
        0.0
    } else {
        ab / (aa * bb).sqrt()
    }
}

/// Relative L1 distance of `a` to the reference `b`: `sum |a - b| / sum |b|` (0 when `b` is
/// all zero and `a` equals it, infinite when only `b` is).
pub fn relative_l1(a: &[f32], b: &[f32]) -> f64 {
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        num += (x as f64 - y as f64).abs();
        den += (y as f64).abs();
    }
    if num == 0.0 {
        0.0
    } else {
        num / den
    }
}

/// Root mean square of `a - b` (0 for empty vectors).
pub fn rmse(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len().min(b.len());
    if n == 0 {
        return 0.0;
    }
    let s: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
        .sum();
    (s / n as f64).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_l1_and_rmse_by_hand() {
        let (a, b) = ([1.0f32, -2.0, 3.0], [1.0f32, -1.0, 1.0]);
        // |0| + |-1| + |2| = 3 over 1 + 1 + 1 = 3.
        assert!((relative_l1(&a, &b) - 1.0).abs() < 1e-12);
        // sqrt((0 + 1 + 4) / 3).
        assert!((rmse(&a, &b) - (5.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert_eq!(relative_l1(&b, &b), 0.0);
        assert_eq!(rmse(&b, &b), 0.0);
        assert_eq!(relative_l1(&[1.0], &[0.0]), f64::INFINITY);
        assert_eq!(rmse(&[], &[]), 0.0);
    }

    #[test]
    fn known_values() {
        assert_eq!(accuracy(&[1, 0, 1], &[1, 1, 1]), 2.0 / 3.0);
        assert!((pearson(&[1., 2., 3.], &[2., 4., 6.]) - 1.0).abs() < 1e-12);
        assert!((pearson(&[1., 2., 3.], &[3., 2., 1.]) + 1.0).abs() < 1e-12);
        assert_eq!(ranks(&[10., 20., 10., 5.]), vec![2.5, 4.0, 2.5, 1.0]);
        // Monotone but non-linear: Spearman 1, Pearson < 1.
        let (x, y) = ([1., 2., 3., 4.], [1., 8., 27., 64.]);
        assert!((spearman(&x, &y) - 1.0).abs() < 1e-12 && pearson(&x, &y) < 1.0);
        assert!((cosine(&[1., 0.], &[1., 1.]) - 0.5f64.sqrt()).abs() < 1e-7);
    }
}
