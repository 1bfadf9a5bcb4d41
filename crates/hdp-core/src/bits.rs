//! Bit counting over word sets, with the `popcnt` instruction where the CPU has it: the
//! workspace is compiled for baseline x86-64, where `u64::count_ones` is a dozen instructions
//! of bit tricks, and the HDP kernel and its trace count the kept entries of every row
//! (hundreds of thousands of words per layer).

/// Set bits in `words` (the same number on every path).
#[inline]
pub fn count_ones(words: &[u64]) -> usize {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("popcnt") {
        // SAFETY: the CPU has popcnt.
        return unsafe { count_ones_popcnt(words) };
    }
    count_ones_plain(words)
}

#[inline(always)]
fn count_ones_plain(words: &[u64]) -> usize {
    words.iter().map(|w| w.count_ones() as usize).sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "popcnt")]
fn count_ones_popcnt(words: &[u64]) -> usize {
    count_ones_plain(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_set_bits() {
        let words = [0u64, 1, u64::MAX, 0x8000_0000_0000_0001, 0xf0f0];
        assert_eq!(count_ones(&words), 1 + 64 + 2 + 8);
        assert_eq!(count_ones(&words), count_ones_plain(&words));
        assert_eq!(count_ones(&[]), 0);
    }
}
