//! Output that fails loudly and never clobbers: files are written to a temporary name beside
//! the target and renamed over it only after every byte was written and flushed, so a failed
//! run (a full disk, a bad path, an error half way) leaves an earlier result untouched.

use crate::{Error, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `path` through `write`, atomically: the bytes go to a temporary file in the same
/// folder, which is flushed, synced and renamed over `path` only if `write` succeeded. On any
/// error the temporary file is removed and `path` is left as it was.
///
/// Special files that cannot be replaced by a rename (`/dev/stdout`, `/dev/null`, `/dev/full`,
/// pipes) are written in place, with every write and the final flush checked.
pub fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<()> {
    let io_err = |source| Error::Io {
        path: path.into(),
        source,
    };
    let special = std::fs::metadata(path).is_ok_and(|m| !m.is_file() && !m.is_dir());
    if special {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io_err)?;
        let mut w = std::io::BufWriter::new(file);
        write(&mut w).map_err(io_err)?;
        return w.flush().map_err(io_err);
    }
    let tmp = temp_name(path);
    let result = (|| {
        let file = std::fs::File::create(&tmp)?;
        let mut w = std::io::BufWriter::new(file);
        write(&mut w)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io_err)
}

/// [`write_atomic`] of a byte string.
pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic(path, |w| w.write_all(bytes))
}

fn temp_name(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_write_leaves_the_old_file() {
        let dir = std::env::temp_dir().join(format!("hdp-io-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("out.json");
        write_bytes_atomic(&p, b"old").unwrap();
        let e = write_atomic(&p, |w| {
            w.write_all(b"partial")?;
            Err(std::io::Error::other("boom"))
        })
        .unwrap_err();
        assert!(e.to_string().contains("boom"), "{e}");
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "temporary file left"
        );
        write_bytes_atomic(&p, b"new").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn full_device_is_an_error() {
        let e = write_bytes_atomic(Path::new("/dev/full"), &[0u8; 1 << 16]).unwrap_err();
        assert!(e.to_string().contains("/dev/full"), "{e}");
    }

    #[test]
    fn missing_folder_is_an_error() {
        let e = write_bytes_atomic(Path::new("/nonexistent-hdp/x.json"), b"x").unwrap_err();
        assert!(e.to_string().contains("nonexistent-hdp"), "{e}");
    }
}
