//! HDPA in hardware terms: a bit-accurate model of one attention core's datapath ([`core`]),
//! the host that drives it on real layers ([`driver`]), and the test vectors and generated
//! tables of the RTL under `rtl/` ([`vectors`]). The RTL is verified bit for bit against
//! [`core`]; [`core`]'s decisions are tested equal to the reference implementation's.

#![warn(missing_docs)]

pub mod core;
pub mod driver;
pub mod vectors;

pub use crate::core::{run_head, CoreParams, Cycles, HeadJob, HeadRun, HwError, Result};
pub use driver::{attention_layer, check_config, LayerRun};
