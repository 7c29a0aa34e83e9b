//! How the rules key their state by address: 64-bit digests of workloads, remotes and their
//! networks, and the few workloads seen per remote.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::bloom::address_hash;

/// State tables key on 64-bit digests of addresses instead of the addresses (8 bytes instead
/// of 17 per address): a third of the memory, faster hashing, and with 2^64 values a collision
/// among even millions of keys is vanishingly unlikely. Findings take their addresses from the
/// flow at hand, so nothing needs the address back.
pub(crate) fn key_of(ip: IpAddr) -> u64 {
    address_hash(ip, 0x0123_4567_89ab_cdef)
}

/// The network an address is judged with for popularity and novelty: its /24 (IPv4) or /48
/// (IPv6). Storage services and CDNs answer from whichever address of such a network they
/// pick, so a fresh address there is not a fresh destination.
pub(crate) fn network_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            IpAddr::from([a, b, c, 0])
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::from([s[0], s[1], s[2], 0, 0, 0, 0, 0])
        }
    }
}

/// A remote's network as CIDR text for messages: 203.0.113.0/24, 2001:db8:1::/48.
pub(crate) fn network_cidr(ip: IpAddr) -> String {
    match network_of(ip) {
        n @ IpAddr::V4(_) => format!("{n}/24"),
        n @ IpAddr::V6(_) => format!("{n}/48"),
    }
}

/// The key of a remote's network (see [`network_of`]).
pub(crate) fn network_key(ip: IpAddr) -> u64 {
    address_hash(network_of(ip), 0x6e65_7477_6f72_6b31)
}

/// A remote's network as an address no flow carries, for the seen-filter, which holds
/// addresses: inside 100::/64, the discard-only prefix (RFC 6666).
pub(crate) fn network_marker(ip: IpAddr) -> IpAddr {
    match network_of(ip) {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            IpAddr::from([
                0x100,
                0,
                0,
                0,
                4,
                u16::from_be_bytes([a, b]),
                u16::from(c),
                0,
            ])
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::from([0x100, 0, 0, 0, 6, s[0], s[1], s[2]])
        }
    }
}

/// The key of a workload and a remote's network.
pub(crate) fn network_pair_key(workload: IpAddr, remote: IpAddr) -> u64 {
    key_of(workload) ^ network_key(remote).rotate_left(29)
}

/// The key of an ordered pair of addresses.
pub(crate) fn pair_key(a: IpAddr, b: IpAddr) -> u64 {
    key_of(a) ^ address_hash(b, 0x5bd1_e995_0000_0001).rotate_left(23)
}

/// Workloads seen talking to one remote, up to four: the rules only need to know whether a
/// remote is one workload's or shared, so the list stops growing there.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Audience {
    members: [u64; 4],
    len: u8,
}

impl Audience {
    /// Adds a workload; returns how many distinct workloads are known (at most 4).
    pub fn add(&mut self, workload: u64) -> usize {
        let n = usize::from(self.len);
        if !self.members[..n].contains(&workload) && n < self.members.len() {
            self.members[n] = workload;
            self.len += 1;
        }
        usize::from(self.len)
    }

    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}
