//! Loading Q/K/V from files: `.safetensors` with tensors named `q`, `k`, `v` (and optionally
//! `mask`), or `.npy` holding one array of shape `[3, heads, N, d]` or `[3, batch, heads, N, d]`.

use anyhow::{bail, Context, Result};
use hdp_attention::AttentionProblem;
use hdp_core::Tensor;
use std::path::Path;

/// Loads an attention problem from `path`, by extension.
pub fn load_problem(path: &Path, causal: bool) -> Result<AttentionProblem> {
    let bytes = std::fs::read(path).with_context(|| {
        format!(
            "cannot read {} (check the path and permissions)",
            path.display()
        )
    })?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    match ext {
        "safetensors" => from_safetensors(&bytes, causal)
            .with_context(|| format!("invalid safetensors file {}", path.display())),
        "npy" => from_npy(&bytes, causal).with_context(|| format!("invalid .npy file {}", path.display())),
        _ => bail!(
            "{}: unknown file type {ext:?}; use .safetensors (tensors q, k, v, optional mask) or .npy ([3, heads, N, d])",
            path.display()
        ),
    }
}

/// Normalizes `[H, N, d]` to `[1, H, N, d]`; accepts `[B, H, N, d]`.
fn to_4d(name: &str, shape: &[usize]) -> Result<Vec<usize>> {
    match shape.len() {
        3 => Ok(vec![1, shape[0], shape[1], shape[2]]),
        4 => Ok(shape.to_vec()),
        _ => bail!(
            "tensor {name} has shape {shape:?}; expected [heads, N, d] or [batch, heads, N, d]"
        ),
    }
}

pub fn from_safetensors(bytes: &[u8], causal: bool) -> Result<AttentionProblem> {
    use safetensors::{Dtype, SafeTensors};
    let st = SafeTensors::deserialize(bytes).map_err(|e| anyhow::anyhow!("{e}"))?;
    let read = |name: &str| -> Result<Option<(Vec<usize>, Vec<f32>)>> {
        let t = match st.tensor(name) {
            Ok(t) => t,
            Err(_) => return Ok(None),
        };
        let d = t.data();
        let vals: Vec<f32> = match t.dtype() {
            Dtype::F32 => d.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
            Dtype::F64 => d.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32).collect(),
            Dtype::F16 => d.chunks_exact(2).map(|c| hdp_core::tensor::f16_to_f32(u16::from_le_bytes([c[0], c[1]]))).collect(),
            Dtype::BF16 => d.chunks_exact(2).map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16)).collect(),
            Dtype::BOOL | Dtype::U8 => d.iter().map(|&x| x as f32).collect(),
            Dtype::I64 => d.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f32).collect(),
            Dtype::I32 => d.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap()) as f32).collect(),
            other => bail!("tensor {name} has dtype {other:?}; supported: F32, F64, F16, BF16 (mask: BOOL, U8, I32, I64)"),
        };
        Ok(Some((t.shape().to_vec(), vals)))
    };
    let mut qkv = Vec::new();
    for name in ["q", "k", "v"] {
        let (shape, data) = read(name)?.with_context(|| {
            format!("no tensor named {name:?}; the file must hold tensors q, k, v (and optionally mask)")
        })?;
        qkv.push(Tensor::new(to_4d(name, &shape)?, data)?);
    }
    let mask = match read("mask")? {
        None => None,
        Some((shape, vals)) => {
            let (b, n) = (qkv[0].shape()[0], qkv[0].shape()[2]);
            if vals.len() != b * n {
                bail!("mask has shape {shape:?}; expected [batch, N] = [{b}, {n}] or [N] for one sequence");
            }
            Some(vals.iter().map(|&x| x != 0.0).collect())
        }
    };
    let v = qkv.pop().unwrap();
    let k = qkv.pop().unwrap();
    let q = qkv.pop().unwrap();
    Ok(AttentionProblem::new(q, k, v, mask, causal)?)
}

/// IEEE half to single precision.
pub fn from_npy(bytes: &[u8], causal: bool) -> Result<AttentionProblem> {
    let (shape, vals) = hdp_core::npy::parse(bytes)?;
    if shape.first() != Some(&3) || !(4..=5).contains(&shape.len()) {
        bail!("array has shape {shape:?}; expected [3, heads, N, d] or [3, batch, heads, N, d] (q, k, v stacked)");
    }
    let inner = to_4d("qkv", &shape[1..])?;
    let per = vals.len() / 3;
    let t = |i: usize| Tensor::new(inner.clone(), vals[i * per..(i + 1) * per].to_vec());
    Ok(AttentionProblem::new(t(0)?, t(1)?, t(2)?, None, causal)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_stack_loads_as_a_problem() {
        let dir = std::env::temp_dir().join(format!("hdp-npy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("a.npy");
        let data: Vec<f32> = (0..3 * 2 * 4 * 2).map(|i| i as f32 * 0.5).collect();
        hdp_core::npy::write(&p, &[3, 2, 4, 2], &data).unwrap();
        let prob = load_problem(&p, false).unwrap();
        assert_eq!(prob.q().shape(), &[1, 2, 4, 2]);
        assert_eq!(prob.v().data()[0], 16.0 * 0.5 * 2.0);
    }

    #[test]
    fn half_precision_decodes() {
        assert_eq!(hdp_core::tensor::f16_to_f32(0x3c00), 1.0);
        assert_eq!(hdp_core::tensor::f16_to_f32(0xc000), -2.0);
        assert_eq!(hdp_core::tensor::f16_to_f32(0x0001), 2f32.powi(-24));
        assert!(hdp_core::tensor::f16_to_f32(0x7c00).is_infinite());
    }
}
