//! NumPy `.npy` files (format versions 1-3): little-endian float32/float64 arrays in C order.
//! Spec: numpy.lib.format.

use crate::{Error, Result};
use std::path::Path;

fn bad(reason: impl Into<String>) -> Error {
    Error::Parse {
        path: "<npy>".into(),
        reason: reason.into(),
    }
}

/// Parses `.npy` bytes into a shape and f32 values (f64 arrays are converted).
pub fn parse(bytes: &[u8]) -> Result<(Vec<usize>, Vec<f32>)> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("not a .npy file (missing \\x93NUMPY magic)"));
    }
    let (hlen, start): (usize, usize) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(bad(format!("unsupported .npy version {v}"))),
    };
    let header = bytes
        .get(start..start.saturating_add(hlen))
        .ok_or_else(|| bad("file is truncated inside the .npy header"))?;
    let header = std::str::from_utf8(header).map_err(|_| bad(".npy header is not text"))?;
    let field = |key: &str| -> Result<&str> {
        let i = header
            .find(&format!("'{key}'"))
            .ok_or_else(|| bad(format!(".npy header lacks '{key}'")))?;
        Ok(header[i + key.len() + 2..].trim_start_matches([':', ' ']))
    };
    let descr = field("descr")?;
    let elem = if descr.starts_with("'<f4'") {
        4
    } else if descr.starts_with("'<f8'") {
        8
    } else {
        return Err(bad(format!(
            "unsupported dtype {}; save as float32 or float64 (little-endian)",
            descr.split(',').next().unwrap_or("")
        )));
    };
    if field("fortran_order")?.starts_with("True") {
        return Err(bad(
            "Fortran-ordered arrays are not supported; save with np.ascontiguousarray",
        ));
    }
    let shape_txt = field("shape")?;
    let inner = shape_txt
        .strip_prefix('(')
        .and_then(|t| t.split_once(')'))
        .map(|(inner, _)| inner)
        .ok_or_else(|| bad("malformed shape in .npy header (expected a tuple like (3, 4))"))?;
    let shape: Vec<usize> = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| bad(format!("malformed shape entry {s:?}")))
        })
        .collect::<Result<_>>()?;
    // Checked: a header may declare any shape; the data present bounds what is allocated.
    let data_bytes = shape
        .iter()
        .try_fold(elem, |acc: usize, &d| acc.checked_mul(d))
        .ok_or_else(|| bad(format!("shape {shape:?} is too large to address")))?;
    let count = data_bytes / elem;
    let data = &bytes[start + hlen..];
    if data.len() < data_bytes {
        return Err(bad(format!(
            "file is truncated: shape {shape:?} needs {data_bytes} data bytes, found {}",
            data.len()
        )));
    }
    let vals = if elem == 4 {
        data[..count * 4]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    } else {
        data[..count * 8]
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect()
    };
    Ok((shape, vals))
}

/// Reads a `.npy` file.
pub fn read(path: &Path) -> Result<(Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.into(),
        source,
    })?;
    parse(&bytes).map_err(|e| match e {
        Error::Parse { reason, .. } => Error::Parse {
            path: path.into(),
            reason,
        },
        other => other,
    })
}

/// Encodes a little-endian f32 array (format version 1).
pub fn encode(shape: &[usize], data: &[f32]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_txt = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_txt}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for x in data {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

/// Writes a little-endian f32 `.npy` file, atomically ([`crate::io::write_atomic`]).
pub fn write(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    crate::io::write_bytes_atomic(path, &encode(shape, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_truncation_and_garbage() {
        let data: Vec<f32> = (0..24).map(|i| i as f32 * 0.5).collect();
        let bytes = encode(&[3, 2, 4], &data);
        assert_eq!(parse(&bytes).unwrap(), (vec![3, 2, 4], data));
        let err = parse(&bytes[..bytes.len() - 3]).unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");
        assert!(parse(b"garbage!!!!!").is_err());
        assert_eq!(parse(&encode(&[5], &[1.0; 5])).unwrap().0, vec![5]);
    }

    fn with_header(header: &str) -> Vec<u8> {
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(&[0u8; 128]);
        out
    }

    /// Reproducers of issue #11: these headers used to panic or abort.
    #[test]
    fn hostile_headers_are_errors() {
        for shape in [
            ")",
            "(\u{e9})",
            "\u{e9}",
            "(3, 1, 4294967296, 4294967296)",
            "(18446744073709551615, 2)",
            "(-1,)",
        ] {
            let h = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
            let e = parse(&with_header(&h)).unwrap_err().to_string();
            assert!(e.contains("shape"), "{shape}: {e}");
        }
        let mut v2 = b"\x93NUMPY\x02\x00\xff\xff\xff\xff".to_vec();
        v2.extend_from_slice(&[b' '; 16]);
        assert!(parse(&v2).unwrap_err().to_string().contains("truncated"));
    }
}
