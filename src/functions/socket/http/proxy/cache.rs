//! The proxy's HTTP cache (a shared cache, RFC 9111 subset): GET responses
//! with explicit freshness (`Cache-Control: s-maxage` / `max-age`, or
//! `Expires` against `Date`) are kept in memory, bounded, least recently
//! used first out, and served while fresh with an `Age` field. Not stored:
//! `no-store`, `private` and `no-cache` responses, responses that set
//! cookies or vary, responses to requests with credentials or
//! `no-store`; a request with `no-cache` or `max-age=0` goes upstream.

use std::collections::{BTreeMap, HashMap};

use smoltcp::time::{Duration, Instant};

use super::super::codec::{Fields, Method, RequestHead, ResponseHead, list_elements};

/// Statuses cacheable by default (RFC 9110 §15.1) that the cache keeps.
const CACHEABLE: [u16; 6] = [200, 203, 204, 301, 404, 410];

/// A stored response.
#[derive(Debug)]
pub(super) struct Entry {
    pub(super) head: ResponseHead,
    pub(super) body: Vec<u8>,
    stored: Instant,
    /// The `Age` it came with (seconds).
    initial_age: u64,
    lifetime: Duration,
    used: u64,
}

impl Entry {
    /// Its age now, in seconds.
    pub(super) fn age(&self, now: Instant) -> u64 {
        self.initial_age + (now - self.stored).secs()
    }
    fn fresh(&self, now: Instant) -> bool {
        now - self.stored + Duration::from_secs(self.initial_age) < self.lifetime
    }
    fn size(&self) -> usize {
        self.head.as_bytes().len() + self.body.len() + 64
    }
}

/// The cache: entries by key (host and target), and their use order.
#[derive(Debug, Default)]
pub(super) struct HttpCache {
    entries: HashMap<Vec<u8>, Entry>,
    by_use: BTreeMap<u64, Vec<u8>>,
    clock: u64,
    bytes: usize,
    max_bytes: usize,
    max_object: usize,
    pub(super) evictions: u64,
}

/// What a response may be stored as, decided at its head.
#[derive(Debug)]
pub(super) struct Capture {
    pub(super) key: Vec<u8>,
    pub(super) head: Option<(ResponseHead, Duration, u64)>,
    pub(super) body: Vec<u8>,
}

impl HttpCache {
    /// A cache of at most `max_bytes` (0: off) holding responses of at
    /// most `max_object` body bytes.
    pub(super) fn new(max_bytes: usize, max_object: usize) -> HttpCache {
        HttpCache {
            max_bytes,
            max_object,
            ..HttpCache::default()
        }
    }

    /// Bytes held.
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    /// The limits changed: evicts down to the new size.
    pub(super) fn resize(&mut self, max_bytes: usize, max_object: usize) {
        self.max_bytes = max_bytes;
        self.max_object = max_object;
        self.evict_to(max_bytes);
    }

    /// The key of `req` if the cache may answer or store it: a GET without
    /// a body, credentials or `no-store`.
    pub(super) fn key(&self, req: &RequestHead) -> Option<Vec<u8>> {
        if self.max_bytes == 0
            || req.method() != Method::Get
            || req.body() != super::super::codec::BodyKind::None
            || req.fields().get(b"authorization").is_some()
            || directive(req.fields(), b"no-store").is_some()
        {
            return None;
        }
        let mut key = req
            .fields()
            .get(b"host")
            .unwrap_or_default()
            .to_ascii_lowercase();
        key.push(b' ');
        key.extend_from_slice(req.target());
        Some(key)
    }

    /// A fresh entry for `key`, unless the request wants it revalidated.
    pub(super) fn lookup(&mut self, key: &[u8], req: &RequestHead, now: Instant) -> Option<&Entry> {
        let f = req.fields();
        if directive(f, b"no-cache").is_some()
            || directive(f, b"max-age").and_then(seconds) == Some(0)
            || f.get(b"pragma")
                .is_some_and(|p| p.eq_ignore_ascii_case(b"no-cache"))
        {
            return None;
        }
        let fresh = self.entries.get(key).map(|e| e.fresh(now))?;
        if !fresh {
            self.remove(key);
            return None;
        }
        self.clock += 1;
        let e = self.entries.get_mut(key)?;
        self.by_use.remove(&e.used);
        e.used = self.clock;
        self.by_use.insert(self.clock, key.to_vec());
        self.entries.get(key)
    }

    /// Whether `resp` (to a cacheable request) may be stored, and for how
    /// long: its freshness lifetime and the `Age` it came with.
    pub(super) fn storable(&self, resp: &ResponseHead) -> Option<(Duration, u64)> {
        let f = resp.fields();
        if !CACHEABLE.contains(&resp.status())
            || ["no-store", "private", "no-cache"]
                .iter()
                .any(|d| directive(f, d.as_bytes()).is_some())
            || f.get(b"set-cookie").is_some()
            || f.get(b"vary").is_some()
        {
            return None;
        }
        let lifetime = directive(f, b"s-maxage")
            .or_else(|| directive(f, b"max-age"))
            .map(|v| seconds(v).unwrap_or(0))
            .or_else(|| {
                let expires = http_date(f.get(b"expires")?);
                let date = http_date(f.get(b"date")?);
                Some(expires.map_or(0, |e| e.saturating_sub(date.unwrap_or(u64::MAX))))
            })?;
        if lifetime == 0 {
            return None;
        }
        let age = f.get(b"age").and_then(seconds).unwrap_or(0);
        Some((Duration::from_secs(lifetime), age))
    }

    /// The largest body the cache stores.
    pub(super) fn max_object(&self) -> usize {
        self.max_object
    }

    /// Stores a captured response; whether it was.
    pub(super) fn store(&mut self, c: Capture, now: Instant) -> bool {
        let Some((head, lifetime, initial_age)) = c.head else {
            return false;
        };
        self.remove(&c.key);
        self.clock += 1;
        let e = Entry {
            head,
            body: c.body,
            stored: now,
            initial_age,
            lifetime,
            used: self.clock,
        };
        let size = e.size();
        if size > self.max_bytes {
            return false;
        }
        self.evict_to(self.max_bytes - size);
        self.bytes += size;
        self.by_use.insert(self.clock, c.key.clone());
        self.entries.insert(c.key, e);
        true
    }

    fn remove(&mut self, key: &[u8]) {
        if let Some(e) = self.entries.remove(key) {
            self.by_use.remove(&e.used);
            self.bytes -= e.size();
        }
    }

    fn evict_to(&mut self, limit: usize) {
        while self.bytes > limit {
            let Some((_, key)) = self.by_use.pop_first() else {
                break;
            };
            if let Some(e) = self.entries.remove(&key) {
                self.bytes -= e.size();
                self.evictions += 1;
            }
        }
    }
}

/// The value of Cache-Control directive `name` (`Some(b"")` for one
/// without a value).
fn directive<'a>(f: &'a Fields, name: &[u8]) -> Option<&'a [u8]> {
    f.get_all(b"cache-control")
        .flat_map(list_elements)
        .find_map(|d| {
            let (n, v) = match d.iter().position(|&b| b == b'=') {
                Some(i) => (&d[..i], &d[i + 1..]),
                None => (d, &d[d.len()..]),
            };
            n.trim_ascii()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim_ascii())
        })
}

/// A delta-seconds value (quotes allowed, as some servers send them).
fn seconds(v: &[u8]) -> Option<u64> {
    let v = v.strip_prefix(b"\"").unwrap_or(v);
    let v = v.strip_suffix(b"\"").unwrap_or(v);
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // Overflow saturates (RFC 9111 §1.2.2: 2^31 at most).
    Some(
        std::str::from_utf8(v)
            .ok()?
            .parse::<u64>()
            .unwrap_or(1 << 31)
            .min(1 << 31),
    )
}

/// Seconds since 1970 of an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`);
/// `None` for anything else (which RFC 9111 says to read as the past).
pub(super) fn http_date(v: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(v).ok()?.trim();
    let mut it = s.split(' ');
    let (_day, d, mon, y, t, gmt) = (
        it.next()?,
        it.next()?,
        it.next()?,
        it.next()?,
        it.next()?,
        it.next()?,
    );
    if gmt != "GMT" || it.next().is_some() || d.len() != 2 || y.len() != 4 {
        return None;
    }
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let m = MONTHS.iter().position(|&x| x == mon)? as u64 + 1;
    let d: u64 = d.parse().ok()?;
    let y: u64 = y.parse().ok()?;
    let mut hms = t.split(':').map(|x| x.parse::<u64>().ok());
    let (h, mi, se) = (hms.next()??, hms.next()??, hms.next()??);
    if !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 || y < 1970 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + mi * 60 + se)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::functions::socket::http::codec::Limits;

    fn resp(fields: &str) -> ResponseHead {
        let text = format!("HTTP/1.1 200 OK\r\n{fields}Content-Length: 0\r\n\r\n");
        ResponseHead::parse(text.as_bytes(), Method::Get, &Limits::default())
            .unwrap()
            .unwrap()
            .0
    }

    #[test]
    fn http_dates_read_as_seconds_since_1970() {
        assert_eq!(http_date(b"Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(
            http_date(b"Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(http_date(b"Sunday, 06-Nov-94 08:49:37 GMT"), None);
        assert_eq!(http_date(b"0"), None);
    }

    #[test]
    fn freshness_comes_from_the_response() {
        let c = HttpCache::new(1 << 20, 1 << 16);
        let secs = |f: &str| c.storable(&resp(f)).map(|(l, _)| l.secs());
        assert_eq!(secs("Cache-Control: max-age=60\r\n"), Some(60));
        assert_eq!(
            secs("Cache-Control: public, s-maxage=5, max-age=60\r\n"),
            Some(5)
        );
        assert_eq!(
            secs(
                "Date: Sun, 06 Nov 1994 08:49:37 GMT\r\nExpires: Sun, 06 Nov 1994 08:50:37 GMT\r\n"
            ),
            Some(60)
        );
        for no in [
            "",
            "Cache-Control: no-store, max-age=60\r\n",
            "Cache-Control: private, max-age=60\r\n",
            "Cache-Control: max-age=0\r\n",
            "Cache-Control: max-age=60\r\nSet-Cookie: a=1\r\n",
            "Cache-Control: max-age=60\r\nVary: Accept\r\n",
            "Expires: 0\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n",
        ] {
            assert_eq!(secs(no), None, "{no}");
        }
    }

    #[test]
    fn the_least_recently_used_goes_first() {
        let head = resp("Cache-Control: max-age=60\r\n");
        let size = head.as_bytes().len() + 1000 + 64;
        let mut c = HttpCache::new(3 * size + 10, 2000);
        let now = Instant::from_secs(1);
        let put = |c: &mut HttpCache, k: &str| {
            let h = head.clone();
            c.store(
                Capture {
                    key: k.into(),
                    head: Some((h, Duration::from_secs(60), 0)),
                    body: vec![0; 1000],
                },
                now,
            );
        };
        let req = RequestHead::parse(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", &Limits::default())
            .unwrap()
            .unwrap()
            .0;
        put(&mut c, "a");
        put(&mut c, "b");
        put(&mut c, "c");
        assert!(c.lookup(b"a", &req, now).is_some());
        put(&mut c, "d");
        assert!(
            c.lookup(b"b", &req, now).is_none(),
            "b was the least recently used"
        );
        assert!(c.lookup(b"a", &req, now).is_some());
        assert_eq!(c.evictions, 1);
        // Stale after its lifetime.
        assert!(
            c.lookup(b"a", &req, now + Duration::from_secs(61))
                .is_none()
        );
    }
}
