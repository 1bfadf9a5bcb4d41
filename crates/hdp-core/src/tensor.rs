//! A minimal dense f32 tensor (row-major, owned) for the reference paths and file I/O. The model
//! runtime uses a real tensor library; this type only carries attention inputs and outputs.

use crate::{Error, Result};

/// Row-major f32 tensor with an explicit shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: Vec<f32>,
}

impl Tensor {
    /// Wraps `data` with `shape`, checking that the element counts agree.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(Error::ShapeMismatch {
                op: "Tensor::new",
                expected: format!("{n} elements for shape {shape:?}"),
                got: format!("{} elements", data.len()),
            });
        }
        Ok(Tensor { shape, data })
    }

    /// A tensor of zeros.
    pub fn zeros(shape: Vec<usize>) -> Self {
        let n = shape.iter().product();
        Tensor {
            shape,
            data: vec![0.0; n],
        }
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The elements, row-major.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// The elements, mutable.
    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }

    /// Consumes the tensor, returning its elements.
    pub fn into_data(self) -> Vec<f32> {
        self.data
    }

    /// Errors with [`Error::NonFinite`] naming `name` at the first NaN or infinity.
    pub fn check_finite(&self, name: &str) -> Result<()> {
        // One branch-free pass (an OR of "exponent all ones", SIMD even on SSE2); only a bad
        // tensor pays for locating its first bad value.
        let any_bad = self.data.iter().fold(0u32, |acc, x| {
            acc | ((x.to_bits() & 0x7f80_0000 == 0x7f80_0000) as u32)
        });
        let first_bad = if any_bad == 0 {
            None
        } else {
            self.data.iter().position(|x| !x.is_finite())
        };
        match first_bad {
            None => Ok(()),
            Some(index) => Err(Error::NonFinite {
                tensor: name.to_string(),
                index,
                value: self.data[index],
            }),
        }
    }

    /// Euclidean norm, accumulated in f64.
    pub fn l2_norm(&self) -> f64 {
        self.data
            .iter()
            .map(|&x| (x as f64) * (x as f64))
            .sum::<f64>()
            .sqrt()
    }

    /// `||self - reference|| / ||reference||` (absolute difference norm if the reference is 0).
    pub fn rel_l2_err(&self, reference: &Tensor) -> Result<f64> {
        if self.shape != reference.shape {
            return Err(Error::ShapeMismatch {
                op: "rel_l2_err",
                expected: format!("{:?}", reference.shape),
                got: format!("{:?}", self.shape),
            });
        }
        let diff: f64 = self
            .data
            .iter()
            .zip(&reference.data)
            .map(|(&a, &b)| {
                let d = a as f64 - b as f64;
                d * d
            })
            .sum::<f64>()
            .sqrt();
        let norm = reference.l2_norm();
        Ok(if norm > 0.0 { diff / norm } else { diff })
    }

    /// Largest absolute element-wise difference.
    pub fn max_abs_diff(&self, other: &Tensor) -> f32 {
        self.data
            .iter()
            .zip(&other.data)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max)
    }
}

/// IEEE half precision bits to f32 (exact: every half value is an f32 value).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let man = (h & 0x3ff) as u32;
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, m) => {
            // subnormal: normalize
            let mut e = 127 - 15 + 1;
            let mut m = m;
            while m & 0x400 == 0 {
                m <<= 1;
                e -= 1;
            }
            sign | (e << 23) | ((m & 0x3ff) << 13)
        }
        (0x1f, m) => sign | 0x7f80_0000 | (m << 13),
        (e, m) => sign | ((e + 127 - 15) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_checks_counts_and_finite() {
        assert!(Tensor::new(vec![2, 3], vec![0.0; 5]).is_err());
        let t = Tensor::new(vec![2], vec![1.0, f32::NAN]).unwrap();
        let err = t.check_finite("q").unwrap_err().to_string();
        assert!(err.contains("tensor q") && err.contains("index 1"), "{err}");
    }

    #[test]
    fn rel_err_of_identical_is_zero() {
        let t = Tensor::new(vec![3], vec![1.0, -2.0, 3.0]).unwrap();
        assert_eq!(t.rel_l2_err(&t).unwrap(), 0.0);
    }
}
