//! The store's storage commands: memcached's `set`/`add`/`replace`/
//! `append`/`prepend`/`cas` logic and `incr`/`decr`, built on the index
//! and LRU list of [`Store`]. Apart from the bookkeeping they rely on, so
//! the protocol's rules read on their own.

use std::sync::Arc;

use smoltcp::time::Instant;

use super::{Delta, Expiry, Mode, Outcome, Store, parse_counter};

impl Store {
    /// memcached's store logic (`do_store_item`): returns the outcome and
    /// the stored item's CAS unique (0 if nothing was stored). `cas` is the
    /// client's unique (0: none); `set_stale` lets a lower unique replace
    /// the item as stale (meta `I`). Counters of CAS hits and misses are the
    /// caller's, from the outcome.
    #[allow(clippy::too_many_arguments)]
    pub fn store(
        &mut self,
        mode: Mode,
        key: &[u8],
        flags: u32,
        expiry: Expiry,
        value: &[u8],
        cas: u64,
        set_stale: bool,
        now: Instant,
    ) -> (Outcome, u64) {
        let req = StoreRequest {
            mode,
            key,
            flags,
            expiry,
            value,
            cas,
            set_stale,
            binary_key: false,
        };
        self.store_ext(&req, now).0
    }

    /// [`Store::store`] of `req` (whose key may be binary), also telling
    /// how a CAS unique compared.
    pub fn store_ext(
        &mut self,
        req: &StoreRequest<'_>,
        now: Instant,
    ) -> ((Outcome, u64), CasCheck) {
        let StoreRequest {
            mode,
            key,
            value,
            cas,
            ..
        } = *req;
        let Some(old) = self.lookup(key, now) else {
            let outcome = match mode {
                Mode::Add | Mode::Set => {
                    match self.link(key, &[value], req.flags, req.expiry, req.binary_key, now) {
                        Some(id) => return ((Outcome::Stored, self.item(id).cas), CasCheck::None),
                        None => Outcome::NoMemory,
                    }
                }
                Mode::Cas => return ((Outcome::NotFound, 0), CasCheck::Miss),
                Mode::Replace | Mode::Append | Mode::Prepend => Outcome::NotStored,
            };
            return ((outcome, 0), CasCheck::None);
        };
        let it = self.item(old);
        let check = if cas == 0 {
            CasCheck::None
        } else if cas == it.cas {
            CasCheck::Match
        } else if req.set_stale && cas < it.cas {
            CasCheck::Stale
        } else {
            CasCheck::BadValue
        };
        let (mut flags, mut expiry, mut stale, mut token) = (req.flags, req.expiry, false, false);
        let mut parts: [&[u8]; 2] = [value, &[]];
        let joined: Arc<[u8]>;
        match mode {
            Mode::Add => {
                self.touch(old, now);
                return ((Outcome::NotStored, 0), check);
            }
            Mode::Cas => match check {
                CasCheck::Match => {}
                CasCheck::Stale => {
                    expiry = it.expiry;
                    stale = true;
                    token = it.token_sent;
                }
                _ => return ((Outcome::Exists, 0), check),
            },
            Mode::Append | Mode::Prepend => {
                if !matches!(check, CasCheck::None | CasCheck::Match) {
                    return ((Outcome::Exists, 0), check);
                }
                flags = it.flags;
                expiry = it.expiry;
                if self.too_large(key.len(), flags, it.value().len() + value.len()) {
                    return ((Outcome::NotStored, 0), check);
                }
                joined = it.data.clone();
                let old_value = &joined[it.key_len as usize..];
                parts = if mode == Mode::Append {
                    [old_value, value]
                } else {
                    [value, old_value]
                };
            }
            Mode::Replace | Mode::Set => {}
        }
        let binary_key = req.binary_key || self.item(old).binary_key;
        self.unlink(old);
        match self.link(key, &parts, flags, expiry, binary_key, now) {
            Some(id) => {
                let it = self.item_mut(id);
                it.stale = stale;
                it.token_sent = token;
                ((Outcome::Stored, it.cas), check)
            }
            None => ((Outcome::NoMemory, 0), check),
        }
    }

    /// memcached's `incr`/`decr` (`do_add_delta`): a decimal value plus or
    /// minus `delta` (increments wrap at 2^64, decrements stop at 0). A
    /// result no longer than the old value is written over it padded with
    /// spaces, as memcached does; a longer one is a new item. `cas` (not 0)
    /// must match.
    pub fn delta(&mut self, key: &[u8], incr: bool, delta: u64, cas: u64, now: Instant) -> Delta {
        let Some(id) = self.lookup(key, now) else {
            return Delta::NotFound;
        };
        let it = self.item(id);
        if it.value().is_empty() {
            return Delta::NonNumeric;
        }
        if cas != 0 && it.cas != cas {
            return Delta::CasMismatch;
        }
        let Some(value) = parse_counter(it.value()) else {
            return Delta::NonNumeric;
        };
        let value = if incr {
            value.wrapping_add(delta)
        } else {
            value.saturating_sub(delta)
        };
        let text = value.to_string();
        let old_len = it.value().len();
        if text.len() <= old_len {
            let mut data = it.data.to_vec();
            let k = it.key_len as usize;
            data[k..k + text.len()].copy_from_slice(text.as_bytes());
            data[k + text.len()..].fill(b' ');
            let cas = self.new_cas();
            let it = self.item_mut(id);
            it.data = data.into();
            it.cas = cas;
            self.touch(id, now);
            return Delta::Done(id, text);
        }
        let (flags, expiry, binary) = (it.flags, it.expiry, it.binary_key);
        let key = it.key().to_vec();
        self.unlink(id);
        match self.link(&key, &[text.as_bytes()], flags, expiry, binary, now) {
            Some(id) => Delta::Done(id, text),
            None => Delta::NoMemory,
        }
    }
}

/// What a storage command asks of [`Store::store_ext`].
#[derive(Debug, Clone, Copy)]
pub struct StoreRequest<'a> {
    /// How the value meets an existing item.
    pub mode: Mode,
    /// The key.
    pub key: &'a [u8],
    /// The client's flags.
    pub flags: u32,
    /// When the item stops being served.
    pub expiry: Expiry,
    /// The data block.
    pub value: &'a [u8],
    /// The client's CAS unique (0: none).
    pub cas: u64,
    /// A lower unique replaces the item as stale (meta `I`).
    pub set_stale: bool,
    /// The key came base64-encoded (meta `b`).
    pub binary_key: bool,
}

/// How a client's CAS unique compared with the stored item's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CasCheck {
    /// No unique given (or no item to compare with).
    None,
    /// Equal.
    Match,
    /// Lower, and a stale set was allowed.
    Stale,
    /// Different.
    BadValue,
    /// A CAS on an absent key.
    Miss,
}
