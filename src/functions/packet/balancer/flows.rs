//! The flow table: each tracked flow once, in a slab, found by its
//! client → VIP key and by its backend → client key.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use smoltcp::time::{Duration, Instant};

use super::nat::Nat;
use crate::wire::{FlowKey, proto};

/// A tracked flow: both directions' keys and its backend.
#[derive(Debug, Clone, Copy)]
pub(super) struct Flow {
    /// Client → VIP.
    pub fwd: FlowKey,
    /// Backend → client.
    pub rev: FlowKey,
    /// VIP → backend, and backend → VIP for the replies.
    pub dnat: Nat,
    pub snat: Nat,
    pub service: u16,
    pub backend: u16,
    pub expires: Instant,
    pub closing: bool,
    live: bool,
}

impl Flow {
    pub fn new(
        fwd: FlowKey,
        rev: FlowKey,
        dnat: Nat,
        snat: Nat,
        service: u16,
        backend: u16,
    ) -> Flow {
        Flow {
            fwd,
            rev,
            dnat,
            snat,
            service,
            backend,
            expires: Instant::ZERO,
            closing: false,
            live: true,
        }
    }

    /// A packet of the flow passed at `now`: it lives on for its idle
    /// timeout (a short one once a FIN or RST was seen).
    pub fn touch(&mut self, now: Instant, fin_rst: bool, timeouts: &Timeouts) {
        self.closing |= fin_rst;
        self.expires = now + timeouts.of(self.fwd.proto, self.closing);
    }
}

/// Idle timeouts of flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Timeouts {
    pub tcp: Duration,
    pub tcp_closing: Duration,
    pub udp: Duration,
}

impl Timeouts {
    fn of(&self, proto: u8, closing: bool) -> Duration {
        match (proto, closing) {
            (proto::TCP, true) => self.tcp_closing,
            (proto::TCP, false) => self.tcp,
            _ => self.udp,
        }
    }
}

/// A [`FlowKey`] hashed in as few wide writes as possible: an IPv4 key is
/// one 128-bit word (foldhash mixes it with one multiply), an IPv6 key
/// two and a tail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key(FlowKey);

impl Hash for Key {
    fn hash<H: Hasher>(&self, h: &mut H) {
        let k = &self.0;
        let [first, tail, ..] = k.words();
        if k.v6 {
            h.write_u128(k.src);
            h.write_u128(k.dst);
            h.write_u64(k.words()[4]);
        } else {
            h.write_u128(u128::from(first) | u128::from(tail) << 64);
        }
    }
}

/// Randomly seeded per table: a peer cannot aim crafted tuples at one
/// bucket without seeing the table's behaviour.
type FlowMap = HashMap<Key, u32, foldhash::fast::RandomState>;

/// The flows, a free list of their slots, and both indexes.
#[derive(Debug, Default)]
pub(super) struct FlowTable {
    flows: Vec<Flow>,
    free: Vec<u32>,
    fwd: FlowMap,
    rev: FlowMap,
}

impl FlowTable {
    /// Flows in the table (expired ones not yet swept included).
    pub fn len(&self) -> usize {
        self.fwd.len()
    }

    pub fn get(&self, slot: u32) -> &Flow {
        &self.flows[slot as usize]
    }

    pub fn get_mut(&mut self, slot: u32) -> &mut Flow {
        &mut self.flows[slot as usize]
    }

    /// The flow a client → VIP packet belongs to.
    pub fn by_fwd(&self, key: &FlowKey) -> Option<u32> {
        self.fwd.get(&Key(*key)).copied()
    }

    /// The flow a backend → client packet belongs to.
    pub fn by_rev(&self, key: &FlowKey) -> Option<u32> {
        self.rev.get(&Key(*key)).copied()
    }

    /// Enters `flow`; returns its slot.
    pub fn insert(&mut self, flow: Flow) -> u32 {
        let slot = match self.free.pop() {
            Some(i) => {
                self.flows[i as usize] = flow;
                i
            }
            None => {
                self.flows.push(flow);
                (self.flows.len() - 1) as u32
            }
        };
        self.fwd.insert(Key(flow.fwd), slot);
        self.rev.insert(Key(flow.rev), slot);
        slot
    }

    pub fn remove(&mut self, slot: u32) {
        let Some(f) = self.flows.get_mut(slot as usize) else {
            return;
        };
        if !f.live {
            return;
        }
        f.live = false;
        let (fwd, rev) = (Key(f.fwd), Key(f.rev));
        self.fwd.remove(&fwd);
        if self.rev.get(&rev) == Some(&slot) {
            self.rev.remove(&rev);
        }
        self.free.push(slot);
    }

    /// Removes the flows `pred` picks; returns how many.
    pub fn remove_if(&mut self, mut pred: impl FnMut(&Flow) -> bool) -> usize {
        let before = self.len();
        self.retain(|f| !pred(f));
        before - self.len()
    }

    /// Calls `f` on every live flow; a flow for which it returns `false`
    /// is removed.
    pub fn retain(&mut self, mut f: impl FnMut(&mut Flow) -> bool) {
        for i in 0..self.flows.len() {
            if self.flows[i].live && !f(&mut self.flows[i]) {
                self.remove(i as u32);
            }
        }
    }
}
