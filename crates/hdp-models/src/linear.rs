//! Row-invariant dense layers: `y = x W^T + b` with fused epilogues, on packed weights.
//!
//! Every output element is computed the same way whatever the batch, the row's position in it,
//! the number of threads and the instruction set: one accumulator starting at zero, one fused
//! multiply-add per input feature in order `k = 0, 1, ..., K-1`, then the bias, then the
//! epilogue. A fused multiply-add rounds once on every tier (`f32::mul_add` in the portable
//! twin, `vfmadd` in the SIMD tiers), so the tiers agree bit for bit and an embedding does not
//! depend on which texts share its batch (issue #11, part 5). Vectorization runs across output
//! columns, never across `k`, so no reduction order is ever chosen by the shape.
//!
//! Layout: weights are packed once at load into panels of [`NR`] output columns, `[panel][k][NR]`
//! (zero-padded past `n`), so the micro-kernel streams one contiguous panel while `R` rows of
//! `x` are broadcast, the way BLIS-style kernels do. Work is split across threads by blocks of
//! rows (or of panels when there are few rows); either split leaves each element's arithmetic
//! unchanged.

use rayon::prelude::*;

/// Output columns per packed panel.
pub const NR: usize = 32;
/// Rows per block handed to a thread: a multiple of both tiers' row groups (AVX-512's 12,
/// AVX2's 6); 96 ran 1-2% faster than 64 on Sapphire Rapids (`hdp bench linear`).
const MC: usize = 96;

/// Panel bytes per group on AVX-512 (`Linear::block_body`): a group stays in L2 (2 MiB per
/// core on Sapphire Rapids) while every row tile of a block runs over it, each tile's rows in
/// L1 across the group (12 panels at k = 384, 3 at k = 1,536). Against panels one at a time
/// over 96-row blocks: +6-17% on the model's shapes at 4,096 rows, one thread, in one process
/// alternating (Sapphire Rapids), the same bits.
const GROUP_BYTES: usize = 640 * 1024;

/// Most rows per block on AVX-512 (blocks are a thread's unit of work): the panel groups are
/// reused over this many rows before the next block loads them again.
const MC_AVX512: usize = 1536;

/// Rows per block for `m` rows on `threads` threads: [`MC`], or on AVX-512 as few blocks of
/// at most [`MC_AVX512`] rows as keeps every thread busy (a multiple of `threads` blocks, each
/// a multiple of 12 rows).
fn block_rows(m: usize, threads: usize, tier: Tier) -> usize {
    if tier != Tier::Avx512 {
        return MC;
    }
    let threads = threads.max(1);
    let blocks = threads * m.div_ceil(threads * MC_AVX512);
    m.div_ceil(blocks).next_multiple_of(MR_MAX).max(MR_MAX)
}

/// Instruction-set tier of the dense layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tier {
    /// Plain Rust (`f32::mul_add`), the meaning of the others.
    Portable,
    /// AVX2 + FMA, 256-bit.
    Avx2,
    /// AVX-512F, 512-bit.
    Avx512,
}

impl Tier {
    /// Every tier, slowest first.
    pub const ALL: [Tier; 3] = [Tier::Portable, Tier::Avx2, Tier::Avx512];

    /// Whether this CPU can run the tier.
    pub fn available(self) -> bool {
        match self {
            Tier::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Tier::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Tier::Avx512 => is_x86_feature_detected!("avx512f"),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The best tier this CPU runs, capped by `HDP_ISA` when it names a tier (`portable`,
    /// `avx2`, `avx-vnni`, `avx512-vnni`: the dense layers then use at most that width).
    pub fn detect() -> Tier {
        use hdp_attention::fast::Isa;
        // One parser of HDP_ISA: the kernels' (a bad value is refused at start-up there).
        let cap = match Isa::from_env() {
            Ok(Some(Isa::Portable)) => Tier::Portable,
            // AVX-VNNI adds int8 products to AVX2, nothing for f32 GEMMs.
            Ok(Some(Isa::Avx2 | Isa::AvxVnni)) => Tier::Avx2,
            _ => Tier::Avx512,
        };
        *Tier::ALL
            .iter()
            .rev()
            .find(|t| t.available() && **t <= cap)
            .unwrap_or(&Tier::Portable)
    }

    /// Name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Tier::Portable => "portable",
            Tier::Avx2 => "avx2",
            Tier::Avx512 => "avx512",
        }
    }
}

/// What happens to `x W^T + b` before it is stored.
#[derive(Clone, Copy, Debug)]
pub enum Epilogue<'a> {
    /// Nothing more.
    None,
    /// Exact GELU, `x Phi(x)` ([`gelu_erf`]).
    Gelu,
    /// GELU's tanh approximation ([`gelu_tanh`]).
    GeluTanh,
    /// ReLU.
    Relu,
    /// Adds a residual of the output's shape.
    Residual(&'a [f32]),
}

/// A dense layer with packed weights.
#[derive(Debug)]
pub struct Linear {
    k: usize,
    n: usize,
    packed: Vec<f32>,
    /// Where the panels start in `packed`: its first 64-byte boundary ([`aligned_zeros`]).
    start: usize,
    bias: Vec<f32>,
}

impl Linear {
    /// From a PyTorch-layout weight `[n, k]` (row-major, one row per output) and a bias `[n]`.
    pub fn new(weight: &[f32], bias: &[f32], n: usize, k: usize) -> Linear {
        assert_eq!(weight.len(), n * k, "weight is not [n, k]");
        assert_eq!(bias.len(), n, "bias is not [n]");
        let panels = n.div_ceil(NR);
        let (mut packed, start) = aligned_zeros(panels * k * NR);
        for (j, row) in weight.chunks_exact(k).enumerate() {
            let (p, c) = (j / NR, j % NR);
            for (kk, &w) in row.iter().enumerate() {
                packed[start + (p * k + kk) * NR + c] = w;
            }
        }
        Linear {
            k,
            n,
            packed,
            start,
            bias: bias.to_vec(),
        }
    }

    /// The packed panels, `[panel][k][NR]`, starting on a 64-byte boundary.
    fn panels(&self) -> &[f32] {
        let len = self.n.div_ceil(NR) * self.k * NR;
        &self.packed[self.start..self.start + len]
    }

    /// Several layers on the same input as one (their outputs side by side), e.g. Q, K, V.
    pub fn concat(parts: &[(&[f32], &[f32], usize)], k: usize) -> Linear {
        let mut w = Vec::new();
        let mut b = Vec::new();
        for (wi, bi, _) in parts {
            w.extend_from_slice(wi);
            b.extend_from_slice(bi);
        }
        let n = parts.iter().map(|p| p.2).sum();
        Linear::new(&w, &b, n, k)
    }

    /// Input features.
    pub fn in_features(&self) -> usize {
        self.k
    }

    /// Output features.
    pub fn out_features(&self) -> usize {
        self.n
    }

    /// `out[m, n] = epilogue(x[m, k] W^T + b)` with the given tier (which must be available).
    pub fn forward(&self, x: &[f32], m: usize, out: &mut [f32], epi: Epilogue, tier: Tier) {
        assert_eq!(out.len(), m * self.n, "output is not [m, n]");
        let sink = RowMajor {
            ptr: out.as_mut_ptr(),
            n: self.n,
        };
        self.forward_to(x, m, &sink, epi, tier);
    }

    /// [`Linear::forward`] with the output elements stored where `sink` says (e.g. straight
    /// into per-head layouts); the same arithmetic per element.
    pub fn forward_to<S: Sink>(&self, x: &[f32], m: usize, sink: &S, epi: Epilogue, tier: Tier) {
        let (k, n) = (self.k, self.n);
        assert_eq!(x.len(), m * k, "input is not [m, k]");
        if let Epilogue::Residual(r) = epi {
            assert_eq!(r.len(), m * n, "residual is not [m, n]");
        }
        assert!(tier.available(), "tier {} is not available", tier.name());
        if m == 0 || n == 0 {
            return;
        }
        let panels = n.div_ceil(NR);
        let threads = rayon::current_num_threads();
        if m >= 2 * MC || threads == 1 || panels < 2 {
            let mc = block_rows(m, threads, tier);
            (0..m.div_ceil(mc)).into_par_iter().for_each(|c| {
                let row0 = c * mc;
                self.block(x, row0, mc.min(m - row0), 0..panels, sink, epi, tier)
            });
        } else {
            // Few rows: split the panels instead (same arithmetic per element).
            let per = panels.div_ceil(threads).max(1);
            let parts: Vec<Vec<f32>> = (0..panels)
                .step_by(per)
                .collect::<Vec<_>>()
                .into_par_iter()
                .map(|p0| {
                    let p1 = (p0 + per).min(panels);
                    let mut o = vec![0.0; m * n];
                    let part = RowMajor {
                        ptr: o.as_mut_ptr(),
                        n,
                    };
                    self.block(x, 0, m, p0..p1, &part, epi, tier);
                    o
                })
                .collect();
            for (i, o) in parts.iter().enumerate() {
                let c0 = i * per * NR;
                let c1 = ((i + 1) * per * NR).min(n);
                for r in 0..m {
                    let mut c = c0;
                    while c < c1 {
                        let (p, run) = sink.at(r, c);
                        let len = run.min(c1 - c);
                        // SAFETY: the sink's contract (`Sink`): `len` elements from `p` are
                        // element (r, c) on, writable, written by nothing else.
                        let dst = unsafe { std::slice::from_raw_parts_mut(p, len) };
                        dst.copy_from_slice(&o[r * n + c..r * n + c + len]);
                        c += len;
                    }
                }
            }
        }
    }

    /// Rows `row0..row0 + rows` of the output (in `out`, `rows x n`), panels `ps`: the body
    /// compiled for the tier, so that the epilogues (bias, GELU's polynomial, residual) run on
    /// the tier's vectors too (compiled for the baseline they ran 4 lanes wide, 7% of an
    /// embedding run). Rust never fuses a multiply and an add on its own, so every tier's
    /// epilogue gives the same bits (tested by `every_tier_is_bit_identical_to_the_definition`).
    #[allow(clippy::too_many_arguments)]
    fn block<S: Sink>(
        &self,
        x: &[f32],
        row0: usize,
        rows: usize,
        ps: std::ops::Range<usize>,
        out: &S,
        epi: Epilogue,
        tier: Tier,
    ) {
        match tier {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `forward_to` checked that the CPU has the tier.
            Tier::Avx512 => unsafe { self.block_avx512(x, row0, rows, ps, out, epi) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Tier::Avx2 => unsafe { self.block_avx2(x, row0, rows, ps, out, epi) },
            _ => self.block_body(x, row0, rows, ps, out, epi, tier),
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn block_avx512<S: Sink>(
        &self,
        x: &[f32],
        row0: usize,
        rows: usize,
        ps: std::ops::Range<usize>,
        out: &S,
        epi: Epilogue,
    ) {
        self.block_body(x, row0, rows, ps, out, epi, Tier::Avx512)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn block_avx2<S: Sink>(
        &self,
        x: &[f32],
        row0: usize,
        rows: usize,
        ps: std::ops::Range<usize>,
        out: &S,
        epi: Epilogue,
    ) {
        self.block_body(x, row0, rows, ps, out, epi, Tier::Avx2)
    }

    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn block_body<S: Sink>(
        &self,
        x: &[f32],
        row0: usize,
        rows: usize,
        ps: std::ops::Range<usize>,
        out: &S,
        epi: Epilogue,
        tier: Tier,
    ) {
        let k = self.k;
        let mut tile = [[0.0f32; NR]; MR_MAX];
        if tier == Tier::Avx512 {
            // Panels in groups that stay in L2 ([`GROUP_BYTES`]), each row tile running over a
            // whole group while its rows stay in L1.
            let group = (GROUP_BYTES / (k * NR * 4)).max(1);
            let mut g0 = ps.start;
            while g0 < ps.end {
                let g1 = (g0 + group).min(ps.end);
                let mut r = 0;
                while r < rows {
                    let mr = MR_MAX.min(rows - r);
                    let a = &x[(row0 + r) * k..(row0 + r + mr) * k];
                    for p in g0..g1 {
                        let panel = &self.panels()[p * k * NR..(p + 1) * k * NR];
                        self.prefetch_tile(row0 + r, mr, p, out, epi);
                        #[cfg(target_arch = "x86_64")]
                        if self.direct_tile(a, k, panel, row0 + r, mr, p, out, epi) {
                            continue;
                        }
                        micro(tier, a, k, panel, mr, &mut tile);
                        self.finish_tile(&tile, row0 + r, mr, p, out, epi);
                    }
                    r += mr;
                }
                g0 = g1;
            }
            return;
        }
        // AVX2 has 16 vector registers: 6 rows x 16 columns per half-panel pass.
        let mr_max = if tier == Tier::Avx2 { 6 } else { MR_MAX };
        for p in ps {
            let panel = &self.panels()[p * k * NR..(p + 1) * k * NR];
            let mut r = 0;
            while r < rows {
                let mr = mr_max.min(rows - r);
                let a = &x[(row0 + r) * k..(row0 + r + mr) * k];
                self.prefetch_tile(row0 + r, mr, p, out, epi);
                micro(tier, a, k, panel, mr, &mut tile);
                self.finish_tile(&tile, row0 + r, mr, p, out, epi);
                r += mr;
            }
        }
    }

    /// The AVX-512 tile at `row`, panel `p`, with its epilogue applied to the accumulators
    /// and stored straight from them ([`micro_avx512_direct`]), when the panel is whole, every
    /// row's output run covers it and the epilogue has a vector form; false (nothing done)
    /// otherwise. Against the accumulators stored to a tile and the epilogue read back from
    /// it: the same arithmetic per element.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn direct_tile<S: Sink>(
        &self,
        a: &[f32],
        k: usize,
        panel: &[f32],
        row: usize,
        mr: usize,
        p: usize,
        out: &S,
        epi: Epilogue,
    ) -> bool {
        let c0 = p * NR;
        if c0 + NR > self.n || matches!(epi, Epilogue::GeluTanh) {
            return false;
        }
        let mut outs = [std::ptr::null_mut(); MR_MAX];
        let mut res = [std::ptr::null(); MR_MAX];
        for i in 0..mr {
            let (ptr, run) = out.at(row + i, c0);
            if run < NR {
                return false;
            }
            outs[i] = ptr;
            if let Epilogue::Residual(z) = epi {
                res[i] = z[(row + i) * self.n + c0..][..NR].as_ptr();
            }
        }
        let kind = match epi {
            Epilogue::None => Direct::Bias,
            Epilogue::Gelu => Direct::Gelu,
            Epilogue::Relu => Direct::Relu,
            Epilogue::Residual(_) => Direct::Residual,
            Epilogue::GeluTanh => return false,
        };
        let bias = self.bias[c0..c0 + NR].as_ptr();
        macro_rules! by_rows {
            ($($r:literal)*) => {
                match mr {
                    // SAFETY: `block_avx512` runs on CPUs with avx512f; `a` holds `mr` rows of
                    // `k`, the panel `k x NR`, the bias `NR` from `bias`; `outs[i]` is the
                    // sink's run of at least `NR` writable elements of row `row + i`
                    // (`Sink`'s contract), `res[i]` `NR` residual elements when asked for.
                    $($r => unsafe {
                        micro_avx512_direct::<$r>(a, k, panel, bias, kind, &outs, &res)
                    },)*
                    _ => unsafe { micro_avx512_direct::<12>(a, k, panel, bias, kind, &outs, &res) },
                }
            };
        }
        by_rows!(1 2 3 4 5 6 7 8 9 10 11);
        true
    }

    /// Asks for the output (and residual) lines of the tile at `row`, panel `p`, so that the
    /// misses (a batch's outputs are megabytes, out in L3) resolve during the micro-kernel
    /// instead of stalling its stores: +5-7% on the k = 384 layers, 4,096 rows, one thread
    /// (`hdp bench linear --gelu`, 8 alternating rounds on Sapphire Rapids).
    #[inline(always)]
    fn prefetch_tile<S: Sink>(&self, row: usize, mr: usize, p: usize, out: &S, epi: Epilogue) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            let c0 = p * NR;
            let cols = NR.min(self.n - c0);
            for row in row..row + mr {
                let (p, run) = out.at(row, c0);
                // SAFETY: prefetching never faults; the addresses are the tile's outputs.
                unsafe {
                    _mm_prefetch::<_MM_HINT_T0>(p as *const i8);
                    if run.min(cols) > 16 {
                        _mm_prefetch::<_MM_HINT_T0>(p.add(16) as *const i8);
                    }
                }
                if let Epilogue::Residual(res) = epi {
                    let g = &res[row * self.n + c0..];
                    // SAFETY: as above.
                    unsafe {
                        _mm_prefetch::<_MM_HINT_T0>(g.as_ptr() as *const i8);
                        if cols > 16 {
                            _mm_prefetch::<_MM_HINT_T0>(g[16..].as_ptr() as *const i8);
                        }
                    }
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (row, mr, p, out, epi);
    }

    /// The epilogue of a finished tile (rows `row..row + mr`, panel `p`) into the sink.
    #[inline(always)]
    fn finish_tile<S: Sink>(
        &self,
        tile: &[[f32; NR]; MR_MAX],
        row0: usize,
        mr: usize,
        p: usize,
        out: &S,
        epi: Epilogue,
    ) {
        let n = self.n;
        let c0 = p * NR;
        let cols = NR.min(n - c0);
        for (i, t) in tile.iter().take(mr).enumerate() {
            let row = row0 + i;
            let mut c = 0;
            while c < cols {
                let (p, run) = out.at(row, c0 + c);
                let len = run.min(cols - c);
                // SAFETY: the sink's contract (`Sink`): `len` elements from `p` are
                // output (row, c0 + c) on, writable, written by nothing else.
                let o = unsafe { std::slice::from_raw_parts_mut(p, len) };
                let t = &t[c..c + len];
                let b = &self.bias[c0 + c..c0 + c + len];
                match epi {
                    Epilogue::None => {
                        for ((o, &t), &b) in o.iter_mut().zip(t).zip(b) {
                            *o = t + b;
                        }
                    }
                    Epilogue::Gelu => {
                        for ((o, &t), &b) in o.iter_mut().zip(t).zip(b) {
                            *o = gelu_erf(t + b);
                        }
                    }
                    Epilogue::GeluTanh => {
                        for ((o, &t), &b) in o.iter_mut().zip(t).zip(b) {
                            *o = gelu_tanh(t + b);
                        }
                    }
                    Epilogue::Relu => {
                        for ((o, &t), &b) in o.iter_mut().zip(t).zip(b) {
                            *o = (t + b).max(0.0);
                        }
                    }
                    Epilogue::Residual(res) => {
                        let g = row * n + c0 + c;
                        for (((o, &t), &b), &z) in o.iter_mut().zip(t).zip(b).zip(&res[g..g + len])
                        {
                            *o = (t + b) + z;
                        }
                    }
                }
                c += len;
            }
        }
    }
}

/// Where a dense layer's output elements go ([`Linear::forward_to`]).
///
/// # Safety
/// Implementors promise that `at(r, c)`, for `r < m` and `c < n` of the call it serves,
/// returns a pointer to element `(r, c)` and a `run >= 1` such that the `min(run, n - c)`
/// elements from there are `(r, c)..(r, c + run)`, valid for writes while the sink is
/// borrowed, distinct for distinct `(r, c)`, and read or written by nothing else meanwhile:
/// blocks of rows on different threads write through it at once. Callers never write past
/// column `n - 1`.
pub unsafe trait Sink: Sync {
    /// A pointer to output element `(r, c)` and how many elements from `c` on are contiguous
    /// there.
    fn at(&self, r: usize, c: usize) -> (*mut f32, usize);
}

/// The plain `[m, n]` row-major output.
struct RowMajor {
    ptr: *mut f32,
    n: usize,
}

// SAFETY: distinct (r, c) are distinct elements of a buffer of m x n the caller borrows
// mutably for the call; `run` ends at the row's end.
unsafe impl Sink for RowMajor {
    #[inline(always)]
    fn at(&self, r: usize, c: usize) -> (*mut f32, usize) {
        // SAFETY: inside the m x n buffer (r < m, c < n).
        (unsafe { self.ptr.add(r * self.n + c) }, self.n - c)
    }
}

// SAFETY: a pointer into a buffer borrowed mutably by the call, written at disjoint elements.
unsafe impl Sync for RowMajor {}
unsafe impl Send for RowMajor {}

/// `len` zeros starting on a 64-byte boundary of the returned vector (at the returned index).
/// A panel row is 128 bytes: aligned, no vector load of the micro-kernels straddles two cache
/// lines. Misaligned (the allocator's 16 bytes), every other 32-byte load of the AVX2 kernel
/// and every 64-byte load of the AVX-512 kernel was a split load: with the operands in L1
/// (`hdp bench linear --rows 60 --shapes 384x64`, Zen 3, alternating builds) the AVX2 kernel
/// ran at 66-81% of the FMA peak before, 88-95% after.
fn aligned_zeros(len: usize) -> (Vec<f32>, usize) {
    let v = vec![0.0f32; len + 16];
    let start = v.as_ptr().align_offset(64);
    assert!(start < 16, "f32 vectors are 4-byte aligned");
    (v, start)
}

impl Clone for Linear {
    /// A copy whose panels start on a 64-byte boundary too (a plain copy of the vector could
    /// land elsewhere modulo 64).
    fn clone(&self) -> Linear {
        let src = self.panels();
        let (mut packed, start) = aligned_zeros(src.len());
        packed[start..start + src.len()].copy_from_slice(src);
        Linear {
            k: self.k,
            n: self.n,
            packed,
            start,
            bias: self.bias.clone(),
        }
    }
}

/// Most rows one micro-kernel call computes: AVX-512's 32 registers hold 12 rows x 32 columns
/// of accumulators (24) beside two weight vectors and the broadcasts. With 8 rows the
/// bare GEMMs ran at 72-77% of the FMA peak on Sapphire Rapids, with 12 at 79-83%
/// (`hdp bench linear`, one thread, same invocation).
const MR_MAX: usize = 12;

/// `tile[i][c] = sum_k a[i][k] * panel[k][c]` for `i < mr`, one fused multiply-add per `k` in
/// order.
fn micro(
    tier: Tier,
    a: &[f32],
    k: usize,
    panel: &[f32],
    mr: usize,
    tile: &mut [[f32; NR]; MR_MAX],
) {
    debug_assert!(a.len() == mr * k && panel.len() == k * NR && mr <= MR_MAX);
    macro_rules! by_rows {
        ($f:ident) => {
            match mr {
                1 => $f::<1>(a, k, panel, tile),
                2 => $f::<2>(a, k, panel, tile),
                3 => $f::<3>(a, k, panel, tile),
                4 => $f::<4>(a, k, panel, tile),
                5 => $f::<5>(a, k, panel, tile),
                6 => $f::<6>(a, k, panel, tile),
                7 => $f::<7>(a, k, panel, tile),
                8 => $f::<8>(a, k, panel, tile),
                9 => $f::<9>(a, k, panel, tile),
                10 => $f::<10>(a, k, panel, tile),
                11 => $f::<11>(a, k, panel, tile),
                _ => $f::<12>(a, k, panel, tile),
            }
        };
    }
    match tier {
        Tier::Portable => by_rows!(micro_portable),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `forward` checked that the CPU has the tier; slice lengths checked above.
        Tier::Avx2 => unsafe { by_rows!(micro_avx2) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Tier::Avx512 => unsafe { by_rows!(micro_avx512) },
        #[cfg(not(target_arch = "x86_64"))]
        _ => by_rows!(micro_portable),
    }
}

/// The portable twin: the meaning of every tier.
fn micro_portable<const R: usize>(
    a: &[f32],
    k: usize,
    panel: &[f32],
    tile: &mut [[f32; NR]; MR_MAX],
) {
    let mut acc = [[0.0f32; NR]; R];
    for kk in 0..k {
        let b = &panel[kk * NR..(kk + 1) * NR];
        for (r, acc) in acc.iter_mut().enumerate() {
            let x = a[r * k + kk];
            for (s, &w) in acc.iter_mut().zip(b) {
                *s = x.mul_add(w, *s);
            }
        }
    }
    tile[..R].copy_from_slice(&acc);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn micro_avx2<const R: usize>(
    a: &[f32],
    k: usize,
    panel: &[f32],
    tile: &mut [[f32; NR]; MR_MAX],
) {
    // 16 ymm registers: groups of at most 6 rows x 16 columns (12 accumulators + 2 weight
    // vectors + 1 broadcast), so nothing spills; `block` hands AVX2 at most 6 rows.
    let mut r0 = 0;
    while r0 < R {
        let g = (R - r0).min(6);
        for half in 0..2 {
            let a = &a[r0 * k..(r0 + g) * k];
            let t = &mut tile[r0..r0 + g];
            match g {
                1 => avx2_group::<1>(a, k, panel, half, t),
                2 => avx2_group::<2>(a, k, panel, half, t),
                3 => avx2_group::<3>(a, k, panel, half, t),
                4 => avx2_group::<4>(a, k, panel, half, t),
                5 => avx2_group::<5>(a, k, panel, half, t),
                _ => avx2_group::<6>(a, k, panel, half, t),
            }
        }
        r0 += g;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2_group<const G: usize>(
    a: &[f32],
    k: usize,
    panel: &[f32],
    half: usize,
    tile: &mut [[f32; NR]],
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm256_setzero_ps(); 2]; G];
    let pb = panel.as_ptr().add(half * 16);
    let pa = a.as_ptr();
    for kk in 0..k {
        let b0 = _mm256_loadu_ps(pb.add(kk * NR));
        let b1 = _mm256_loadu_ps(pb.add(kk * NR + 8));
        for (r, acc) in acc.iter_mut().enumerate() {
            let x = _mm256_broadcast_ss(&*pa.add(r * k + kk));
            acc[0] = _mm256_fmadd_ps(x, b0, acc[0]);
            acc[1] = _mm256_fmadd_ps(x, b1, acc[1]);
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        let t = tile[r].as_mut_ptr().add(half * 16);
        _mm256_storeu_ps(t, acc[0]);
        _mm256_storeu_ps(t.add(8), acc[1]);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn micro_avx512<const R: usize>(
    a: &[f32],
    k: usize,
    panel: &[f32],
    tile: &mut [[f32; NR]; MR_MAX],
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    micro_avx512_body::<R>(a, k, panel, &mut acc);
    for (r, acc) in acc.iter().enumerate() {
        let t = tile[r].as_mut_ptr();
        _mm512_storeu_ps(t, acc[0]);
        _mm512_storeu_ps(t.add(16), acc[1]);
    }
}

/// `acc[i] += sum_k a[i][k] * panel[k]`, one fused multiply-add per `k` in order (the AVX-512
/// micro-kernels' loop).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn micro_avx512_body<const R: usize>(
    a: &[f32],
    k: usize,
    panel: &[f32],
    acc: &mut [[std::arch::x86_64::__m512; 2]; R],
) {
    use std::arch::x86_64::*;
    // One base pointer per row and `k` unrolled by 4: every broadcast addresses its row's
    // base plus the shared index (compiled per step, the row addresses took ~10 integer
    // instructions per 16 FMAs, some of them on the FMA ports).
    let mut rows = [a.as_ptr(); R];
    for (r, p) in rows.iter_mut().enumerate() {
        *p = a.as_ptr().add(r * k);
    }
    let mut pb = panel.as_ptr();
    let mut kk = 0;
    while kk + 4 <= k {
        for u in 0..4 {
            let b0 = _mm512_loadu_ps(pb.add(u * NR));
            let b1 = _mm512_loadu_ps(pb.add(u * NR + 16));
            for (acc, &p) in acc.iter_mut().zip(&rows) {
                let x = _mm512_set1_ps(*p.add(kk + u));
                acc[0] = _mm512_fmadd_ps(x, b0, acc[0]);
                acc[1] = _mm512_fmadd_ps(x, b1, acc[1]);
            }
        }
        pb = pb.add(4 * NR);
        kk += 4;
    }
    while kk < k {
        let b0 = _mm512_loadu_ps(pb);
        let b1 = _mm512_loadu_ps(pb.add(16));
        for (acc, &p) in acc.iter_mut().zip(&rows) {
            let x = _mm512_set1_ps(*p.add(kk));
            acc[0] = _mm512_fmadd_ps(x, b0, acc[0]);
            acc[1] = _mm512_fmadd_ps(x, b1, acc[1]);
        }
        pb = pb.add(NR);
        kk += 1;
    }
}

/// The epilogues [`micro_avx512_direct`] applies in registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direct {
    Bias,
    Gelu,
    Relu,
    Residual,
}

/// [`micro_avx512`]'s accumulators, then `t + b` and the epilogue in registers, stored to the
/// rows' outputs: the same operations in the same order as [`Linear::finish_tile`] on each
/// element (no fused multiply-adds in the epilogue; [`gelu16`] is [`gelu_erf`] lane for lane).
///
/// # Safety
/// avx512f; `a` holds `R` rows of `k`, `panel` `k x NR`; `bias` points at `NR` floats,
/// `outs[..R]` at `NR` writable floats each, and with [`Direct::Residual`] `res[..R]` at `NR`
/// readable floats each.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn micro_avx512_direct<const R: usize>(
    a: &[f32],
    k: usize,
    panel: &[f32],
    bias: *const f32,
    kind: Direct,
    outs: &[*mut f32; MR_MAX],
    res: &[*const f32; MR_MAX],
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    micro_avx512_body::<R>(a, k, panel, &mut acc);
    let (b0, b1) = (_mm512_loadu_ps(bias), _mm512_loadu_ps(bias.add(16)));
    macro_rules! each_row {
        (|$x:ident, $r:ident| $f:expr) => {
            for ($r, acc) in acc.iter().enumerate() {
                for (h, b) in [b0, b1].into_iter().enumerate() {
                    let $x = _mm512_add_ps(acc[h], b);
                    let $r = ($r, h);
                    _mm512_storeu_ps(outs[$r.0].add(16 * h), $f);
                }
            }
        };
    }
    match kind {
        Direct::Bias => each_row!(|x, _r| x),
        Direct::Gelu => each_row!(|x, _r| gelu16(x)),
        Direct::Relu => each_row!(|x, _r| _mm512_max_ps(x, _mm512_setzero_ps())),
        Direct::Residual => {
            each_row!(|x, r| _mm512_add_ps(x, _mm512_loadu_ps(res[r.0].add(16 * r.1))))
        }
    }
}

/// [`gelu_erf`] on 16 lanes: the same multiplies, adds and division in the same order, the
/// clamp NaN-preserving as `f32::clamp` (`max`/`min` return their second operand on NaN).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn gelu16(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let (mul, add, set) = (_mm512_mul_ps, _mm512_add_ps, _mm512_set1_ps);
    let u = mul(x, set(std::f32::consts::FRAC_1_SQRT_2));
    let u = _mm512_min_ps(set(4.0), _mm512_max_ps(set(-4.0), u));
    let u2 = mul(u, u);
    let mut p = add(mul(u2, set(-2.726_142_3e-10)), set(2.770_681_4e-8));
    for c in [
        -2.101_024e-6,
        -5.692_506_4e-5,
        -7.349_906_3e-4,
        -2.954_6e-3,
        -1.609_603_3e-2,
    ] {
        p = add(mul(u2, p), set(c));
    }
    p = mul(p, u);
    let mut q = add(mul(u2, set(-1.456_607_2e-5)), set(-2.133_740_6e-4));
    for c in [-1.682_827e-3, -7.373_329_2e-3, -1.426_473_9e-2] {
        q = add(mul(u2, q), set(c));
    }
    let erf = _mm512_div_ps(p, q);
    mul(mul(set(0.5), x), add(set(1.0), erf))
}

/// The f32 fused multiply-add peak of one core on `tier`, in GFLOP/s: independent
/// accumulators in registers (enough to cover the FMA latency on both pipes), no memory
/// traffic, best of a few runs of about `ms` milliseconds in all. The ceiling the dense layers'
/// GFLOP/s are read against (`hdp bench linear`); `None` for the portable tier (no fixed
/// instruction mix).
pub fn fma_peak_gflops(tier: Tier, ms: f64) -> Option<f64> {
    if !tier.available() {
        return None;
    }
    let iters = 1u64 << 16;
    let run = || -> Option<f64> {
        let t0 = std::time::Instant::now();
        let flops = match tier {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the tier was checked above.
            Tier::Avx2 => unsafe { peak_avx2(iters) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Tier::Avx512 => unsafe { peak_avx512(iters) },
            _ => return None,
        };
        Some(flops / t0.elapsed().as_secs_f64() / 1e9)
    };
    let first = run()?;
    let t0 = std::time::Instant::now();
    let mut best = first;
    while t0.elapsed().as_secs_f64() * 1e3 < ms {
        best = best.max(run()?);
    }
    Some(best)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn peak_avx2(iters: u64) -> f64 {
    use std::arch::x86_64::*;
    let mut acc = [_mm256_set1_ps(0.0); 12];
    let x = _mm256_set1_ps(std::hint::black_box(0.999_9));
    let y = _mm256_set1_ps(std::hint::black_box(1e-4));
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = _mm256_fmadd_ps(*a, x, y);
        }
    }
    std::hint::black_box(&acc);
    (iters * 12 * 8 * 2) as f64
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn peak_avx512(iters: u64) -> f64 {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_set1_ps(0.0); 16];
    let x = _mm512_set1_ps(std::hint::black_box(0.999_9));
    let y = _mm512_set1_ps(std::hint::black_box(1e-4));
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = _mm512_fmadd_ps(*a, x, y);
        }
    }
    std::hint::black_box(&acc);
    (iters * 16 * 16 * 2) as f64
}

/// The error function, |error| below 1e-6 (tested): a rational approximation on [-4, 4]
/// (erf is +-1 in f32 outside), odd numerator of degree 13 over even denominator of degree 8,
/// the coefficients Eigen and XLA use for f32. Plain multiplies and adds (no fused ones), so a
/// vectorized loop gives the same bits as this scalar code.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2 * -2.726_142_3e-10 + 2.770_681_4e-8;
    p = x2 * p + -2.101_024e-6;
    p = x2 * p + -5.692_506_4e-5;
    p = x2 * p + -7.349_906_3e-4;
    p = x2 * p + -2.954_6e-3;
    p = x2 * p + -1.609_603_3e-2;
    p *= x;
    let mut q = x2 * -1.456_607_2e-5 + -2.133_740_6e-4;
    q = x2 * q + -1.682_827e-3;
    q = x2 * q + -7.373_329_2e-3;
    q = x2 * q + -1.426_473_9e-2;
    p / q
}

/// Exact GELU, `0.5 x (1 + erf(x / sqrt 2))` (BERT's `gelu`).
#[inline(always)]
pub fn gelu_erf(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// GELU's tanh approximation (`gelu_new`), `tanh` from one exponential.
#[inline(always)]
pub fn gelu_tanh(x: f32) -> f32 {
    const C: f32 = 0.797_884_6; // sqrt(2 / pi)
    let y = C * (x + 0.044_715 * x * x * x);
    // tanh(y) = 1 - 2 / (e^{2y} + 1), saturating cleanly at both ends.
    let t = 1.0 - 2.0 / (hdp_attention::fast::fast_exp(2.0 * y) + 1.0);
    0.5 * x * (1.0 + t)
}

/// Layer norm of each `width`-wide row of `x` in place: `(x - mean) / sqrt(var + eps) * g + b`,
/// statistics in f64, each summed in 8 interleaved lanes (entry `i` into lane `i % 8`, lanes
/// then added in order), so that the loops vectorize and every tier computes the same bits
/// (the source is one, with no reassociation left to the compiler); row order fixed, so the
/// result is row-invariant too.
pub fn layer_norm(x: &mut [f32], width: usize, gamma: &[f32], beta: &[f32], eps: f64, tier: Tier) {
    x.par_chunks_mut(width * 16).for_each(|rows| match tier {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the caller's tier was checked against the CPU (`Tier::detect`/`available`).
        Tier::Avx512 => unsafe { layer_norm_avx512(rows, width, gamma, beta, eps) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Tier::Avx2 => unsafe { layer_norm_avx2(rows, width, gamma, beta, eps) },
        _ => layer_norm_rows(rows, width, gamma, beta, eps),
    });
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn layer_norm_avx512(x: &mut [f32], width: usize, gamma: &[f32], beta: &[f32], eps: f64) {
    layer_norm_rows(x, width, gamma, beta, eps)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn layer_norm_avx2(x: &mut [f32], width: usize, gamma: &[f32], beta: &[f32], eps: f64) {
    layer_norm_rows(x, width, gamma, beta, eps)
}

/// [`layer_norm`] of whole rows, the one body every tier compiles.
#[inline(always)]
fn layer_norm_rows(x: &mut [f32], width: usize, gamma: &[f32], beta: &[f32], eps: f64) {
    const L: usize = 8;
    /// Sum of `f(v)` over a row in `L` interleaved f64 lanes, added in lane order.
    #[inline(always)]
    fn lanes(row: &[f32], f: impl Fn(f64) -> f64) -> f64 {
        let mut acc = [0f64; L];
        let mut chunks = row.chunks_exact(L);
        for ch in &mut chunks {
            for j in 0..L {
                acc[j] += f(ch[j] as f64);
            }
        }
        for (j, &v) in chunks.remainder().iter().enumerate() {
            acc[j] += f(v as f64);
        }
        acc.iter().sum()
    }
    for row in x.chunks_exact_mut(width) {
        let mean = lanes(row, |v| v) / width as f64;
        let var = lanes(row, |v| (v - mean) * (v - mean)) / width as f64;
        let inv = 1.0 / (var + eps).sqrt();
        for ((v, &g), &b) in row.iter_mut().zip(gamma).zip(beta) {
            *v = ((*v as f64 - mean) * inv) as f32 * g + b;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hdp_core::rng::SplitMix64 as Rng;

    fn reference(w: &[f32], b: &[f32], x: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0f32;
                for kk in 0..k {
                    s = x[i * k + kk].mul_add(w[j * k + kk], s);
                }
                out[i * n + j] = s + b[j];
            }
        }
        out
    }

    fn random(rng: &mut Rng, len: usize) -> Vec<f32> {
        (0..len).map(|_| rng.normal() as f32).collect()
    }

    /// Layer norm: every tier gives the portable bits, and all agree with a plain sequential
    /// f64 normalization within 1e-6 (relative to the output's scale), on widths around the
    /// 8 lanes and row counts around the 16-row parallel chunks.
    #[test]
    fn layer_norm_tiers_agree_with_a_sequential_reference() {
        let mut rng = Rng::new(3);
        for &(rows, width) in &[(1usize, 1usize), (3, 7), (17, 8), (5, 13), (33, 384)] {
            let x = random(&mut rng, rows * width);
            let (g, b) = (random(&mut rng, width), random(&mut rng, width));
            let mut want = x.clone();
            for row in want.chunks_exact_mut(width) {
                let mean = row.iter().map(|&v| v as f64).sum::<f64>() / width as f64;
                let var =
                    row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / width as f64;
                let inv = 1.0 / (var + 1e-12).sqrt();
                for ((v, &gg), &bb) in row.iter_mut().zip(&g).zip(&b) {
                    *v = ((*v as f64 - mean) * inv) as f32 * gg + bb;
                }
            }
            let mut portable = x.clone();
            layer_norm(&mut portable, width, &g, &b, 1e-12, Tier::Portable);
            for tier in Tier::ALL.into_iter().filter(|t| t.available()) {
                let mut got = x.clone();
                layer_norm(&mut got, width, &g, &b, 1e-12, tier);
                assert_eq!(got, portable, "{tier:?} rows {rows} width {width}");
            }
            for (i, (p, w)) in portable.iter().zip(&want).enumerate() {
                let scale = g[i % width].abs() + b[i % width].abs() + 1.0;
                assert!((p - w).abs() <= 1e-6 * scale * 4.0, "entry {i}: {p} vs {w}");
            }
        }
    }

    /// Every available tier gives exactly the bits of the sequential fused-multiply-add
    /// definition, for awkward shapes (rows and columns not multiples of the tile).
    #[test]
    fn every_tier_is_bit_identical_to_the_definition() {
        let mut rng = Rng::new(7);
        let mut ran = Vec::new();
        for &(m, n, k) in &[
            (1, 1, 1),
            (3, 33, 17),
            (9, 64, 40),
            (70, 45, 13),
            (130, 96, 31),
            (107, 50, 6),
            // Several AVX-512 panel groups (`GROUP_BYTES`): 3 panels a group, and 1.
            (300, 200, 1700),
            (50, 130, 5200),
        ] {
            let w = random(&mut rng, n * k);
            let b = random(&mut rng, n);
            let x = random(&mut rng, m * k);
            let want = reference(&w, &b, &x, m, n, k);
            let lin = Linear::new(&w, &b, n, k);
            for tier in Tier::ALL.into_iter().filter(|t| t.available()) {
                let mut out = vec![f32::NAN; m * n];
                lin.forward(&x, m, &mut out, Epilogue::None, tier);
                assert!(
                    out.iter()
                        .zip(&want)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "tier {} differs at m={m} n={n} k={k}",
                    tier.name()
                );
                if !ran.contains(&tier.name()) {
                    ran.push(tier.name());
                }
            }
        }
        let missing: Vec<&str> = Tier::ALL
            .iter()
            .filter(|t| !t.available())
            .map(|t| t.name())
            .collect();
        eprintln!(
            "linear tiers tested: {}; not on this CPU (untested here): {}",
            ran.join(", "),
            if missing.is_empty() {
                "none".to_string()
            } else {
                missing.join(", ")
            }
        );
    }

    /// Column blocks of `w`, each `[m][w]`, as a sink: runs end at a block's edge.
    struct Blocks {
        ptr: *mut f32,
        m: usize,
        w: usize,
    }
    // SAFETY: (r, c) maps one to one into the m x n buffer the test lends for the call.
    unsafe impl Sink for Blocks {
        fn at(&self, r: usize, c: usize) -> (*mut f32, usize) {
            let (b, cc) = (c / self.w, c % self.w);
            // SAFETY: inside the buffer.
            let p = unsafe { self.ptr.add(b * self.m * self.w + r * self.w + cc) };
            (p, self.w - cc)
        }
    }
    unsafe impl Sync for Blocks {}

    #[test]
    fn sinks_get_the_same_elements() {
        let mut rng = Rng::new(11);
        for &(m, n, k, w) in &[
            (5, 70, 9, 7),
            (150, 64, 20, 32),
            (200, 45, 13, 16),
            (33, 96, 8, 64),
        ] {
            let wt = random(&mut rng, n * k);
            let b = random(&mut rng, n);
            let x = random(&mut rng, m * k);
            let res = random(&mut rng, m * n);
            let lin = Linear::new(&wt, &b, n, k);
            for tier in Tier::ALL.into_iter().filter(|t| t.available()) {
                for epi in [Epilogue::None, Epilogue::Gelu, Epilogue::Residual(&res)] {
                    let mut want = vec![f32::NAN; m * n];
                    lin.forward(&x, m, &mut want, epi, tier);
                    let mut blocks = vec![f32::NAN; n.div_ceil(w) * m * w];
                    let sink = Blocks {
                        ptr: blocks.as_mut_ptr(),
                        m,
                        w,
                    };
                    lin.forward_to(&x, m, &sink, epi, tier);
                    for r in 0..m {
                        for c in 0..n {
                            let got = blocks[(c / w) * m * w + r * w + c % w];
                            assert_eq!(
                                got.to_bits(),
                                want[r * n + c].to_bits(),
                                "tier {} m={m} n={n} k={k} w={w} ({r}, {c})",
                                tier.name()
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn panels_start_on_a_cache_line_and_clones_compute_the_same() {
        let mut rng = Rng::new(5);
        let (m, n, k) = (7, 45, 19);
        let (w, b, x) = (
            random(&mut rng, n * k),
            random(&mut rng, n),
            random(&mut rng, m * k),
        );
        let layer = Linear::new(&w, &b, n, k);
        let copy = layer.clone();
        for l in [&layer, &copy] {
            assert_eq!(l.panels().as_ptr() as usize % 64, 0);
            assert_eq!(l.panels().len(), n.div_ceil(NR) * k * NR);
        }
        for tier in Tier::ALL.into_iter().filter(|t| t.available()) {
            let (mut y0, mut y1) = (vec![0.0; m * n], vec![0.0; m * n]);
            layer.forward(&x, m, &mut y0, Epilogue::None, tier);
            copy.forward(&x, m, &mut y1, Epilogue::None, tier);
            assert_eq!(y0, y1, "tier {}", tier.name());
            assert_eq!(y0, reference(&w, &b, &x, m, n, k), "tier {}", tier.name());
        }
    }

    #[test]
    fn the_fma_peak_is_measured_on_simd_tiers_only() {
        assert_eq!(fma_peak_gflops(Tier::Portable, 1.0), None);
        for tier in [Tier::Avx2, Tier::Avx512] {
            let peak = fma_peak_gflops(tier, 1.0);
            assert_eq!(peak.is_some(), tier.available(), "tier {}", tier.name());
            assert!(peak.is_none_or(|p| p.is_finite() && p > 0.0));
        }
    }

    /// A row's output does not depend on the other rows of the batch nor on the thread count.
    #[test]
    fn rows_are_independent_of_the_batch() {
        let mut rng = Rng::new(3);
        let (n, k) = (100, 48);
        let w = random(&mut rng, n * k);
        let b = random(&mut rng, n);
        let lin = Linear::new(&w, &b, n, k);
        let x = random(&mut rng, 300 * k);
        let tier = Tier::detect();
        let mut all = vec![0.0; 300 * n];
        lin.forward(&x, 300, &mut all, Epilogue::Gelu, tier);
        for (start, m) in [(0, 1), (5, 7), (131, 2), (290, 10)] {
            let mut part = vec![0.0; m * n];
            lin.forward(
                &x[start * k..(start + m) * k],
                m,
                &mut part,
                Epilogue::Gelu,
                tier,
            );
            assert_eq!(part, all[start * n..(start + m) * n]);
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let mut one = vec![0.0; 300 * n];
        pool.install(|| lin.forward(&x, 300, &mut one, Epilogue::Gelu, tier));
        assert_eq!(one, all);
    }

    #[test]
    fn epilogues_follow_their_definitions() {
        // Whole panels (AVX-512 applies the epilogue in registers there) and a partial one;
        // inputs scaled so that GELU's argument crosses its clamp at +-4 sqrt(2).
        let mut rng = Rng::new(5);
        let (m, n, k) = (13, 72, 9);
        let w = random(&mut rng, n * k);
        let b = random(&mut rng, n);
        let x: Vec<f32> = random(&mut rng, m * k).iter().map(|v| 4.0 * v).collect();
        let res = random(&mut rng, m * n);
        let lin = Linear::new(&w, &b, n, k);
        let base = reference(&w, &b, &x, m, n, k);
        assert!(base.iter().any(|&y| y > 6.0) && base.iter().any(|&y| y < -6.0));
        type Definition = fn(f32, f32) -> f32;
        for tier in Tier::ALL.into_iter().filter(|t| t.available()) {
            let run = |e| {
                let mut o = vec![0.0; m * n];
                lin.forward(&x, m, &mut o, e, tier);
                o
            };
            let cases: [(Epilogue, Definition); 5] = [
                (Epilogue::None, |y, _| y),
                (Epilogue::Gelu, |y, _| gelu_erf(y)),
                (Epilogue::GeluTanh, |y, _| gelu_tanh(y)),
                (Epilogue::Relu, |y, _| y.max(0.0)),
                (Epilogue::Residual(&res), |y, r| y + r),
            ];
            for (e, f) in cases {
                let got = run(e);
                for i in 0..m * n {
                    assert_eq!(
                        got[i].to_bits(),
                        f(base[i], res[i]).to_bits(),
                        "{e:?} on {} at {i}",
                        tier.name()
                    );
                }
            }
        }
    }

    /// Named tolerance `ERF_ABS` against an f64 error function: Taylor series below 3, the
    /// continued fraction of erfc above (each accurate to far better than 1e-12 there).
    #[test]
    fn erf_and_gelu_are_accurate() {
        const ERF_ABS: f64 = 1e-6;
        fn erf64(x: f64) -> f64 {
            let a = x.abs();
            if a < 3.0 {
                let (mut sum, mut term) = (0.0, x);
                for n in 0..200 {
                    sum += term / (2 * n + 1) as f64;
                    term *= -x * x / (n + 1) as f64;
                }
                sum * 2.0 / std::f64::consts::PI.sqrt()
            } else {
                let mut k = a;
                for n in (1..200).rev() {
                    k = a + (n as f64 / 2.0) / k;
                }
                let erfc = (-a * a).exp() / (std::f64::consts::PI.sqrt() * k);
                x.signum() * (1.0 - erfc)
            }
        }
        let mut worst = 0.0f64;
        for i in -6000..=6000 {
            let x = i as f64 / 1000.0;
            let want = erf64(x);
            worst = worst.max((erf(x as f32) as f64 - want).abs());
        }
        assert!(worst < ERF_ABS, "erf max abs error {worst:e}");
        // GELU's tanh form against f64 tanh.
        for i in -800..=800 {
            let x = i as f64 / 100.0;
            let want = 0.5
                * x
                * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh());
            assert!(
                (gelu_tanh(x as f32) as f64 - want).abs() < 1e-5 * (1.0 + x.abs()),
                "x={x}"
            );
        }
    }
}
