//! The meta commands of memcached 1.6 (`mg`, `ms`, `md`, `ma`, `mn`, and
//! the debug `me`), with the flags and replies memcached 1.6.18 gives:
//! status codes `VA`/`HD`/`EN`/`NF`/`NS`/`EX`/`MN`, returned flags in the
//! order asked, opaque (`O`) and key (`k`, base64 with `b`) echoes, quiet
//! mode (`q`) hiding nominal replies, auto-vivify (`N`), recache tokens
//! (`R`, `W`/`Z`) and stale items (`I`, `X`).

use smoltcp::time::Instant;

use super::engine::Engine;
use super::proto::{
    META_MAX_TOKENS, MetaFlags, OPAQUE_MAX, Tokens, base64_decode, base64_encode, meta_flags,
    strtol,
};
use super::session::{BAD_FORMAT, MetaReturn, Pending, Session};
use super::store::{Delta, Expiry, KEY_MAX, Mode, Outcome};

const OPAQUE_TOO_LONG: &str = "CLIENT_ERROR opaque token too long";
const BAD_FLAG: &str = "CLIENT_ERROR invalid or duplicate flag";

/// ` k<key>`, base64 and ` b` for a binary key.
fn push_key(out: &mut Vec<u8>, key: &[u8], binary: bool) {
    out.extend_from_slice(b" k");
    if binary {
        base64_encode(key, out);
        out.extend_from_slice(b" b");
    } else {
        out.extend_from_slice(key);
    }
}

fn push_num(out: &mut Vec<u8>, flag: u8, n: impl std::fmt::Display) {
    out.push(b' ');
    out.push(flag);
    out.extend_from_slice(n.to_string().as_bytes());
}

/// ` O<opaque>`: the opaque flag `tok` echoed as given.
fn push_opaque(out: &mut Vec<u8>, tok: &[u8]) {
    out.push(b' ');
    out.extend_from_slice(tok);
}

/// The opaque and key flags of a reply without an item; `Err` for an
/// opaque token too long.
fn push_opaque_and_key(out: &mut Vec<u8>, flags: &[&[u8]], f: &MetaFlags) -> Result<(), ()> {
    for tok in flags {
        match tok[0] {
            b'O' if tok.len() > OPAQUE_MAX => return Err(()),
            b'O' => push_opaque(out, tok),
            b'k' => push_key(out, &f.key, f.key_binary),
            _ => {}
        }
    }
    Ok(())
}

impl Session {
    pub(super) fn meta(&mut self, which: u8, t: &Tokens<'_>, eng: &mut Engine, now: Instant) {
        match which {
            b'n' => self.out.write(b"MN\r\n"),
            b'e' => self.meta_debug(t, eng, now),
            _ if t.ntokens() < 3 => self.reply(false, "ERROR"),
            b'g' => self.meta_get(t, eng, now),
            b's' => self.meta_set(t, eng, now),
            b'd' => self.meta_delete(t, eng, now),
            _ => self.meta_arith(t, eng, now),
        }
    }

    fn meta_get(&mut self, t: &Tokens<'_>, eng: &mut Engine, now: Instant) {
        let Some(key) = t.key() else {
            return self.reply(false, BAD_FORMAT);
        };
        if t.ntokens() > META_MAX_TOKENS {
            return self.reply(false, "CLIENT_ERROR options flags are too long");
        }
        let flags = t.from(2);
        let f = match meta_flags(key, flags, BAD_FORMAT) {
            Ok(f) => f,
            Err(e) => return self.reply(false, e),
        };
        let mut hit = eng.store.lookup(&f.key, now);
        let mut created = false;
        if hit.is_none()
            && let Some(n) = f.vivify
        {
            let expiry = eng.store.expiry(n.into(), now);
            hit = eng.store.insert(&f.key, 0, expiry, b"", f.key_binary, now);
            created = hit.is_some();
        }
        let mut head = Vec::with_capacity(64);
        let Some(id) = hit else {
            eng.stats.cmd_get += 1;
            eng.stats.get_misses += 1;
            head.extend_from_slice(b"EN");
            if push_opaque_and_key(&mut head, flags, &f).is_err() {
                return self.reply(false, OPAQUE_TOO_LONG);
            }
            if !f.quiet {
                head.extend_from_slice(b"\r\n");
                self.out.write(&head);
            }
            return;
        };
        let mut won = false;
        let mut ttl_set = false;
        let it = eng.store.item(id);
        if f.value {
            head.extend_from_slice(format!("VA {}", it.value().len()).as_bytes());
        } else {
            head.extend_from_slice(b"HD");
        }
        for tok in flags {
            let it = eng.store.item(id);
            match tok[0] {
                b'T' => {
                    ttl_set = true;
                    let e = eng.store.expiry(f.ttl.unwrap_or(0).into(), now);
                    eng.store.item_mut(id).expiry = e;
                }
                b'N' if created => won = true,
                b'R' => {
                    let r = eng.store.expiry(f.recache.unwrap_or(0).into(), now);
                    if let (Expiry::At(t), Expiry::At(limit)) = (it.expiry, r)
                        && !it.token_sent
                        && !created
                        && t < limit
                    {
                        won = true;
                    }
                }
                b's' => push_num(&mut head, b's', it.value().len()),
                b't' => push_num(&mut head, b't', it.ttl(now)),
                b'c' => push_num(&mut head, b'c', it.cas),
                b'f' => push_num(&mut head, b'f', it.flags),
                b'l' => push_num(
                    &mut head,
                    b'l',
                    now.total_millis().saturating_sub(it.accessed_ms) / 1000,
                ),
                b'h' => push_num(&mut head, b'h', u8::from(it.fetched)),
                b'O' if tok.len() > OPAQUE_MAX => return self.reply(false, OPAQUE_TOO_LONG),
                b'O' => push_opaque(&mut head, tok),
                b'k' => push_key(&mut head, it.key(), it.binary_key),
                _ => {}
            }
        }
        let it = eng.store.item_mut(id);
        if it.token_sent {
            head.extend_from_slice(b" Z");
        }
        if it.stale {
            head.extend_from_slice(b" X");
            if !it.token_sent {
                won = true;
            }
        }
        if won {
            head.extend_from_slice(b" W");
            it.token_sent = true;
        }
        head.extend_from_slice(b"\r\n");
        self.out.write(&head);
        if f.value {
            let (data, start) = it.shared_value();
            self.out.share(data, start);
            self.out.write(b"\r\n");
        }
        if !f.no_update {
            eng.store.bump(id, now);
        }
        if ttl_set {
            eng.stats.cmd_touch += 1;
            eng.stats.touch_hits += 1;
        } else {
            eng.stats.cmd_get += 1;
            eng.stats.get_hits += 1;
        }
    }

    fn meta_set(&mut self, t: &Tokens<'_>, eng: &mut Engine, now: Instant) {
        let key = t.get(1);
        if key.len() > KEY_MAX || t.ntokens() == 3 {
            return self.reply(false, BAD_FORMAT);
        }
        if t.ntokens() > META_MAX_TOKENS {
            return self.reply(false, "CLIENT_ERROR options flags too long");
        }
        let vlen = match strtol(t.get(2)) {
            Some(v) if (0..=i32::MAX - 2).contains(&v) => v as usize + 2,
            _ => return self.reply(false, BAD_FORMAT),
        };
        // Any error now swallows the data block.
        let fail = |s: &mut Session, msg: &str| {
            s.reply(false, msg);
            s.decoder.swallow(vlen);
        };
        let f = match meta_flags(key, t.from(3), BAD_FORMAT) {
            Ok(f) => f,
            Err(e) => return fail(self, e),
        };
        let mut ret = Vec::new();
        let mut error = None;
        for tok in t.from(2) {
            match tok[0] {
                b'O' if tok.len() > OPAQUE_MAX => error = Some(OPAQUE_TOO_LONG),
                b'O' | b'k' | b'c' => ret.push(tok.to_vec()),
                _ => {}
            }
        }
        let mut mode = match f.mode {
            None | Some(b'S') => Mode::Set,
            Some(b'E') => Mode::Add,
            Some(b'A') => Mode::Append,
            Some(b'P') => Mode::Prepend,
            Some(b'R') => Mode::Replace,
            Some(_) => return fail(self, "CLIENT_ERROR invalid mode for ms M token"),
        };
        if f.cas.is_some() && matches!(mode, Mode::Set | Mode::Replace) {
            mode = Mode::Cas;
        }
        if let Some(e) = error {
            return fail(self, e);
        }
        if let Some(msg) = self.refuse(&f.key, f.client_flags, vlen - 2, true, eng, now) {
            return fail(self, msg);
        }
        let expiry = eng.store.expiry(f.ttl.unwrap_or(0).into(), now);
        self.pending = Some(Pending {
            mode,
            key: f.key.clone(),
            flags: f.client_flags,
            expiry,
            cas: f.cas.unwrap_or(0),
            noreply: f.quiet,
            meta: Some(MetaReturn {
                flags: ret,
                binary_key: f.key_binary,
                set_stale: f.set_stale && mode == Mode::Cas,
            }),
        });
        self.decoder.expect_data(vlen);
    }

    /// The reply of an `ms` once its data is stored (or not).
    pub(super) fn meta_set_done(
        &mut self,
        outcome: Outcome,
        cas: u64,
        key: &[u8],
        quiet: bool,
        m: &MetaReturn,
    ) {
        let code: &[u8] = match outcome {
            Outcome::Stored if quiet => return,
            Outcome::Stored => b"HD",
            Outcome::Exists => b"EX",
            Outcome::NotFound => b"NF",
            _ => b"NS",
        };
        let mut line = code.to_vec();
        for tok in &m.flags {
            match tok[0] {
                b'O' => push_opaque(&mut line, tok),
                b'k' => push_key(&mut line, key, m.binary_key),
                _ => push_num(&mut line, b'c', cas),
            }
        }
        line.extend_from_slice(b"\r\n");
        self.out.write(&line);
    }

    /// The flags of an `md` or `ma` (the tokens after the key), checked
    /// alike for both; `None` once the error is answered.
    fn checked_flags(&mut self, t: &Tokens<'_>) -> Option<MetaFlags> {
        let Some(key) = t.key() else {
            self.reply(false, BAD_FORMAT);
            return None;
        };
        if t.ntokens() > META_MAX_TOKENS {
            self.reply(false, "CLIENT_ERROR options flags too long");
            return None;
        }
        let f = meta_flags(key, t.from(2), BAD_FORMAT);
        if f.is_err() {
            self.reply(false, BAD_FLAG);
        }
        f.ok()
    }

    fn meta_delete(&mut self, t: &Tokens<'_>, eng: &mut Engine, now: Instant) {
        let Some(f) = self.checked_flags(t) else {
            return;
        };
        let flags = t.from(2);
        let mut tail = Vec::new();
        if push_opaque_and_key(&mut tail, flags, &f).is_err() {
            return self.reply(false, OPAQUE_TOO_LONG);
        }
        let code: &[u8] = match eng.store.lookup(&f.key, now) {
            Some(id) if f.cas.is_some_and(|c| c != eng.store.item(id).cas) => {
                eng.stats.delete_misses += 1;
                b"EX"
            }
            Some(id) => {
                if f.set_stale {
                    let expiry = f.ttl.map(|t| eng.store.expiry(t.into(), now));
                    let cas = eng.store.new_cas();
                    let it = eng.store.item_mut(id);
                    if let Some(e) = expiry {
                        it.expiry = e;
                    }
                    it.stale = true;
                    it.token_sent = false;
                    it.cas = cas;
                } else {
                    eng.store.unlink(id);
                    eng.stats.delete_hits += 1;
                }
                if f.quiet {
                    return;
                }
                b"HD"
            }
            None => {
                eng.stats.delete_misses += 1;
                b"NF"
            }
        };
        self.out.write(code);
        self.out.write(&tail);
        self.out.write(b"\r\n");
    }

    fn meta_arith(&mut self, t: &Tokens<'_>, eng: &mut Engine, now: Instant) {
        let Some(f) = self.checked_flags(t) else {
            return;
        };
        let flags = t.from(2);
        let incr = match f.mode {
            None | Some(b'I') | Some(b'+') => true,
            Some(b'D') | Some(b'-') => false,
            Some(_) => return self.reply(false, "CLIENT_ERROR invalid mode for ma M token"),
        };
        let mut created = false;
        let mut line = Vec::with_capacity(64);
        let (id, value) =
            match eng
                .store
                .delta(&f.key, incr, f.delta.unwrap_or(1), f.cas.unwrap_or(0), now)
            {
                Delta::Done(id, value) => {
                    if incr {
                        eng.stats.incr_hits += 1;
                    } else {
                        eng.stats.decr_hits += 1;
                    }
                    if f.quiet {
                        return;
                    }
                    (Some(id), value)
                }
                Delta::NonNumeric => {
                    return self.reply(
                        false,
                        "CLIENT_ERROR cannot increment or decrement non-numeric value",
                    );
                }
                Delta::NoMemory => return self.reply(false, "SERVER_ERROR out of memory"),
                Delta::NotFound if f.vivify.is_some() => {
                    let value = f.initial.to_string();
                    match eng.store.insert(
                        &f.key,
                        0,
                        Expiry::Never,
                        value.as_bytes(),
                        f.key_binary,
                        now,
                    ) {
                        Some(id) => {
                            created = true;
                            (Some(id), value)
                        }
                        None => {
                            return self
                                .reply(false, "SERVER_ERROR Out of memory allocating new item");
                        }
                    }
                }
                Delta::NotFound => {
                    if incr {
                        eng.stats.incr_misses += 1;
                    } else {
                        eng.stats.decr_misses += 1;
                    }
                    line.extend_from_slice(b"NF");
                    (None, String::new())
                }
                Delta::CasMismatch => {
                    line.extend_from_slice(b"EX");
                    (None, String::new())
                }
            };
        let Some(id) = id else {
            if push_opaque_and_key(&mut line, flags, &f).is_err() {
                return self.reply(false, OPAQUE_TOO_LONG);
            }
            line.extend_from_slice(b"\r\n");
            return self.out.write(&line);
        };
        if f.value {
            line.extend_from_slice(format!("VA {}", value.len()).as_bytes());
        } else {
            line.extend_from_slice(b"HD");
        }
        for tok in flags {
            match tok[0] {
                b'c' => push_num(&mut line, b'c', eng.store.item(id).cas),
                b't' => push_num(&mut line, b't', eng.store.item(id).ttl(now)),
                b'T' => {
                    let e = eng.store.expiry(f.ttl.unwrap_or(0).into(), now);
                    eng.store.item_mut(id).expiry = e;
                }
                b'N' if created => {
                    let e = eng.store.expiry(f.vivify.unwrap_or(0).into(), now);
                    eng.store.item_mut(id).expiry = e;
                }
                b'O' if tok.len() > OPAQUE_MAX => return self.reply(false, OPAQUE_TOO_LONG),
                b'O' => push_opaque(&mut line, tok),
                b'k' => push_key(&mut line, &f.key, f.key_binary),
                _ => {}
            }
        }
        if f.value {
            line.extend_from_slice(b"\r\n");
            line.extend_from_slice(value.as_bytes());
        }
        line.extend_from_slice(b"\r\n");
        self.out.write(&line);
    }

    /// `me`: memcached's debug view of an item.
    fn meta_debug(&mut self, t: &Tokens<'_>, eng: &mut Engine, now: Instant) {
        let mut key = t.get(1).to_vec();
        if t.ntokens() < 3 || key.len() > KEY_MAX {
            return self.reply(false, BAD_FORMAT);
        }
        let binary = t.ntokens() >= 4 && t.get(2) == b"b";
        if binary {
            match base64_decode(&key) {
                Some(k) => key = k,
                None => return self.reply(false, BAD_FORMAT),
            }
        }
        eng.stats.cmd_meta += 1;
        let Some(id) = eng.store.lookup(&key, now) else {
            return self.reply(false, "EN");
        };
        let it = eng.store.item(id);
        let mut line = b"ME ".to_vec();
        if it.binary_key {
            base64_encode(it.key(), &mut line);
        } else {
            line.extend_from_slice(it.key());
        }
        let now_ms = now.total_millis();
        // memcached prints "now - exptime" (negative while alive).
        let exp = match it.expiry {
            Expiry::Never => -1,
            Expiry::At(t) => now_ms.saturating_sub(t).div_euclid(1000),
        };
        line.extend_from_slice(
            format!(
                " exp={exp} la={} cas={} fetch={} cls=1 size={}\r\n",
                now_ms.saturating_sub(it.accessed_ms) / 1000,
                it.cas,
                if it.fetched { "yes" } else { "no" },
                it.total()
            )
            .as_bytes(),
        );
        self.out.write(&line);
    }
}
