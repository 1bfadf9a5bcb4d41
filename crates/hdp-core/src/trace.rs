//! The HDP trace: what one run of HDP attention decided and how much work it did, per layer,
//! sequence and head. It is the contract between the attention code (reference and fast) and the
//! accelerator simulator; `docs/trace-format.md` documents it field by field.
//!
//! Counting convention: work is counted at block granularity, as block-sparse hardware does it.
//! A block with at least one valid (unmasked) entry is *valid*; fully masked blocks are never
//! computed and never counted. Every computed block costs its full extent (rows x cols entries),
//! ragged edge blocks their actual extent.

use crate::{Error, QFormat, Result, ScoreMode, ValidConfig};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Value of the `format` field of every trace file.
pub const TRACE_FORMAT: &str = "hdp-trace";
/// Version of the trace layout this crate reads and writes.
pub const TRACE_VERSION: u32 = 1;

/// A rows x cols bit matrix over blocks (row = block-row of queries, col = block of keys).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockMask {
    rows: usize,
    cols: usize,
    words_per_row: usize,
    bits: Vec<u64>,
}

impl BlockMask {
    /// An all-zero mask.
    pub fn new(rows: usize, cols: usize) -> Self {
        let words_per_row = cols.div_ceil(64);
        BlockMask {
            rows,
            cols,
            words_per_row,
            bits: vec![0; rows * words_per_row],
        }
    }

    /// Number of block-rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of block-columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Whether block (r, c) is set.
    pub fn get(&self, r: usize, c: usize) -> bool {
        debug_assert!(r < self.rows && c < self.cols);
        self.bits[r * self.words_per_row + c / 64] >> (c % 64) & 1 == 1
    }

    /// Sets or clears block (r, c).
    pub fn set(&mut self, r: usize, c: usize, on: bool) {
        debug_assert!(r < self.rows && c < self.cols);
        let w = &mut self.bits[r * self.words_per_row + c / 64];
        if on {
            *w |= 1 << (c % 64);
        } else {
            *w &= !(1 << (c % 64));
        }
    }

    /// Number of set blocks in block-row `r`.
    pub fn count_row(&self, r: usize) -> usize {
        crate::bits::count_ones(&self.bits[r * self.words_per_row..(r + 1) * self.words_per_row])
    }

    /// Columns set in block-row `r`, OR-ed into `acc` (a `cols`-bit set as 64-bit words).
    pub fn or_row_into(&self, r: usize, acc: &mut [u64]) {
        for (a, w) in acc
            .iter_mut()
            .zip(&self.bits[r * self.words_per_row..(r + 1) * self.words_per_row])
        {
            *a |= w;
        }
    }

    /// Block-row `r` as 64-bit words (bit `c % 64` of word `c / 64` is column `c`).
    pub fn row_words(&self, r: usize) -> &[u64] {
        &self.bits[r * self.words_per_row..(r + 1) * self.words_per_row]
    }

    /// Sets the columns of block-row `r` that are set in `words` (same layout as
    /// [`BlockMask::row_words`]; bits at or beyond `cols` must be clear).
    pub fn or_row_from(&mut self, r: usize, words: &[u64]) {
        debug_assert!(
            words.len() <= self.words_per_row
                && (self.cols.is_multiple_of(64)
                    || words.len() < self.words_per_row
                    || words[self.words_per_row - 1] >> (self.cols % 64) == 0)
        );
        for (a, w) in self.bits[r * self.words_per_row..(r + 1) * self.words_per_row]
            .iter_mut()
            .zip(words)
        {
            *a |= w;
        }
    }

    /// Number of set blocks.
    pub fn count(&self) -> usize {
        crate::bits::count_ones(&self.bits)
    }

    /// Whether every set bit of `self` is also set in `other` (same dimensions).
    pub fn is_subset_of(&self, other: &BlockMask) -> bool {
        self.rows == other.rows
            && self.cols == other.cols
            && self.bits.iter().zip(&other.bits).all(|(a, b)| a & !b == 0)
    }

    fn row_hex(&self, r: usize) -> String {
        let mut s = String::with_capacity(self.cols.div_ceil(8) * 2);
        for byte in 0..self.cols.div_ceil(8) {
            let w = self.bits[r * self.words_per_row + byte / 8];
            s.push_str(&format!("{:02x}", (w >> ((byte % 8) * 8)) & 0xff));
        }
        s
    }
}

/// Serialized form of [`BlockMask`]: one hex string per block-row; byte k holds columns
/// 8k..8k+7, least significant bit first.
#[derive(Serialize, Deserialize)]
struct BlockMaskRepr {
    rows: usize,
    cols: usize,
    hex: Vec<String>,
}

impl Serialize for BlockMask {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        BlockMaskRepr {
            rows: self.rows,
            cols: self.cols,
            hex: (0..self.rows).map(|r| self.row_hex(r)).collect(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for BlockMask {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error as _;
        let repr = BlockMaskRepr::deserialize(d)?;
        if repr.hex.len() != repr.rows {
            return Err(D::Error::custom(format!(
                "block mask has {} hex rows, header says {}",
                repr.hex.len(),
                repr.rows
            )));
        }
        // Every row's length is checked before anything is allocated, so the mask's size is
        // bounded by the text that describes it (a 1 KB file cannot ask for 100 GB).
        let digits = repr.cols.div_ceil(8).checked_mul(2).ok_or_else(|| {
            D::Error::custom(format!("block mask cols {} is too large", repr.cols))
        })?;
        for (r, h) in repr.hex.iter().enumerate() {
            if h.len() != digits {
                return Err(D::Error::custom(format!(
                    "block-row {r}: {} hex digits, expected {digits}",
                    h.len()
                )));
            }
        }
        let mut m = BlockMask::new(repr.rows, repr.cols);
        let nibble = |r: usize, c: u8| -> std::result::Result<u8, D::Error> {
            (c as char).to_digit(16).map(|v| v as u8).ok_or_else(|| {
                D::Error::custom(format!(
                    "block-row {r}: {:?} is not a hex digit",
                    c.escape_ascii().to_string()
                ))
            })
        };
        for (r, h) in repr.hex.iter().enumerate() {
            for (byte, pair) in h.as_bytes().chunks_exact(2).enumerate() {
                let v = nibble(r, pair[0])? << 4 | nibble(r, pair[1])?;
                for bit in 0..8 {
                    let c = byte * 8 + bit;
                    if v >> bit & 1 == 1 {
                        if c >= repr.cols {
                            return Err(D::Error::custom(format!(
                                "block-row {r}: bit set past column {}",
                                repr.cols
                            )));
                        }
                        m.set(r, c, true);
                    }
                }
            }
        }
        Ok(m)
    }
}

/// Operation and traffic counts of one head of one sequence.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpCounts {
    /// Integer MACs of `Q_int.K_int^T` over all valid blocks (step 2), d per entry.
    pub int_macs: u64,
    /// MACs of the surviving blocks' score refinement (step 6): 2d per entry in approx mode,
    /// 3d in exact mode (the integer part is reused from step 2), d float MACs in float mode.
    pub frac_macs: u64,
    /// Exponentials of the sparse softmax (one per entry of a computed block).
    pub exps: u64,
    /// MACs of `P.V` over computed blocks, d per entry.
    pub sv_macs: u64,
    /// Bytes of Q codes read (N x d codes of `bits` each, packed).
    pub q_bytes: u64,
    /// Bytes of K codes read.
    pub k_bytes: u64,
    /// Bytes of V read: rows of key blocks that at least one computed block uses, 16-bit values.
    pub v_bytes: u64,
}

impl std::ops::AddAssign for OpCounts {
    fn add_assign(&mut self, o: OpCounts) {
        self.int_macs += o.int_macs;
        self.frac_macs += o.frac_macs;
        self.exps += o.exps;
        self.sv_macs += o.sv_macs;
        self.q_bytes += o.q_bytes;
        self.k_bytes += o.k_bytes;
        self.v_bytes += o.v_bytes;
    }
}

/// One head of one sequence.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeadTrace {
    /// Head index within the layer.
    pub head: usize,
    /// Head importance from integer information (hdp.md step 5).
    pub importance: f64,
    /// Whether early head pruning removed this head (its blocks are then never computed).
    pub pruned: bool,
    /// Blocks kept by row-balanced pruning (step 4), a subset of the sequence's valid blocks.
    pub kept: BlockMask,
    /// Work actually done for this head (a pruned head has only its integer pass).
    pub counts: OpCounts,
}

/// One sequence (one batch item) of one layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SequenceTrace {
    /// Index of the sequence within the run.
    pub sequence: usize,
    /// Number of unmasked (non-padding) token positions.
    pub valid_tokens: usize,
    /// Blocks with at least one valid entry (padding and causal masks applied).
    pub valid: BlockMask,
    /// Power-of-two pre-scale exponent applied to Q before quantization.
    pub q_prescale_exp: i32,
    /// Power-of-two pre-scale exponent applied to K before quantization.
    pub k_prescale_exp: i32,
    /// Q values that saturated during quantization.
    pub q_saturated: u64,
    /// K values that saturated during quantization.
    pub k_saturated: u64,
    /// One entry per head.
    pub heads: Vec<HeadTrace>,
}

/// One attention layer of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerTrace {
    /// Layer index.
    pub layer: usize,
    /// Sequence length N (including padding positions).
    pub seq_len: usize,
    /// Head dimension d.
    pub head_dim: usize,
    /// Number of heads.
    pub heads: usize,
    /// Block size b.
    pub block_size: usize,
    /// Fixed-point format of Q and K.
    pub q_format: QFormat,
    /// How surviving scores were computed.
    pub score_mode: ScoreMode,
    /// The block-row threshold this layer used: the run's, or the calibration's for this
    /// layer (`--calibration`). Absent in traces written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<crate::config::RowThreshold>,
    /// Whether a causal mask was applied.
    pub causal: bool,
    /// One entry per sequence.
    pub sequences: Vec<SequenceTrace>,
}

/// A whole run: a header plus layers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trace {
    /// Always [`TRACE_FORMAT`].
    pub format: String,
    /// Always [`TRACE_VERSION`] for files this crate writes.
    pub version: u32,
    /// Who produced the trace (implementation and version).
    pub producer: String,
    /// The HDP options of the run (validated when the trace is read).
    pub config: ValidConfig,
    /// The layers, in order.
    pub layers: Vec<LayerTrace>,
}

/// Totals derived from a trace.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct TraceSummary {
    /// Valid blocks over all heads.
    pub valid_blocks: u64,
    /// Blocks kept by block pruning (step 4) over all heads, pruned heads included.
    pub kept_blocks: u64,
    /// Blocks actually computed: kept blocks of heads that survived head pruning.
    pub computed_blocks: u64,
    /// Heads over all layers and sequences.
    pub heads: u64,
    /// Heads removed by early head pruning.
    pub pruned_heads: u64,
    /// Summed operation counts.
    pub counts: OpCounts,
}

impl TraceSummary {
    /// Pruned valid blocks / valid blocks, from block pruning alone (step 4).
    pub fn block_sparsity(&self) -> f64 {
        ratio(self.valid_blocks - self.kept_blocks, self.valid_blocks)
    }

    /// Valid blocks not computed / valid blocks, block and head pruning together.
    pub fn effective_block_sparsity(&self) -> f64 {
        ratio(self.valid_blocks - self.computed_blocks, self.valid_blocks)
    }

    /// Pruned heads / heads.
    pub fn head_sparsity(&self) -> f64 {
        ratio(self.pruned_heads, self.heads)
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

impl LayerTrace {
    /// Totals over this layer's sequences and heads.
    pub fn summary(&self) -> TraceSummary {
        let mut s = TraceSummary::default();
        for seq in &self.sequences {
            let valid = seq.valid.count() as u64;
            for h in &seq.heads {
                let kept = h.kept.count() as u64;
                s.valid_blocks += valid;
                s.kept_blocks += kept;
                s.heads += 1;
                if h.pruned {
                    s.pruned_heads += 1;
                } else {
                    s.computed_blocks += kept;
                }
                s.counts += h.counts;
            }
        }
        s
    }
}

impl std::ops::AddAssign for TraceSummary {
    fn add_assign(&mut self, o: TraceSummary) {
        self.valid_blocks += o.valid_blocks;
        self.kept_blocks += o.kept_blocks;
        self.computed_blocks += o.computed_blocks;
        self.heads += o.heads;
        self.pruned_heads += o.pruned_heads;
        self.counts += o.counts;
    }
}

impl Trace {
    /// A new, empty trace.
    pub fn new(producer: impl Into<String>, config: ValidConfig) -> Self {
        Trace {
            format: TRACE_FORMAT.into(),
            version: TRACE_VERSION,
            producer: producer.into(),
            config,
            layers: Vec::new(),
        }
    }

    /// Totals over every layer, sequence and head.
    pub fn summary(&self) -> TraceSummary {
        let mut s = TraceSummary::default();
        for layer in &self.layers {
            s += layer.summary();
        }
        s
    }

    /// Writes the trace as JSON, atomically (see [`crate::io::write_atomic`]).
    pub fn write(&self, path: &Path) -> Result<()> {
        crate::io::write_atomic(path, |w| {
            serde_json::to_writer(w, self).map_err(std::io::Error::other)
        })
    }

    /// Reads and validates a trace file.
    pub fn read(path: &Path) -> Result<Trace> {
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.into(),
            source,
        })?;
        Trace::from_slice(&bytes, path)
    }

    /// Parses and validates trace JSON bytes (what [`Trace::read`] does after reading the
    /// file); `path` names the source in errors.
    pub fn from_slice(bytes: &[u8], path: &Path) -> Result<Trace> {
        let parse = |reason: String| Error::Parse {
            path: path.into(),
            reason,
        };
        let t: Trace = serde_json::from_slice(bytes)
            .map_err(|e| parse(format!("{e} (is this an hdp trace written with --trace?)")))?;
        if t.format != TRACE_FORMAT {
            return Err(parse(format!(
                "format is {:?}, expected {TRACE_FORMAT:?}",
                t.format
            )));
        }
        if t.version != TRACE_VERSION {
            return Err(parse(format!(
                "trace version {} is not supported (this build reads version {TRACE_VERSION})",
                t.version
            )));
        }
        t.validate().map_err(parse)?;
        Ok(t)
    }

    /// Structural checks a consumer relies on: dimensions agree, kept blocks are valid, and
    /// every count is within what the layer's shape allows.
    pub fn validate(&self) -> std::result::Result<(), String> {
        for l in &self.layers {
            l.q_format.validate().map_err(|e| e.to_string())?;
            if l.block_size == 0 || l.seq_len == 0 || l.head_dim == 0 || l.heads == 0 {
                return Err(format!(
                    "layer {}: block_size, seq_len, head_dim and heads must all be >= 1 (got {}, {}, {}, {})",
                    l.layer, l.block_size, l.seq_len, l.head_dim, l.heads
                ));
            }
            // Largest per-head counts the shape allows (every entry computed): 3d MACs per entry
            // in exact mode, d per entry for P.V, one exponential per entry.
            let entries = (l.seq_len as u64)
                .checked_mul(l.seq_len as u64)
                .ok_or_else(|| format!("layer {}: seq_len {} is too large", l.layer, l.seq_len))?;
            let macs = entries
                .checked_mul(3 * l.head_dim as u64)
                .ok_or_else(|| format!("layer {}: seq_len x head_dim is too large", l.layer))?;
            let nb = l.seq_len.div_ceil(l.block_size);
            for s in &l.sequences {
                if s.valid_tokens > l.seq_len {
                    return Err(format!(
                        "layer {} sequence {}: valid_tokens {} exceeds seq_len {}",
                        l.layer, s.sequence, s.valid_tokens, l.seq_len
                    ));
                }
                if s.heads.len() != l.heads {
                    return Err(format!(
                        "layer {} sequence {}: {} head entries, expected {}",
                        l.layer,
                        s.sequence,
                        s.heads.len(),
                        l.heads
                    ));
                }
                let mut seen = vec![false; l.heads];
                for h in &s.heads {
                    if h.head >= l.heads || std::mem::replace(&mut seen[h.head], true) {
                        return Err(format!(
                            "layer {} sequence {}: head index {} is out of range or repeated ({} heads)",
                            l.layer, s.sequence, h.head, l.heads
                        ));
                    }
                    let c = &h.counts;
                    if c.int_macs > macs
                        || c.frac_macs > macs
                        || c.sv_macs > macs
                        || c.exps > entries
                    {
                        return Err(format!(
                            "layer {} sequence {} head {}: counts {c:?} exceed what {} tokens x d {} allow",
                            l.layer, s.sequence, h.head, l.seq_len, l.head_dim
                        ));
                    }
                    if !h.importance.is_finite() {
                        return Err(format!(
                            "layer {} sequence {} head {}: importance is not finite",
                            l.layer, s.sequence, h.head
                        ));
                    }
                }
                if s.valid.rows() != nb || s.valid.cols() != nb {
                    return Err(format!(
                        "layer {} sequence {}: valid mask is {}x{}, expected {nb}x{nb}",
                        l.layer,
                        s.sequence,
                        s.valid.rows(),
                        s.valid.cols()
                    ));
                }
                for h in &s.heads {
                    if !h.kept.is_subset_of(&s.valid) {
                        return Err(format!(
                            "layer {} sequence {} head {}: kept blocks outside the valid blocks",
                            l.layer, s.sequence, h.head
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_mask_round_trips_through_json() {
        let mut m = BlockMask::new(3, 70);
        for (r, c) in [(0, 0), (0, 69), (1, 8), (2, 63), (2, 64)] {
            m.set(r, c, true);
        }
        let s = serde_json::to_string(&m).unwrap();
        let back: BlockMask = serde_json::from_str(&s).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.count(), 5);
        assert_eq!(back.count_row(2), 2);
    }

    #[test]
    fn block_mask_rejects_bad_hex() {
        let bad = r#"{"rows":1,"cols":4,"hex":["zz"]}"#;
        assert!(serde_json::from_str::<BlockMask>(bad).is_err());
        // A multi-byte character where a hex digit belongs (issue #11: this used to panic).
        let wide = r#"{"rows":1,"cols":8,"hex":["é"]}"#;
        let e = serde_json::from_str::<BlockMask>(wide)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a hex digit"), "{e}");
        // A huge declared size in a tiny text is refused before any allocation.
        let huge = r#"{"rows":1,"cols":1099511627776,"hex":["00"]}"#;
        assert!(serde_json::from_str::<BlockMask>(huge).is_err());
        let rows = r#"{"rows":1099511627776,"cols":8,"hex":["00"]}"#;
        assert!(serde_json::from_str::<BlockMask>(rows).is_err());
        let past = r#"{"rows":1,"cols":4,"hex":["f0"]}"#;
        assert!(serde_json::from_str::<BlockMask>(past).is_err());
    }
}
