//! Signed fixed point as defined in `shared/design/hdp.md` step 1: quantization with
//! round-to-nearest and saturation after an optional power-of-two pre-scale, and the exact split
//! `x = x_int * 2^f + x_frac` with `0 <= x_frac < 2^f`.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// Smallest and largest supported total widths.
pub const MIN_BITS: u32 = 4;
/// Largest supported total width (codes and splits fit i16/i32 arithmetic with headroom).
pub const MAX_BITS: u32 = 16;
/// Pre-scale exponents are clamped to this magnitude (values beyond mean a degenerate tensor).
pub const MAX_PRESCALE_EXP: i32 = 40;

/// A signed fixed-point format: `bits` total (two's complement), of which `frac_bits` are
/// fractional. A code `c` means the real value `c / 2^frac_bits` (before the pre-scale).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QFormat {
    /// Total width in bits, including the sign, in `4..=16`.
    pub bits: u32,
    /// Fractional bits, in `0..bits`.
    pub frac_bits: u32,
}

impl Default for QFormat {
    /// 8 bits with 4 fractional bits, the measured starting point of hdp.md.
    fn default() -> Self {
        QFormat {
            bits: 8,
            frac_bits: 4,
        }
    }
}

/// Result of quantizing a tensor: codes plus how many values saturated.
#[derive(Clone, Debug, PartialEq)]
pub struct Quantized {
    /// Integer codes, one per input value, each within the format's range.
    pub codes: Vec<i32>,
    /// How many inputs fell outside the representable range and were clamped.
    pub saturated: usize,
}

impl QFormat {
    /// Builds a format, checking `4 <= bits <= 16` and `frac_bits < bits`.
    pub fn new(bits: u32, frac_bits: u32) -> Result<Self> {
        if !(MIN_BITS..=MAX_BITS).contains(&bits) {
            return Err(Error::InvalidFormat {
                bits,
                frac_bits,
                reason: format!("bits must be in {MIN_BITS}..={MAX_BITS}"),
            });
        }
        if frac_bits >= bits {
            return Err(Error::InvalidFormat {
                bits,
                frac_bits,
                reason: "frac_bits must be smaller than bits (one bit is the sign)".into(),
            });
        }
        Ok(QFormat { bits, frac_bits })
    }

    /// Checks a format that was built directly (e.g. deserialized).
    pub fn validate(self) -> Result<Self> {
        QFormat::new(self.bits, self.frac_bits)
    }

    /// Smallest code, `-2^(bits-1)`.
    pub fn min_code(self) -> i32 {
        -(1i32 << (self.bits - 1))
    }

    /// Largest code, `2^(bits-1) - 1`.
    pub fn max_code(self) -> i32 {
        (1i32 << (self.bits - 1)) - 1
    }

    /// `2^frac_bits`, the weight of one integer step in code units.
    pub fn one(self) -> i32 {
        1i32 << self.frac_bits
    }

    /// Quantizes one value already multiplied by the pre-scale: round to nearest (ties away from
    /// zero, as `f64::round`), then saturate. Returns the code and whether it saturated.
    pub fn quantize(self, x: f32) -> (i32, bool) {
        let scaled = (x as f64 * self.one() as f64).round();
        if scaled > self.max_code() as f64 {
            (self.max_code(), true)
        } else if scaled < self.min_code() as f64 {
            (self.min_code(), true)
        } else {
            (scaled as i32, false)
        }
    }

    /// Quantizes a slice after multiplying by `2^prescale_exp`.
    pub fn quantize_slice(self, xs: &[f32], prescale_exp: i32) -> Quantized {
        let s = (2f64).powi(prescale_exp) as f32;
        let mut saturated = 0;
        let codes = xs
            .iter()
            .map(|&x| {
                let (c, sat) = self.quantize(x * s);
                saturated += sat as usize;
                c
            })
            .collect();
        Quantized { codes, saturated }
    }

    /// Real value of a code after undoing a pre-scale of `2^prescale_exp`.
    pub fn dequantize(self, code: i32, prescale_exp: i32) -> f32 {
        (code as f64 / self.one() as f64 / (2f64).powi(prescale_exp)) as f32
    }

    /// Splits a code exactly: `code = int * 2^f + frac`, `int = floor(code / 2^f)` (signed),
    /// `0 <= frac < 2^f`.
    pub fn split(self, code: i32) -> (i32, i32) {
        let int = code >> self.frac_bits; // arithmetic shift = floor division by 2^f
        let frac = code & (self.one() - 1);
        (int, frac)
    }

    /// The integer score estimate's operand of a code (hdp.md steps 2 and 4): the integer part
    /// `floor(code / 2^f)`, or centred `2 floor(code / 2^f) + 1`.
    pub fn estimate(self, code: i32, centred: bool) -> i32 {
        let int = code >> self.frac_bits;
        if centred {
            2 * int + 1
        } else {
            int
        }
    }

    /// The largest pre-scale exponent `e` such that `max_abs * 2^e` still rounds into range,
    /// i.e. the codes fill the signed range without saturating. `max_abs == 0` gives 0.
    pub fn fill_exponent(self, max_abs: f32) -> i32 {
        if max_abs <= 0.0 || !max_abs.is_finite() {
            return 0;
        }
        // Need round(max_abs * 2^(e+f)) <= max_code, i.e. max_abs * 2^(e+f) < max_code + 0.5.
        let limit = (self.max_code() as f64 + 0.5) / self.one() as f64;
        let mut e = (limit / max_abs as f64).log2().floor() as i32;
        // Guard against log2 rounding at exact powers of two.
        while e > -MAX_PRESCALE_EXP && self.quantize(max_abs * (2f32).powi(e)).1 {
            e -= 1;
        }
        e.clamp(-MAX_PRESCALE_EXP, MAX_PRESCALE_EXP)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rejects_out_of_range_formats() {
        assert!(QFormat::new(3, 1).is_err());
        assert!(QFormat::new(17, 4).is_err());
        assert!(QFormat::new(8, 8).is_err());
        assert!(QFormat::new(8, 7).is_ok());
        assert!(QFormat::new(4, 0).is_ok());
    }

    #[test]
    fn split_is_exact_for_every_code_of_every_format() {
        for bits in MIN_BITS..=MAX_BITS {
            for f in 0..bits {
                let q = QFormat::new(bits, f).unwrap();
                for code in q.min_code()..=q.max_code() {
                    let (i, r) = q.split(code);
                    assert_eq!(i * q.one() + r, code, "bits={bits} f={f} code={code}");
                    assert!((0..q.one()).contains(&r));
                    assert_eq!(i, (code as f64 / q.one() as f64).floor() as i32);
                }
            }
        }
    }

    #[test]
    fn saturation_is_counted() {
        let q = QFormat::new(8, 4).unwrap();
        let out = q.quantize_slice(&[0.0, 7.9, 8.0, -8.0, -8.1, 100.0], 0);
        assert_eq!(out.codes, vec![0, 126, 127, -128, -128, 127]);
        assert_eq!(out.saturated, 3);
    }

    #[test]
    fn fill_exponent_fills_without_saturating() {
        let q = QFormat::new(8, 4).unwrap();
        for &m in &[0.001f32, 0.5, 1.0, 7.96875, 8.0, 12.3, 1000.0] {
            let e = q.fill_exponent(m);
            let (c, sat) = q.quantize(m * (2f32).powi(e));
            assert!(!sat, "m={m} e={e}");
            let (c2, _) = q.quantize(m * (2f32).powi(e + 1));
            assert!(c2 == q.max_code() || c2.abs() > c.abs());
            assert!(c.abs() > q.max_code() / 2 - 1, "m={m} e={e} c={c}");
        }
    }

    proptest! {
        #[test]
        fn quantize_error_is_at_most_half_a_step(x in -7.9f32..7.9) {
            let q = QFormat::new(8, 4).unwrap();
            let (c, sat) = q.quantize(x);
            prop_assert!(!sat);
            prop_assert!((q.dequantize(c, 0) - x).abs() <= 0.5 / 16.0 + 1e-6);
        }

        #[test]
        fn split_reconstructs(bits in MIN_BITS..=MAX_BITS, f in 0u32..16, code in any::<i32>()) {
            prop_assume!(f < bits);
            let q = QFormat::new(bits, f).unwrap();
            let code = code.rem_euclid(q.max_code() - q.min_code() + 1) + q.min_code();
            let (i, r) = q.split(code);
            prop_assert_eq!(i * q.one() + r, code);
            prop_assert!(r >= 0 && r < q.one());
        }
    }
}
