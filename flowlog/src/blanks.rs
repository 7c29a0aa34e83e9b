//! Finding field boundaries in a line sixty-four bytes at a time.
//!
//! A record is split on runs of blanks. Instead of testing byte after byte, each 64-byte
//! block of the line is turned into a bit mask of its blanks once (SSE2 on x86-64, a plain
//! loop elsewhere), and every token's start and end come from the bits where blankness changes.
//! The same pass notes whether the block holds any byte above 0x7F, so text fields of an
//! ASCII line need no UTF-8 validation of their own.

/// Field separators. Line endings count too, so a stray `\r` or `\n` inside a line (found by
/// fuzzing) separates fields instead of ending up inside one.
#[inline]
pub(crate) fn is_blank(b: u8) -> bool {
    b == b' ' || b == b'\t' || b == b'\r' || b == b'\n'
}

const BLOCK: usize = 64;

/// Finds where the tokens of `line` start and end: `bounds[2k]` is where token `k` starts and
/// `bounds[2k + 1]` where it ends. Returns how many entries were written (twice the number of
/// tokens, unless `bounds` filled up first) and whether every byte of the blocks examined is
/// ASCII; those blocks cover every token written.
#[inline]
pub(crate) fn token_bounds(line: &[u8], bounds: &mut [usize]) -> (usize, bool) {
    let len = line.len();
    let mut written = 0;
    let mut high = 0u64;
    // Whether the byte before the block is a blank; the line's start counts as one.
    let mut blank_before = 1u64;
    let mut base = 0;
    while base < len {
        let block = &line[base..len.min(base + BLOCK)];
        let (blank, block_high) = if block.len() == BLOCK {
            masks(block)
        } else {
            // The last, partial block, padded with blanks: its last token ends at the padding.
            let mut padded = [b' '; BLOCK];
            padded[..block.len()].copy_from_slice(block);
            masks(&padded)
        };
        high |= block_high;
        // A bit for every byte whose blankness differs from the byte before it: each is a
        // token's start or its end, alternately.
        let mut edges = blank ^ ((blank << 1) | blank_before);
        blank_before = blank >> 63;
        while edges != 0 {
            if written == bounds.len() {
                return (written, high == 0);
            }
            bounds[written] = base + edges.trailing_zeros() as usize;
            written += 1;
            edges &= edges - 1;
        }
        base += BLOCK;
    }
    // A token running to the end of a line whose length is a multiple of 64.
    if written % 2 == 1 && written < bounds.len() {
        bounds[written] = len;
        written += 1;
    }
    (written, high == 0)
}

#[cfg(target_arch = "x86_64")]
use masks_sse2 as masks;

#[cfg(not(target_arch = "x86_64"))]
use masks_portable as masks;

/// The blank mask and the above-0x7F mask of one full block.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn masks_sse2(block: &[u8]) -> (u64, u64) {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
    };
    assert_eq!(block.len(), BLOCK);
    let mut blank = 0u64;
    let mut high = 0u64;
    // SAFETY: SSE2 is part of the x86-64 baseline, and every load reads 16 bytes inside
    // `block`, whose length was just checked to be 64.
    unsafe {
        let space = _mm_set1_epi8(b' ' as i8);
        let tab = _mm_set1_epi8(b'\t' as i8);
        let cr = _mm_set1_epi8(b'\r' as i8);
        let lf = _mm_set1_epi8(b'\n' as i8);
        for k in 0..BLOCK / 16 {
            let v = _mm_loadu_si128(block.as_ptr().add(k * 16) as *const __m128i);
            let b = _mm_or_si128(
                _mm_or_si128(_mm_cmpeq_epi8(v, space), _mm_cmpeq_epi8(v, tab)),
                _mm_or_si128(_mm_cmpeq_epi8(v, cr), _mm_cmpeq_epi8(v, lf)),
            );
            blank |= (_mm_movemask_epi8(b) as u16 as u64) << (k * 16);
            high |= (_mm_movemask_epi8(v) as u16 as u64) << (k * 16);
        }
    }
    (blank, high)
}

/// The same masks a byte at a time, for other processors (and to check the SSE2 version).
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
#[inline(always)]
fn masks_portable(block: &[u8]) -> (u64, u64) {
    let mut blank = 0u64;
    let mut high = 0u64;
    for (k, &b) in block.iter().enumerate() {
        blank |= (is_blank(b) as u64) << k;
        high |= ((b >> 7) as u64) << k;
    }
    (blank, high)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens_bytewise(line: &[u8]) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < line.len() {
            if is_blank(line[i]) {
                i += 1;
                continue;
            }
            let start = i;
            while i < line.len() && !is_blank(line[i]) {
                i += 1;
            }
            out.push((start, i));
        }
        out
    }

    fn tokens_blockwise(line: &[u8]) -> (Vec<(usize, usize)>, bool) {
        let mut bounds = vec![0; 2 * line.len() + 2];
        let (written, ascii) = token_bounds(line, &mut bounds);
        assert_eq!(written % 2, 0);
        let tokens = bounds[..written].chunks(2).map(|p| (p[0], p[1])).collect();
        (tokens, ascii)
    }

    #[test]
    fn tokens_across_block_boundaries() {
        // A token that straddles the first block boundary, and one that fills a whole block.
        let mut line = vec![b'a'; 60];
        line.extend_from_slice(b" bcdefgh ");
        line.extend(std::iter::repeat_n(b'z', 64));
        line.extend_from_slice(b"\t\t x");
        let (tokens, ascii) = tokens_blockwise(&line);
        assert_eq!(tokens, vec![(0, 60), (61, 68), (69, 133), (136, 137)]);
        assert!(ascii);
    }

    #[test]
    fn long_run_of_blanks_is_skipped() {
        let mut line = b"a".to_vec();
        line.extend(std::iter::repeat_n(b' ', 200));
        line.push(b'b');
        assert_eq!(tokens_blockwise(&line).0, vec![(0, 1), (201, 202)]);
    }

    #[test]
    fn high_byte_is_noticed() {
        let mut line = vec![b'a'; 70];
        line[66] = 0xC3;
        assert!(!tokens_blockwise(&line).1);
        assert!(tokens_blockwise(&line[..66]).1);
    }

    proptest::proptest! {
        /// The block scan finds exactly the tokens a byte-by-byte scan finds, and notices a
        /// byte above 0x7F exactly when there is one, whatever bytes the line holds.
        #[test]
        fn matches_a_bytewise_scan(
            line in proptest::collection::vec(proptest::sample::select(vec![
                b'a', b'7', b'-', b' ', b'\t', b'\r', b'\n', 0x00, 0x01, 0x1f, 0x20, 0x21, 0x7f,
                0x80, 0xa0, 0xff,
            ]), 0..300),
        ) {
            let (tokens, ascii) = tokens_blockwise(&line);
            proptest::prop_assert_eq!(tokens, tokens_bytewise(&line));
            proptest::prop_assert_eq!(ascii, line.is_ascii());
        }

        #[cfg(target_arch = "x86_64")]
        #[test]
        fn sse2_masks_match_the_portable_ones(
            block in proptest::collection::vec(proptest::prelude::any::<u8>(), BLOCK),
            blanks in proptest::collection::vec((0..BLOCK, 0..4usize), 0..20),
        ) {
            let mut block = block;
            for (at, which) in blanks {
                block[at] = [b' ', b'\t', b'\r', b'\n'][which];
            }
            proptest::prop_assert_eq!(masks_sse2(&block), masks_portable(&block));
        }
    }
}
