//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and
//! Reliable Software Network Load Balancer", NSDI 2016, §3.4).
//!
//! A lookup table of M entries (M prime) is filled by the backends taking
//! turns, each claiming the next free entry of its own permutation
//! `offset + j·skip mod M`; every backend gets ⌊M/N⌋ or ⌈M/N⌉ entries and a
//! change of the backend set moves few entries between the others. A new
//! flow's hash indexes the table.
//!
//! The hashes are foldhash with fixed seeds ([`SEED_PERMUTATION`],
//! [`SEED_FLOW`]): every balancer, in every process and after every
//! restart, builds the same table from the same backends and sends a flow
//! to the same one. (CRC-32, used before, is linear: two seeds over the
//! same bytes gave offsets and skips that differ by a constant.)

use std::hash::{BuildHasher, Hash};

use foldhash::fast::FixedState;

/// An empty lookup-table entry.
pub(super) const NONE: u16 = u16::MAX;

/// Seed of the backends' permutations: one 64-bit hash of the backend's
/// endpoint gives the offset (low half) and the skip (high half); both
/// halves of foldhash's folded multiply are fully mixed, so the two are
/// independent.
pub const SEED_PERMUTATION: u64 = 0x6d61_676c_6576_3132; // "maglev12"
/// Seed of the flow hash that indexes the table.
pub const SEED_FLOW: u64 = 0x666c_6f77_6b65_7973; // "flowkeys"

/// A backend's permutation of a table of `m` entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Permutation {
    pub offset: u32,
    /// 1..m: a step that visits every entry (`m` is prime).
    pub skip: u32,
}

impl Permutation {
    /// The permutation of the backend identified by `id` in a table of `m`
    /// entries (`m` ≥ 2).
    pub fn of(id: &impl Hash, m: u32) -> Permutation {
        let h = FixedState::with_seed(SEED_PERMUTATION).hash_one(id);
        Permutation {
            offset: (h as u32) % m,
            skip: ((h >> 32) as u32) % (m - 1) + 1,
        }
    }
}

/// The flow hash of `key`, to index a table with.
pub(super) fn flow_hash(key: &impl Hash) -> u64 {
    FixedState::with_seed(SEED_FLOW).hash_one(key)
}

/// Fills a lookup table of `m` entries (`m` prime) from the permutations
/// of the backends `perms` (`(backend index, permutation)`, in a fixed
/// order). Without backends every entry is [`NONE`].
pub(super) fn table(m: u32, perms: &[(u16, Permutation)]) -> Vec<u16> {
    let mut table = vec![NONE; m as usize];
    if perms.is_empty() {
        return table;
    }
    let step = |c: u32, skip: u32| ((u64::from(c) + u64::from(skip)) % u64::from(m)) as u32;
    // Where each backend's permutation continues.
    let mut pos: Vec<u32> = perms.iter().map(|p| p.1.offset).collect();
    let mut filled = 0u32;
    loop {
        for (i, &(index, p)) in perms.iter().enumerate() {
            let mut c = pos[i];
            while table[c as usize] != NONE {
                c = step(c, p.skip);
            }
            table[c as usize] = index;
            pos[i] = step(c, p.skip);
            filled += 1;
            if filled == m {
                return table;
            }
        }
    }
}

pub(super) fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2u32;
    while d.saturating_mul(d) <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}
