//! Standard output that fails loudly: every write and the final flush are checked, so a full
//! disk or a closed descriptor is an error with a non-zero exit, never a panic or a silent loss.
//! (A closed pipe still ends the process quietly through SIGPIPE, as Unix tools do.)

use anyhow::{Context, Result};
use std::io::Write;

/// Runs `write` on a buffered, locked standard output and flushes it, checking both.
pub fn with_stdout(write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> Result<()> {
    let mut w = std::io::BufWriter::new(std::io::stdout().lock());
    write(&mut w)
        .and_then(|_| w.flush())
        .context("cannot write to standard output")
}

/// Prints one line to standard output, checked.
pub fn line(args: std::fmt::Arguments) -> Result<()> {
    with_stdout(|w| writeln!(w, "{args}"))
}

/// `println!` that returns an error (with `?`) instead of panicking when stdout fails.
macro_rules! outln {
    () => { $crate::out::line(format_args!(""))? };
    ($($t:tt)*) => { $crate::out::line(format_args!($($t)*))? };
}
