//! The input of one attention layer: Q, K, V of shape `[batch, heads, N, d]` plus masks. An
//! [`AttentionProblem`] can only be built by [`AttentionProblem::new`], which checks shapes,
//! masks, finiteness and the element budget once; the kernels then trust it and never scan
//! their inputs again.
//!
//! Mask semantics, shared by every implementation: entry (i, j) of a sequence is *valid* iff
//! token i and token j are both unmasked by the key-padding mask and, with a causal mask,
//! `j <= i`. A padded query row has no valid entry and its output is zero in every
//! implementation (in a padded batch its value never reaches a valid position).

use hdp_core::{Error, Result, Tensor};

/// One attention layer's inputs, validated (see the module docs).
#[derive(Clone, Debug)]
pub struct AttentionProblem {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    token_valid: Option<Vec<bool>>,
    causal: bool,
    dims: Dims,
}

/// Dimensions of a problem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    /// Sequences.
    pub batch: usize,
    /// Heads.
    pub heads: usize,
    /// Tokens per sequence (N).
    pub seq_len: usize,
    /// Head dimension (d).
    pub head_dim: usize,
}

impl AttentionProblem {
    /// Builds a problem: Q, K, V of one shape `[batch, heads, N, d]` (every dimension > 0),
    /// `token_valid` of `batch * N` flags (true = real token; `None` = all valid), every value
    /// finite, and `heads * N * N` (the score matrix of one sequence, what every implementation
    /// allocates) within [`hdp_core::budget::max_elements`].
    pub fn new(
        q: Tensor,
        k: Tensor,
        v: Tensor,
        token_valid: Option<Vec<bool>>,
        causal: bool,
    ) -> Result<Self> {
        let dims = Self::check(&q, &k, &v, token_valid.as_deref())?;
        Ok(AttentionProblem {
            q,
            k,
            v,
            token_valid,
            causal,
            dims,
        })
    }

    /// Queries, `[batch, heads, N, d]`.
    pub fn q(&self) -> &Tensor {
        &self.q
    }

    /// Keys, `[batch, heads, N, d]`.
    pub fn k(&self) -> &Tensor {
        &self.k
    }

    /// Values, `[batch, heads, N, d]`.
    pub fn v(&self) -> &Tensor {
        &self.v
    }

    /// Key-padding mask, `batch * N` flags (true = real token); `None` means all tokens valid.
    pub fn token_valid(&self) -> Option<&[bool]> {
        self.token_valid.as_deref()
    }

    /// Whether token i may only attend to tokens `j <= i`.
    pub fn causal(&self) -> bool {
        self.causal
    }

    /// The problem's dimensions.
    pub fn dims(&self) -> Dims {
        self.dims
    }

    /// Q, K and V back (e.g. to reuse their buffers).
    pub fn into_parts(self) -> (Tensor, Tensor, Tensor) {
        (self.q, self.k, self.v)
    }

    fn check(q: &Tensor, k: &Tensor, v: &Tensor, token_valid: Option<&[bool]>) -> Result<Dims> {
        let s = q.shape();
        if s.len() != 4 || s.contains(&0) {
            return Err(Error::ShapeMismatch {
                op: "attention",
                expected: "Q of shape [batch, heads, N, d] with every dimension > 0".into(),
                got: format!("{s:?}"),
            });
        }
        for (name, t) in [("K", k), ("V", v)] {
            if t.shape() != s {
                return Err(Error::ShapeMismatch {
                    op: "attention",
                    expected: format!("{name} with the shape of Q {s:?}"),
                    got: format!("{:?}", t.shape()),
                });
            }
        }
        let dims = Dims {
            batch: s[0],
            heads: s[1],
            seq_len: s[2],
            head_dim: s[3],
        };
        hdp_core::budget::check_elements(
            "attention scores (heads x N x N)",
            &[dims.heads, dims.seq_len, dims.seq_len],
        )?;
        if let Some(m) = token_valid {
            if m.len() != dims.batch * dims.seq_len {
                return Err(Error::ShapeMismatch {
                    op: "attention mask",
                    expected: format!("{} flags (batch x N)", dims.batch * dims.seq_len),
                    got: format!("{} flags", m.len()),
                });
            }
        }
        q.check_finite("Q")?;
        k.check_finite("K")?;
        v.check_finite("V")?;
        Ok(dims)
    }

    /// Whether token `i` of sequence `b` is unmasked.
    pub fn token_is_valid(&self, b: usize, i: usize) -> bool {
        match &self.token_valid {
            None => true,
            Some(m) => m[b * self.q.shape()[2] + i],
        }
    }

    /// Whether entry (i, j) of sequence `b` is valid (see the module doc).
    pub fn entry_is_valid(&self, b: usize, i: usize, j: usize) -> bool {
        self.token_is_valid(b, i) && self.token_is_valid(b, j) && (!self.causal || j <= i)
    }

    /// Flat offset of row `i` of head `h` of sequence `b` in Q, K or V.
    pub fn row_offset(&self, b: usize, h: usize, i: usize) -> usize {
        let s = self.q.shape();
        ((b * s[1] + h) * s[2] + i) * s[3]
    }
}
