//! Command-line flags for every HDP option, shared by every subcommand that runs HDP attention:
//! [`hdp_core::HdpOptions`] itself (clap's `Args` with `hdp-core`'s `clap` feature), which fills
//! in the library defaults and validates, the same code Python's `hdp.Config` goes through; its
//! `any_given` tells whether the user set any, so commands can refuse HDP options where they
//! cannot apply ([`HdpArgsExt`]).

use anyhow::{bail, Result};
/// The HDP flags are the library's own option set, so the CLI and Python cannot drift apart.
pub use hdp_core::HdpOptions as HdpArgs;

/// What commands ask of the HDP flags beyond [`hdp_core::HdpOptions`]' own methods.
pub trait HdpArgsExt {
    /// Errors when a block-row threshold flag was given to a run whose thresholds come from
    /// elsewhere (`why`: a calibration file, or `hdp calibrate` choosing them).
    fn refuse_threshold(&self, why: &str) -> Result<()>;
    /// Errors when any HDP flag was given to a run that `why` cannot use them.
    fn refuse_if_given(&self, why: &str) -> Result<()>;
}

impl HdpArgsExt for HdpArgs {
    fn refuse_threshold(&self, why: &str) -> Result<()> {
        if self.threshold_given() {
            bail!("{why}; drop --keep/--rho/--top-p/--no-block-pruning");
        }
        Ok(())
    }

    fn refuse_if_given(&self, why: &str) -> Result<()> {
        if self.any_given() {
            bail!("HDP options were given but {why}; drop them or use HDP attention");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use hdp_core::{RowThreshold, ValidConfig};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        hdp: HdpArgs,
    }

    fn parse(args: &[&str]) -> std::result::Result<HdpArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("hdp").chain(args.iter().copied())).map(|c| c.hdp)
    }

    #[test]
    fn flags_parse_into_the_library_options() {
        let a = parse(&[]).unwrap();
        assert!(!a.any_given());
        assert_eq!(a.config().unwrap(), ValidConfig::default());
        let a = parse(&[
            "--top-p",
            "0.9",
            "-b",
            "16",
            "--centred",
            "--keep-sink",
            "1",
        ])
        .unwrap();
        let c = a.config().unwrap();
        assert_eq!(c.threshold, RowThreshold::TopP { mass: 0.9 });
        assert!(c.centred && c.block_size == 16 && c.keep_sink == 1);
        assert!(a.refuse_threshold("a calibration sets them").is_err());
        assert!(a.refuse_if_given("dense attention").is_err());
        // clap refuses exclusive flags before the library would.
        assert!(parse(&["--keep", "0.3", "--top-p", "0.9"]).is_err());
        assert!(parse(&["--tau", "0.2", "--head-top-k", "2"]).is_err());
        let e = parse(&["--keep", "2"])
            .unwrap()
            .config()
            .unwrap_err()
            .to_string();
        assert!(e.contains("keep"), "{e}");
    }
}
