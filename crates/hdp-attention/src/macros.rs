//! Multiversioning: one generic body, compiled for AVX2+FMA and as portable code.

/// Declares `$name(isa, args..)`, which runs `$body(args..)` compiled for AVX2+FMA when `isa`
/// says the CPU has them, and the portable instantiation otherwise.
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident => $body:ident ($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)?) => {
        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name(isa: Isa, $($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                $body($($arg),*)
            }
            match isa {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: tiers above portable are only produced after detecting avx2 and fma.
                Isa::Avx2 | Isa::AvxVnni | Isa::Avx512Vnni => unsafe { avx2($($arg),*) },
                _ => $body($($arg),*),
            }
        }
    };
}
