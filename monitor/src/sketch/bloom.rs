//! The rare-destination rule's seen-filter: every network the fleet has contacted, in about
//! 1.2 bytes each, persisted with the rules' state.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// A stable 64-bit hash of an address. The seen-filter is persisted, so its hash must not
/// change with the toolchain or a dependency (std's and rustc-hash's are free to).
pub(crate) fn address_hash(ip: IpAddr, seed: u64) -> u64 {
    let v = match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a) ^ (1u128 << 127),
    };
    let mut x = (v as u64) ^ ((v >> 64) as u64).rotate_left(29) ^ seed;
    // splitmix64's finaliser.
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A Bloom filter sized for `capacity` members at about 1 % false positives.
#[derive(Serialize, Deserialize)]
pub(crate) struct Bloom {
    bits: Vec<u64>,
    hashes: u32,
    members: usize,
}

impl Bloom {
    pub(crate) fn new(capacity: usize) -> Self {
        // m = -n ln p / (ln 2)^2 with p = 0.01; k = (m / n) ln 2.
        let m = ((capacity.max(1) as f64) * 9.585).ceil() as usize;
        Bloom {
            bits: vec![0; m.div_ceil(64)],
            hashes: 7,
            members: 0,
        }
    }

    fn positions(&self, ip: IpAddr) -> impl Iterator<Item = usize> {
        let m = (self.bits.len() * 64) as u64;
        let h1 = address_hash(ip, 0);
        let h2 = address_hash(ip, 0x5151_5151) | 1;
        (0..u64::from(self.hashes)).map(move |i| (h1.wrapping_add(i.wrapping_mul(h2)) % m) as usize)
    }

    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        self.positions(ip)
            .all(|p| self.bits[p / 64] & (1 << (p % 64)) != 0)
    }

    pub(crate) fn insert(&mut self, ip: IpAddr) {
        let positions: Vec<usize> = self.positions(ip).collect();
        for p in positions {
            self.bits[p / 64] |= 1 << (p % 64);
        }
        self.members += 1;
    }

    /// Insertions so far; the rare-destination rule starts a new generation when they reach
    /// its filter capacity.
    pub(crate) fn members(&self) -> usize {
        self.members
    }

    /// The size of the bit array in 64-bit words: a filter saved under another capacity has
    /// another, and cannot be reused.
    pub(crate) fn words(&self) -> usize {
        self.bits.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bloom_has_no_false_negatives_and_about_one_percent_false_positives() {
        let mut b = Bloom::new(10_000);
        for i in 0..10_000u32 {
            b.insert(IpAddr::V4((0x0a00_0000 + i).into()));
        }
        assert!((0..10_000u32).all(|i| b.contains(IpAddr::V4((0x0a00_0000 + i).into()))));
        let fp = (0..100_000u32)
            .filter(|i| b.contains(IpAddr::V4((0xc000_0000 + i).into())))
            .count();
        assert!(fp < 2_000, "{fp} false positives in 100,000");
    }
}
