//! Dense float attention, the reference every other path is compared with:
//! `O = softmax(Q K^T / sqrt(d) + mask) V`, accumulated in f64 for clarity and accuracy.

use crate::problem::AttentionProblem;
use hdp_core::{Result, Tensor};

/// Softmax over the valid entries of a score row, in place; invalid entries get probability 0.
/// `scores[j]` is ignored where `valid[j]` is false. Returns false if no entry is valid.
pub(crate) fn masked_softmax(scores: &mut [f64], valid: &[bool]) -> bool {
    let max = scores
        .iter()
        .zip(valid)
        .filter(|(_, &v)| v)
        .map(|(&s, _)| s)
        .fold(f64::NEG_INFINITY, f64::max);
    if max == f64::NEG_INFINITY {
        scores.fill(0.0);
        return false;
    }
    let mut sum = 0.0;
    for (s, &v) in scores.iter_mut().zip(valid) {
        *s = if v { (*s - max).exp() } else { 0.0 };
        sum += *s;
    }
    for s in scores.iter_mut() {
        *s /= sum;
    }
    true
}

/// Dense attention on a validated problem; output has the shape of Q.
pub fn attention(p: &AttentionProblem) -> Result<Tensor> {
    let dims = p.dims();
    let (n, d) = (dims.seq_len, dims.head_dim);
    let scale = 1.0 / (d as f64).sqrt();
    let (q, k, v) = (p.q().data(), p.k().data(), p.v().data());
    let mut out = Tensor::zeros(p.q().shape().to_vec());
    let mut scores = vec![0.0f64; n];
    let mut valid = vec![false; n];
    let mut acc = vec![0.0f64; d];
    for b in 0..dims.batch {
        for h in 0..dims.heads {
            for i in 0..n {
                for j in 0..n {
                    valid[j] = p.entry_is_valid(b, i, j);
                    if valid[j] {
                        let qi = &q[p.row_offset(b, h, i)..][..d];
                        let kj = &k[p.row_offset(b, h, j)..][..d];
                        scores[j] = qi
                            .iter()
                            .zip(kj)
                            .map(|(&a, &c)| a as f64 * c as f64)
                            .sum::<f64>()
                            * scale;
                    }
                }
                if !masked_softmax(&mut scores, &valid) {
                    continue; // padded query row: output stays zero
                }
                acc.fill(0.0);
                for (j, &pj) in scores.iter().enumerate() {
                    if pj != 0.0 {
                        let vj = &v[p.row_offset(b, h, j)..][..d];
                        for (a, &x) in acc.iter_mut().zip(vj) {
                            *a += pj * x as f64;
                        }
                    }
                }
                let o = &mut out.data_mut()[p.row_offset(b, h, i)..][..d];
                for (o, &a) in o.iter_mut().zip(&acc) {
                    *o = a as f32;
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(q: Vec<f32>, k: Vec<f32>, v: Vec<f32>, n: usize, d: usize) -> AttentionProblem {
        let t = |x| Tensor::new(vec![1, 1, n, d], x).unwrap();
        AttentionProblem::new(t(q), t(k), t(v), None, false).unwrap()
    }

    #[test]
    fn uniform_scores_average_values() {
        // Q = 0 gives equal scores, so each output row is the mean of V.
        let p = problem(
            vec![0.0; 6],
            vec![1.0; 6],
            vec![1., 2., 3., 4., 5., 6.],
            3,
            2,
        );
        let o = attention(&p).unwrap();
        for row in o.data().chunks(2) {
            assert!((row[0] - 3.0).abs() < 1e-6 && (row[1] - 4.0).abs() < 1e-6);
        }
    }

    #[test]
    fn hand_computed_two_tokens() {
        // d = 1, q = [1, 0], k = [0, 2]: row 0 scores (0, 2), row 1 scores (0, 0).
        let p = problem(vec![1.0, 0.0], vec![0.0, 2.0], vec![10.0, 20.0], 2, 1);
        let o = attention(&p).unwrap();
        let w = 1.0 / (1.0 + (-2.0f64).exp());
        assert!((o.data()[0] as f64 - (10.0 * (1.0 - w) + 20.0 * w)).abs() < 1e-4);
        assert!((o.data()[1] - 15.0).abs() < 1e-5);
    }

    #[test]
    fn causal_first_row_sees_only_itself() {
        let t = |x| Tensor::new(vec![1, 1, 3, 1], x).unwrap();
        let p = AttentionProblem::new(
            t(vec![1., 1., 1.]),
            t(vec![1., 5., 9.]),
            t(vec![7., 8., 9.]),
            None,
            true,
        )
        .unwrap();
        let o = attention(&p).unwrap();
        assert_eq!(o.data()[0], 7.0);
    }

    #[test]
    fn padded_keys_get_no_weight_and_padded_rows_are_zero() {
        let t = |x| Tensor::new(vec![1, 1, 3, 1], x).unwrap();
        let p = AttentionProblem::new(
            t(vec![1., 1., 1.]),
            t(vec![0., 0., 100.]),
            t(vec![2., 4., 1000.]),
            Some(vec![true, true, false]),
            false,
        )
        .unwrap();
        let o = attention(&p).unwrap();
        assert!((o.data()[0] - 3.0).abs() < 1e-6);
        assert_eq!(o.data()[2], 0.0);
    }
}
