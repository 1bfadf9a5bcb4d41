//! Multiversioning: one generic body, compiled for AVX-512 (F/BW/VL), for AVX2+FMA (with
//! POPCNT) and as
//! portable code.

/// Declares `$name(isa, args..)`, which runs `$body(args..)` compiled for AVX-512 F/BW/VL on
/// the AVX-512 tier (16-lane loops), for AVX2+FMA on the AVX2 and AVX-VNNI tiers, and the
/// portable instantiation otherwise. The body is the same source in every case, so the
/// compiled variants differ only in vector width, never in meaning.
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident => $body:ident ($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)?) => {
        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name(isa: Isa, $($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma,popcnt")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                $body($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,popcnt")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                $body($($arg),*)
            }
            match isa {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: the AVX-512 tier is only produced after detecting avx512f/bw/vl
                // (with avx2 and fma).
                Isa::Avx512Vnni => unsafe { avx512($($arg),*) },
                #[cfg(target_arch = "x86_64")]
                // SAFETY: tiers above portable are only produced after detecting avx2, fma and popcnt.
                Isa::Avx2 | Isa::AvxVnni => unsafe { avx2($($arg),*) },
                _ => $body($($arg),*),
            }
        }
    };
}
