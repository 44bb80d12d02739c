//! The cache's store: items by key in one hash table, a least-recently-used
//! list over them, memory accounting against a limit, expiry and CAS
//! uniques. No I/O and no clock: every call that needs the time takes `now`
//! (device time), and absolute expiry times are converted with the Unix
//! time of device time zero ([`Store::set_unix_base`]).
//!
//! An item costs its key and value plus [`SLOT_OVERHEAD`] bytes (its slot,
//! its index entry and the allocation); storing one evicts from the LRU end
//! until the total fits the memory limit. The `bytes` statistic and the item
//! size limit use memcached's own item size ([`item_total`]), so that a
//! value memcached refuses as too large is refused here too.
//!
//! ```
//! use shmnet::functions::cache::store::{Expiry, Mode, Outcome, Store};
//! use smoltcp::time::Instant;
//!
//! let mut store = Store::new(1 << 20, 1 << 20);
//! let now = Instant::ZERO;
//! let (outcome, _cas) = store.store(Mode::Set, b"k", 0, Expiry::Never, b"v", 0, false, now);
//! assert_eq!(outcome, Outcome::Stored);
//! let id = store.lookup(b"k", now).unwrap();
//! assert_eq!(store.item(id).value(), b"v");
//! ```

use std::hash::BuildHasher;
use std::sync::Arc;

use hashbrown::HashTable;
use smoltcp::time::Instant;

mod commands;

pub use super::proto::{KEY_MAX, is_space, parse_counter};
use crate::functions::common::counters;
pub use commands::{CasCheck, StoreRequest};

/// Bytes an item costs here beyond its key and value: its slot (links,
/// times, flags), its index entry and its allocation's header.
pub const SLOT_OVERHEAD: usize = 128;

/// memcached's relative expiry times end here (30 days); larger ones are
/// absolute Unix times.
pub const REALTIME_MAXDELTA: i64 = 60 * 60 * 24 * 30;

/// No slot: the ends of the LRU list.
const NIL: u32 = u32::MAX;

/// Slots the background sweep looks at per round, at most.
const SWEEP_SLOTS: usize = 1024;

/// Device milliseconds between two sweep rounds.
const SWEEP_EVERY_MS: i64 = 100;

/// memcached's size of an item (`ITEM_ntotal`: a 48-byte header, the key
/// and its NUL, the value and its CRLF, the 8-byte CAS, and 4 bytes of
/// client flags when they are not zero): what the `bytes` statistic adds
/// up and what must not exceed the item size limit.
pub fn item_total(key_len: usize, flags: u32, value_len: usize) -> usize {
    48 + key_len + 1 + value_len + 2 + 8 + if flags != 0 { 4 } else { 0 }
}

/// When an item stops being served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// Never (exptime 0).
    Never,
    /// From this device time on, in milliseconds (may be in the past).
    At(i64),
}

impl Expiry {
    fn passed(self, now_ms: i64) -> bool {
        matches!(self, Expiry::At(t) if now_ms >= t)
    }
}

/// How a store request treats an existing item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Store whatever is there.
    Set,
    /// Store only if the key is absent.
    Add,
    /// Store only if the key is present.
    Replace,
    /// Add the data after the present value.
    Append,
    /// Add the data before the present value.
    Prepend,
    /// Store only if the present item's CAS unique is the one given.
    Cas,
}

/// The result of a store request, as memcached names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// `STORED` / `HD`.
    Stored,
    /// `EXISTS` / `EX`: the CAS unique did not match.
    Exists,
    /// `NOT_FOUND` / `NF`: a CAS on an absent key.
    NotFound,
    /// `NOT_STORED` / `NS`: the mode's condition did not hold.
    NotStored,
    /// The item alone is larger than the memory limit.
    NoMemory,
}

/// The result of an increment or decrement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delta {
    /// The new value (unpadded) of the item now at this slot.
    Done(u32, String),
    /// The value is not a decimal number.
    NonNumeric,
    /// No such key.
    NotFound,
    /// The CAS unique did not match.
    CasMismatch,
    /// A longer value does not fit the memory limit.
    NoMemory,
}

counters! {
    /// What happened to items, by memcached's statistic names.
    #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
    pub struct StoreCounters {
        /// Items ever stored.
        pub total_items: u64,
        /// Live items removed to make room.
        pub evictions: u64,
        /// Expired items removed by the sweep or to make room.
        pub reclaimed: u64,
        /// Expired items that were never fetched.
        pub expired_unfetched: u64,
        /// Evicted items that were never fetched.
        pub evicted_unfetched: u64,
        /// Lookups that found an expired item.
        pub get_expired: u64,
        /// Lookups that found an item invalidated by `flush_all`.
        pub get_flushed: u64,
    }
}

/// One item: key and value in one shared allocation (a reply can hold
/// the value while the store replaces it), and its metadata.
#[derive(Debug, Clone)]
pub struct Item {
    data: Arc<[u8]>,
    key_len: u8,
    /// Client flags.
    pub flags: u32,
    /// When it expires.
    pub expiry: Expiry,
    /// CAS unique.
    pub cas: u64,
    /// Device time (ms) it was stored.
    pub stored_ms: i64,
    /// Device time (ms) of its last access.
    pub accessed_ms: i64,
    /// Fetched since stored.
    pub fetched: bool,
    /// A meta client was handed the right to recache it (`W` sent).
    pub token_sent: bool,
    /// Marked stale by a meta delete or a stale CAS set.
    pub stale: bool,
    /// The key came base64-encoded (meta `b`) and is shown so.
    pub binary_key: bool,
    hash: u64,
    prev: u32,
    next: u32,
}

impl Item {
    /// The key.
    pub fn key(&self) -> &[u8] {
        &self.data[..self.key_len as usize]
    }
    /// The value.
    pub fn value(&self) -> &[u8] {
        &self.data[self.key_len as usize..]
    }
    /// The shared key-and-value buffer and where the value starts in it.
    pub fn shared_value(&self) -> (Arc<[u8]>, usize) {
        (self.data.clone(), self.key_len as usize)
    }
    /// memcached's size of this item ([`item_total`]).
    pub fn total(&self) -> usize {
        item_total(self.key_len as usize, self.flags, self.value().len())
    }
    fn cost(&self) -> usize {
        SLOT_OVERHEAD + self.data.len()
    }
    /// Whole seconds of life left (rounded up), -1 for never.
    pub fn ttl(&self, now: Instant) -> i64 {
        match self.expiry {
            Expiry::Never => -1,
            Expiry::At(t) => (t.saturating_sub(now.total_millis()).max(0) + 999) / 1000,
        }
    }
}

/// The items, their index and LRU order, and the memory they cost.
pub struct Store {
    index: HashTable<u32>,
    slots: Vec<Option<Item>>,
    free: Vec<u32>,
    /// Most recently used.
    head: u32,
    /// Least recently used: evicted first.
    tail: u32,
    hasher: foldhash::fast::RandomState,
    memory_limit: usize,
    max_item_size: usize,
    memory_used: usize,
    bytes: usize,
    next_cas: u64,
    flush_at: Option<i64>,
    unix_base_ms: i64,
    sweep_hand: usize,
    last_sweep_ms: i64,
    /// What happened to items.
    pub counters: StoreCounters,
}

impl Store {
    /// An empty store that keeps items within `memory_limit` bytes and
    /// refuses items larger than `max_item_size` ([`item_total`]).
    pub fn new(memory_limit: usize, max_item_size: usize) -> Store {
        Store {
            index: HashTable::new(),
            slots: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            hasher: foldhash::fast::RandomState::default(),
            memory_limit,
            max_item_size,
            memory_used: 0,
            bytes: 0,
            next_cas: 0,
            flush_at: None,
            unix_base_ms: 0,
            sweep_hand: 0,
            last_sweep_ms: i64::MIN,
            counters: StoreCounters::default(),
        }
    }

    /// Sets the Unix time (ms) of device time zero, for absolute expiry
    /// times and the `time` statistic.
    pub fn set_unix_base(&mut self, unix_ms: i64) {
        self.unix_base_ms = unix_ms;
    }

    /// The Unix time (seconds) at device time `now`.
    pub fn unix_time(&self, now: Instant) -> i64 {
        (self.unix_base_ms + now.total_millis()).div_euclid(1000)
    }

    /// Changes the limits; evicts down to a smaller memory limit.
    pub fn set_limits(&mut self, memory_limit: usize, max_item_size: usize, now: Instant) {
        self.memory_limit = memory_limit;
        self.max_item_size = max_item_size;
        self.make_room(0, now.total_millis());
    }

    /// The memory limit, in bytes.
    pub fn memory_limit(&self) -> usize {
        self.memory_limit
    }
    /// The item size limit, in bytes.
    pub fn max_item_size(&self) -> usize {
        self.max_item_size
    }
    /// Bytes the items cost now (never above the memory limit).
    pub fn memory_used(&self) -> usize {
        self.memory_used
    }
    /// memcached's `bytes`: the sum of [`Item::total`].
    pub fn bytes(&self) -> usize {
        self.bytes
    }
    /// Items stored now (expired ones not yet removed included).
    pub fn len(&self) -> usize {
        self.index.len()
    }
    /// No items.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Whether memcached would refuse this item as too large.
    pub fn too_large(&self, key_len: usize, flags: u32, value_len: usize) -> bool {
        item_total(key_len, flags, value_len) > self.max_item_size
    }

    /// Converts a protocol exptime: 0 never, negative already expired, up
    /// to 30 days relative seconds, beyond that an absolute Unix time.
    pub fn expiry(&self, exptime: i64, now: Instant) -> Expiry {
        if exptime == 0 {
            Expiry::Never
        } else if exptime < 0 {
            Expiry::At(i64::MIN)
        } else if exptime > REALTIME_MAXDELTA {
            Expiry::At(
                exptime
                    .saturating_mul(1000)
                    .saturating_sub(self.unix_base_ms),
            )
        } else {
            Expiry::At(
                now.total_millis()
                    .saturating_add(exptime.saturating_mul(1000)),
            )
        }
    }

    /// A fresh CAS unique.
    pub fn new_cas(&mut self) -> u64 {
        self.next_cas += 1;
        self.next_cas
    }

    /// The item in slot `id`.
    pub fn item(&self, id: u32) -> &Item {
        self.slots[id as usize].as_ref().expect("a live slot")
    }
    /// The item in slot `id`, to change its metadata.
    pub fn item_mut(&mut self, id: u32) -> &mut Item {
        self.slots[id as usize].as_mut().expect("a live slot")
    }

    fn find(&self, key: &[u8]) -> Option<u32> {
        let hash = self.hasher.hash_one(key);
        self.index
            .find(hash, |&i| {
                self.slots[i as usize]
                    .as_ref()
                    .is_some_and(|it| it.key() == key)
            })
            .copied()
    }

    fn flushed(&self, it: &Item, now_ms: i64) -> bool {
        self.flush_at
            .is_some_and(|t| now_ms >= t && it.stored_ms < t)
    }

    /// The live item under `key`, without touching it. An expired or
    /// flushed one is removed (and counted) instead.
    pub fn lookup(&mut self, key: &[u8], now: Instant) -> Option<u32> {
        let id = self.find(key)?;
        let now_ms = now.total_millis();
        let it = self.item(id);
        let fetched = it.fetched;
        if it.expiry.passed(now_ms) {
            self.counters.get_expired += 1;
            if !fetched {
                self.counters.expired_unfetched += 1;
            }
            self.unlink(id);
            return None;
        }
        if self.flushed(self.item(id), now_ms) {
            self.counters.get_flushed += 1;
            self.unlink(id);
            return None;
        }
        Some(id)
    }

    /// A fetch: marks the item fetched, its access time, and moves it to
    /// the most recently used end.
    pub fn bump(&mut self, id: u32, now: Instant) {
        let it = self.item_mut(id);
        it.fetched = true;
        self.touch(id, now);
    }

    /// An update that is not a fetch: access time and LRU position only.
    pub fn touch(&mut self, id: u32, now: Instant) {
        self.item_mut(id).accessed_ms = now.total_millis();
        self.lru_remove(id);
        self.lru_push_front(id);
    }

    /// Removes the item in slot `id`.
    pub fn unlink(&mut self, id: u32) {
        self.lru_remove(id);
        let it = self.slots[id as usize].take().expect("a live slot");
        let found = self.index.find_entry(it.hash, |&i| i == id);
        if let Ok(e) = found {
            e.remove();
        }
        self.memory_used -= it.cost();
        self.bytes -= it.total();
        self.free.push(id);
    }

    fn lru_remove(&mut self, id: u32) {
        let (prev, next) = {
            let it = self.item(id);
            (it.prev, it.next)
        };
        match prev {
            NIL => {
                if self.head == id {
                    self.head = next;
                }
            }
            p => self.item_mut(p).next = next,
        }
        match next {
            NIL => {
                if self.tail == id {
                    self.tail = prev;
                }
            }
            n => self.item_mut(n).prev = prev,
        }
        let it = self.item_mut(id);
        it.prev = NIL;
        it.next = NIL;
    }

    fn lru_push_front(&mut self, id: u32) {
        let old = self.head;
        {
            let it = self.item_mut(id);
            it.prev = NIL;
            it.next = old;
        }
        if old != NIL {
            self.item_mut(old).prev = id;
        } else {
            self.tail = id;
        }
        self.head = id;
    }

    /// Evicts from the LRU end until `extra` more bytes fit.
    fn make_room(&mut self, extra: usize, now_ms: i64) {
        while self.memory_used + extra > self.memory_limit && self.tail != NIL {
            let id = self.tail;
            let it = self.item(id);
            let fetched = it.fetched;
            if it.expiry.passed(now_ms) || self.flushed(it, now_ms) {
                self.counters.reclaimed += 1;
                if !fetched {
                    self.counters.expired_unfetched += 1;
                }
            } else {
                self.counters.evictions += 1;
                if !fetched {
                    self.counters.evicted_unfetched += 1;
                }
            }
            self.unlink(id);
        }
    }

    /// Links a new item at the most recently used end, evicting to make
    /// room; `None` if it alone exceeds the memory limit.
    #[allow(clippy::too_many_arguments)]
    fn link(
        &mut self,
        key: &[u8],
        value: &[&[u8]],
        flags: u32,
        expiry: Expiry,
        binary_key: bool,
        now: Instant,
    ) -> Option<u32> {
        let len = key.len() + value.iter().map(|v| v.len()).sum::<usize>();
        let cost = SLOT_OVERHEAD + len;
        if cost > self.memory_limit || key.len() > KEY_MAX {
            return None;
        }
        let now_ms = now.total_millis();
        self.make_room(cost, now_ms);
        let mut data = Vec::with_capacity(len);
        data.extend_from_slice(key);
        for v in value {
            data.extend_from_slice(v);
        }
        let hash = self.hasher.hash_one(key);
        let cas = self.new_cas();
        let item = Item {
            data: data.into(),
            key_len: key.len() as u8,
            flags,
            expiry,
            cas,
            stored_ms: now_ms,
            accessed_ms: now_ms,
            fetched: false,
            token_sent: false,
            stale: false,
            binary_key,
            hash,
            prev: NIL,
            next: NIL,
        };
        self.memory_used += item.cost();
        self.bytes += item.total();
        let id = match self.free.pop() {
            Some(id) => {
                self.slots[id as usize] = Some(item);
                id
            }
            None => {
                self.slots.push(Some(item));
                (self.slots.len() - 1) as u32
            }
        };
        let slots = &self.slots;
        self.index.insert_unique(hash, id, |&i| {
            slots[i as usize].as_ref().map_or(0, |it| it.hash)
        });
        self.lru_push_front(id);
        self.counters.total_items += 1;
        Some(id)
    }

    /// A new item under `key` (which must be absent): a meta auto-vivify.
    pub fn insert(
        &mut self,
        key: &[u8],
        flags: u32,
        expiry: Expiry,
        value: &[u8],
        binary_key: bool,
        now: Instant,
    ) -> Option<u32> {
        debug_assert!(self.find(key).is_none());
        self.link(key, &[value], flags, expiry, binary_key, now)
    }

    /// `flush_all`: at once (`None` or a time not after `now`) every item
    /// goes; with a later time, the items stored before it stop being
    /// served from then on.
    pub fn flush(&mut self, at: Option<i64>, now: Instant) {
        match at {
            Some(t) if t > now.total_millis() => self.flush_at = Some(t),
            _ => {
                // memcached spends a CAS unique on an immediate flush.
                self.new_cas();
                self.index.clear();
                self.slots.clear();
                self.free.clear();
                self.head = NIL;
                self.tail = NIL;
                self.memory_used = 0;
                self.bytes = 0;
                self.flush_at = None;
                self.sweep_hand = 0;
            }
        }
    }

    /// Background work, cheap enough for every poll: applies a delayed
    /// flush that fell due, and removes expired items from a bounded
    /// window of slots every 100 ms of device time.
    pub fn maintain(&mut self, now: Instant) {
        let now_ms = now.total_millis();
        if let Some(t) = self.flush_at
            && now_ms >= t
        {
            for id in 0..self.slots.len() as u32 {
                if self.slots[id as usize]
                    .as_ref()
                    .is_some_and(|it| it.stored_ms < t)
                {
                    self.unlink(id);
                }
            }
            self.flush_at = None;
        }
        if now_ms.saturating_sub(self.last_sweep_ms) < SWEEP_EVERY_MS || self.slots.is_empty() {
            return;
        }
        self.last_sweep_ms = now_ms;
        for _ in 0..SWEEP_SLOTS.min(self.slots.len()) {
            self.sweep_hand = (self.sweep_hand + 1) % self.slots.len();
            let id = self.sweep_hand as u32;
            if let Some(it) = &self.slots[id as usize]
                && it.expiry.passed(now_ms)
            {
                let fetched = it.fetched;
                self.counters.reclaimed += 1;
                if !fetched {
                    self.counters.expired_unfetched += 1;
                }
                self.unlink(id);
            }
        }
    }

    /// Checks the store's own bookkeeping (for tests and the fuzz target):
    /// the index, the LRU list and the byte counts agree, and memory is
    /// within the limit.
    pub fn check_invariants(&self) -> Result<(), String> {
        let live: Vec<u32> = (0..self.slots.len() as u32)
            .filter(|&i| self.slots[i as usize].is_some())
            .collect();
        if live.len() != self.index.len() {
            return Err(format!(
                "{} slots, {} indexed",
                live.len(),
                self.index.len()
            ));
        }
        let (mut n, mut id, mut prev) = (0, self.head, NIL);
        while id != NIL {
            let it = self.item(id);
            if it.prev != prev {
                return Err(format!("slot {id}: prev {} != {prev}", it.prev));
            }
            if self.find(it.key()) != Some(id) {
                return Err(format!("slot {id} not found by its key"));
            }
            n += 1;
            prev = id;
            id = it.next;
        }
        if prev != self.tail || n != live.len() {
            return Err(format!("LRU list has {n} of {} items", live.len()));
        }
        let cost: usize = live.iter().map(|&i| self.item(i).cost()).sum();
        let total: usize = live.iter().map(|&i| self.item(i).total()).sum();
        if cost != self.memory_used || total != self.bytes {
            return Err(format!(
                "memory {} != {cost} or bytes {} != {total}",
                self.memory_used, self.bytes
            ));
        }
        if self.memory_used > self.memory_limit {
            return Err(format!(
                "{} bytes over the limit {}",
                self.memory_used, self.memory_limit
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
