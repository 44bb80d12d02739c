//! The store's unit tests: LRU eviction under the memory limit, expiry
//! on virtual time, CAS and the storage commands.
use super::*;

fn at(s: i64) -> Instant {
    Instant::from_secs(s)
}

fn set(st: &mut Store, key: &str, value: &str, now: Instant) -> Outcome {
    st.store(
        Mode::Set,
        key.as_bytes(),
        0,
        Expiry::Never,
        value.as_bytes(),
        0,
        false,
        now,
    )
    .0
}

fn get(st: &mut Store, key: &str, now: Instant) -> Option<String> {
    let id = st.lookup(key.as_bytes(), now)?;
    st.bump(id, now);
    Some(String::from_utf8(st.item(id).value().to_vec()).unwrap())
}

#[test]
fn evicts_the_least_recently_used_first_within_the_limit() {
    // Room for three 100-byte values (plus key and overhead) only.
    let one = SLOT_OVERHEAD + 1 + 100;
    let mut st = Store::new(3 * one, 1 << 20);
    let v = "x".repeat(100);
    for k in ["a", "b", "c"] {
        assert_eq!(set(&mut st, k, &v, at(0)), Outcome::Stored);
    }
    // Using "a" makes "b" the least recently used.
    assert!(get(&mut st, "a", at(1)).is_some());
    assert_eq!(set(&mut st, "d", &v, at(2)), Outcome::Stored);
    assert_eq!(get(&mut st, "b", at(3)), None);
    for k in ["a", "c", "d"] {
        assert!(get(&mut st, k, at(3)).is_some(), "{k}");
    }
    assert_eq!(st.counters.evictions, 1);
    assert_eq!(st.counters.evicted_unfetched, 1);
    assert_eq!(st.memory_used(), 3 * one);
    st.check_invariants().unwrap();
    // A smaller limit evicts down to it, least recently used first:
    // "a" was read before "c" and "d" just above.
    st.set_limits(2 * one, 1 << 20, at(4));
    assert_eq!(st.len(), 2);
    assert_eq!(get(&mut st, "a", at(4)), None);
    assert!(get(&mut st, "c", at(4)).is_some());
    // An item larger than the whole limit is refused.
    let huge = "y".repeat(3 * one);
    assert_eq!(set(&mut st, "h", &huge, at(5)), Outcome::NoMemory);
    st.check_invariants().unwrap();
}

#[test]
fn items_expire_on_virtual_time() {
    let mut st = Store::new(1 << 20, 1 << 20);
    st.set_unix_base(1_700_000_000_000);
    let now = at(10);
    let rel = st.expiry(5, now);
    st.store(Mode::Set, b"rel", 0, rel, b"1", 0, false, now);
    // Absolute: 20 s after device zero in Unix time.
    let abs = st.expiry(1_700_000_020, now);
    st.store(Mode::Set, b"abs", 0, abs, b"2", 0, false, now);
    let neg = st.expiry(-1, now);
    st.store(Mode::Set, b"neg", 0, neg, b"3", 0, false, now);
    // An absolute time before device zero is already past.
    let old = st.expiry(1_600_000_000, now);
    st.store(Mode::Set, b"old", 0, old, b"4", 0, false, now);
    assert_eq!(get(&mut st, "neg", now), None);
    assert_eq!(get(&mut st, "old", now), None);
    let id = st.lookup(b"rel", now).unwrap();
    assert_eq!(st.item(id).ttl(now), 5);
    assert_eq!(get(&mut st, "rel", at(14)).as_deref(), Some("1"));
    assert_eq!(get(&mut st, "rel", at(15)), None);
    assert_eq!(get(&mut st, "abs", at(19)).as_deref(), Some("2"));
    assert_eq!(get(&mut st, "abs", at(20)), None);
    assert_eq!(st.counters.get_expired, 4);
    assert_eq!(st.unix_time(at(20)), 1_700_000_020);
    assert!(st.is_empty());
    st.check_invariants().unwrap();
}

#[test]
fn the_sweep_reclaims_expired_items_nobody_asks_for() {
    let mut st = Store::new(1 << 20, 1 << 20);
    for i in 0..10 {
        let e = st.expiry(1, at(0));
        st.store(
            Mode::Set,
            format!("k{i}").as_bytes(),
            0,
            e,
            b"v",
            0,
            false,
            at(0),
        );
    }
    st.maintain(at(2));
    assert!(st.is_empty());
    assert_eq!(st.counters.reclaimed, 10);
    assert_eq!(st.memory_used(), 0);
}

#[test]
fn cas_add_replace_append_prepend() {
    let mut st = Store::new(1 << 20, 1 << 20);
    let now = at(0);
    let put = |st: &mut Store, mode, v: &str, cas| {
        st.store(mode, b"k", 7, Expiry::Never, v.as_bytes(), cas, false, now)
    };
    assert_eq!(put(&mut st, Mode::Replace, "r", 0).0, Outcome::NotStored);
    assert_eq!(put(&mut st, Mode::Cas, "c", 1).0, Outcome::NotFound);
    let (o, cas) = put(&mut st, Mode::Add, "a", 0);
    assert_eq!(o, Outcome::Stored);
    assert_eq!(put(&mut st, Mode::Add, "b", 0).0, Outcome::NotStored);
    assert_eq!(put(&mut st, Mode::Cas, "c", cas + 100).0, Outcome::Exists);
    let (o, cas2) = put(&mut st, Mode::Cas, "c", cas);
    assert_eq!(o, Outcome::Stored);
    assert!(cas2 > cas);
    assert_eq!(put(&mut st, Mode::Cas, "d", cas).0, Outcome::Exists);
    assert_eq!(put(&mut st, Mode::Append, ">", 0).0, Outcome::Stored);
    assert_eq!(put(&mut st, Mode::Prepend, "<", 0).0, Outcome::Stored);
    let id = st.lookup(b"k", now).unwrap();
    assert_eq!(st.item(id).value(), b"<c>");
    assert_eq!(st.item(id).flags, 7);
    // Appending past the item size limit is refused.
    let mut small = Store::new(1 << 20, item_total(1, 7, 3));
    small.store(Mode::Set, b"k", 7, Expiry::Never, b"abc", 0, false, now);
    let (o, _) = small.store(Mode::Append, b"k", 0, Expiry::Never, b"d", 0, false, now);
    assert_eq!(o, Outcome::NotStored);
    st.check_invariants().unwrap();
}

#[test]
fn incr_decr_as_memcached() {
    let mut st = Store::new(1 << 20, 1 << 20);
    let now = at(0);
    set(&mut st, "n", "100", now);
    assert!(matches!(st.delta(b"n", false, 1, 0, now), Delta::Done(_, ref s) if s == "99"));
    // Shorter results are padded in place.
    assert_eq!(get(&mut st, "n", now).as_deref(), Some("99 "));
    assert!(matches!(st.delta(b"n", true, 1, 0, now), Delta::Done(_, ref s) if s == "100"));
    assert!(matches!(st.delta(b"n", true, 1000, 0, now), Delta::Done(_, ref s) if s == "1100"));
    assert_eq!(get(&mut st, "n", now).as_deref(), Some("1100"));
    assert!(matches!(st.delta(b"n", false, 5000, 0, now), Delta::Done(_, ref s) if s == "0"));
    set(&mut st, "max", "18446744073709551615", now);
    assert!(matches!(st.delta(b"max", true, 2, 0, now), Delta::Done(_, ref s) if s == "1"));
    set(&mut st, "t", "12abc", now);
    assert_eq!(st.delta(b"t", true, 1, 0, now), Delta::NonNumeric);
    set(&mut st, "e", "", now);
    assert_eq!(st.delta(b"e", true, 1, 0, now), Delta::NonNumeric);
    assert_eq!(st.delta(b"none", true, 1, 0, now), Delta::NotFound);
    assert_eq!(st.delta(b"n", true, 1, 12345, now), Delta::CasMismatch);
    assert_eq!(parse_counter(b" 42"), Some(42));
    assert_eq!(parse_counter(b"-1"), None);
    assert_eq!(parse_counter(b"-0"), Some(0));
    assert_eq!(parse_counter(b"99999999999999999999"), None);
    st.check_invariants().unwrap();
}

#[test]
fn flush_now_and_later() {
    let mut st = Store::new(1 << 20, 1 << 20);
    set(&mut st, "a", "1", at(0));
    st.flush(None, at(1));
    assert!(st.is_empty());
    set(&mut st, "a", "1", at(1));
    st.flush(Some(at(5).total_millis()), at(1));
    assert_eq!(get(&mut st, "a", at(4)).as_deref(), Some("1"));
    set(&mut st, "b", "2", at(4));
    assert_eq!(get(&mut st, "a", at(5)), None);
    st.maintain(at(5));
    assert!(st.is_empty());
    set(&mut st, "c", "3", at(6));
    assert_eq!(get(&mut st, "c", at(7)).as_deref(), Some("3"));
    st.check_invariants().unwrap();
}
