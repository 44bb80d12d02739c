//! `bench cache`: memcached text protocol load (gets and sets 9:1, 64-byte
//! keys, 1 KiB values) from a client device to a `cache` device over
//! shared memory (devices as threads), against the same load on kernel
//! sockets to a real `memcached` on 127.0.0.1 (`-t 2 -m 256`) started for
//! the run. Every key is set before the timed window, so every get must
//! hit; any other reply fails the run.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use shmnet::shm::SegmentKind;
use shmnet::stack::NetDevice;
use shmnet::testing::DeviceToml;
use smoltcp::wire::IpAddress;

use super::load::{
    Daemon, KernelLoad, LoadArgs, Protocol, Rng, ShmLoad, find_within, free_port, skipped_without,
};
use super::report::measure;
use super::{Res, settings, unique};

/// Distinct keys (all preloaded).
const KEYS: usize = 10_000;
const VALUE_LEN: usize = 1024;
/// After the key of a set and of a hit's VALUE line (flags 0, VALUE_LEN).
const SET_TAIL: &[u8] = b" 0 0 1024\r\n";
const VALUE_TAIL: &[u8] = b" 0 1024";
/// Requests in flight per connection.
pub(super) const DEPTH: usize = 8;
const PORT: u16 = 11211;
/// Client TCP buffers: a few pipelined requests and replies.
const CLIENT_BUFFER: usize = 64 << 10;

/// The keys (64 bytes each) and the values they are set to.
struct Data {
    keys: Vec<Vec<u8>>,
    values: Vec<Vec<u8>>,
}

impl Data {
    fn new() -> Arc<Data> {
        let keys = (0..KEYS)
            .map(|i| format!("bench-key-{i:054}").into_bytes())
            .collect();
        let values = (0..26u8).map(|c| vec![b'a' + c; VALUE_LEN]).collect();
        Arc::new(Data { keys, values })
    }

    fn value(&self, key: usize) -> &[u8] {
        &self.values[key % self.values.len()]
    }
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Get(usize),
    Set(usize),
}

/// One connection's requests: the preload (sets of its share of the keys)
/// or the 9:1 mix of random keys.
struct CacheClient {
    data: Arc<Data>,
    rng: Rng,
    preload: Option<std::ops::Range<usize>>,
    expect: VecDeque<Op>,
}

impl CacheClient {
    /// Connection `i` of `n`: its share of the keys to set.
    fn preload(data: &Arc<Data>, i: usize, n: usize) -> CacheClient {
        let share = KEYS.div_ceil(n);
        let lo = (i * share).min(KEYS);
        CacheClient {
            data: data.clone(),
            rng: Rng::new(0),
            preload: Some(lo..(lo + share).min(KEYS)),
            expect: VecDeque::new(),
        }
    }

    fn mix(data: &Arc<Data>, i: usize) -> CacheClient {
        CacheClient {
            data: data.clone(),
            rng: Rng::new(i as u64 + 1),
            preload: None,
            expect: VecDeque::new(),
        }
    }
}

impl Protocol for CacheClient {
    fn request(&mut self, out: &mut Vec<u8>) -> bool {
        let op = match &mut self.preload {
            Some(keys) => match keys.next() {
                Some(k) => Op::Set(k),
                None => return false,
            },
            None => {
                let r = self.rng.next();
                let k = (r >> 8) as usize % KEYS;
                if r.is_multiple_of(10) {
                    Op::Set(k)
                } else {
                    Op::Get(k)
                }
            }
        };
        match op {
            Op::Get(k) => {
                out.extend_from_slice(b"get ");
                out.extend_from_slice(&self.data.keys[k]);
                out.extend_from_slice(b"\r\n");
            }
            Op::Set(k) => {
                out.extend_from_slice(b"set ");
                out.extend_from_slice(&self.data.keys[k]);
                out.extend_from_slice(SET_TAIL);
                out.extend_from_slice(self.data.value(k));
                out.extend_from_slice(b"\r\n");
            }
        }
        self.expect.push_back(op);
        true
    }

    fn reply(&mut self, input: &[u8]) -> Res<Option<usize>> {
        let Some(eol) = find_within(input, b"\r\n", 256, "reply line longer than 256 bytes")?
        else {
            return Ok(None);
        };
        let line = &input[..eol];
        let text = || String::from_utf8_lossy(line).into_owned();
        let op = *self.expect.front().ok_or("a reply nobody asked for")?;
        let used = match op {
            Op::Set(k) if line != b"STORED" => {
                return Err(format!("set of key {k} answered {:?}", text()));
            }
            Op::Set(_) => eol + 2,
            Op::Get(k) => {
                if line == b"END" {
                    return Err(format!("get of preloaded key {k} missed"));
                }
                let key = &self.data.keys[k];
                let ok = line.len() == 6 + key.len() + VALUE_TAIL.len()
                    && line.starts_with(b"VALUE ")
                    && &line[6..6 + key.len()] == key
                    && line.ends_with(VALUE_TAIL);
                if !ok {
                    return Err(format!("get of key {k} answered {:?}", text()));
                }
                let total = eol + 2 + VALUE_LEN + 7;
                if input.len() < total {
                    return Ok(None);
                }
                let body = &input[eol + 2..eol + 2 + VALUE_LEN];
                if body != self.data.value(k) || &input[total - 7..total] != b"\r\nEND\r\n" {
                    return Err(format!("get of key {k}: wrong value or no END"));
                }
                total
            }
        };
        self.expect.pop_front();
        Ok(Some(used))
    }
}

/// Preloads every key over `conns` connections, then runs the mix for
/// `secs`; returns operations per second. `run` drives a phase.
fn phases(
    data: &Arc<Data>,
    conns: usize,
    secs: f64,
    mut run: impl FnMut(Vec<CacheClient>, Option<Duration>) -> Res<f64>,
) -> Res<f64> {
    let pre = (0..conns)
        .map(|i| CacheClient::preload(data, i, conns))
        .collect();
    run(pre, None).map_err(|e| format!("preload: {e}"))?;
    let mix = (0..conns).map(|i| CacheClient::mix(data, i)).collect();
    run(mix, Some(Duration::from_secs_f64(secs)))
}

fn shm_run(data: &Arc<Data>, conns: usize, secs: f64) -> Res<f64> {
    let (lan, wan) = (unique("lan"), unique("wan"));
    let function = format!(
        "{{ kind = \"cache\", port = {PORT}, memory_limit = {}, connections = {}, backlog = 8 }}",
        256 << 20,
        conns + 8
    );
    let cache = DeviceToml::host("bench-cache", &lan, &wan, 2)
        .function(function)
        .parse()
        .map_err(|e| e.to_string())?;
    let (handle, thread) = NetDevice::new(&cache, SegmentKind::InProcess)
        .map_err(|e| e.to_string())?
        .spawn();
    let r = (|| {
        let mut s = settings("bench-a", 1, &lan, &wan, 1500)?;
        s.spec.sockets.tcp_buffer = CLIENT_BUFFER;
        let mut dev = NetDevice::new(&s, SegmentKind::InProcess).map_err(|e| e.to_string())?;
        let load = ShmLoad::connect(&mut dev, (IpAddress::v4(10, 0, 0, 2), PORT), conns)?;
        let r = phases(data, conns, secs, |protos, limit| {
            load.run(&mut dev, protos, DEPTH, limit).map(|o| o.rate())
        });
        load.close(&mut dev);
        r
    })();
    handle.stop();
    let _ = thread.join();
    r.map_err(|e| format!("shmnet: {e}"))
}

fn kernel_run(data: &Arc<Data>, conns: usize, secs: f64) -> Res<f64> {
    let port = free_port()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let args = [
        "-u",
        "root",
        "-U",
        "0",
        "-l",
        "127.0.0.1",
        "-t",
        "2",
        "-m",
        "256",
        "-c",
        "1024",
        "-p",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([port.to_string()])
    .collect::<Vec<_>>();
    let _memcached = Daemon::start("memcached", &args, addr)?;
    let mut load = KernelLoad::connect(addr, conns)?;
    phases(data, conns, secs, |protos, limit| {
        load.run(protos, DEPTH, limit).map(|o| o.rate())
    })
    .map_err(|e| format!("kernel: {e}"))
}

/// Runs the benchmark; a machine without `memcached` gets a `skipped`
/// line.
pub(super) fn bench_cache(args: LoadArgs, quick: bool, reps: usize) -> Res<String> {
    if let Some(skipped) = skipped_without("cache", "memcached") {
        return Ok(skipped);
    }
    let (conns, secs) = args.resolve(quick)?;
    let data = Data::new();
    measure(
        &format!("\"bench\":\"cache\",\"connections\":{conns},\"depth\":{DEPTH}"),
        "ops/s",
        &format!(
            ",\"seconds\":{secs},\"keys\":{KEYS},\"key\":64,\"value\":{VALUE_LEN},\"get_set\":\"9:1\""
        ),
        reps,
        || shm_run(&data, conns, secs),
        || kernel_run(&data, conns, secs),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply_to(op: Op, data: &Arc<Data>) -> CacheClient {
        let mut c = CacheClient::mix(data, 0);
        c.expect.push_back(op);
        c
    }

    #[test]
    fn a_hit_is_taken_whole_and_checked() {
        let data = Data::new();
        let key = String::from_utf8(data.keys[7].clone()).unwrap();
        let mut hit = format!("VALUE {key} 0 {VALUE_LEN}\r\n").into_bytes();
        hit.extend_from_slice(data.value(7));
        hit.extend_from_slice(b"\r\nEND\r\n");
        let mut c = reply_to(Op::Get(7), &data);
        assert_eq!(c.reply(&hit[..hit.len() - 1]), Ok(None));
        assert_eq!(c.reply(&hit), Ok(Some(hit.len())));
        // Another key's value, a miss and an error all fail the run.
        let mut wrong = hit.clone();
        wrong[hit.len() - 10] = b'!';
        assert!(reply_to(Op::Get(7), &data).reply(&wrong).is_err());
        assert!(reply_to(Op::Get(7), &data).reply(b"END\r\n").is_err());
        assert!(reply_to(Op::Get(8), &data).reply(&hit).is_err());
        assert!(
            reply_to(Op::Set(7), &data)
                .reply(b"SERVER_ERROR out of memory\r\n")
                .is_err()
        );
        assert_eq!(
            reply_to(Op::Set(7), &data).reply(b"STORED\r\n"),
            Ok(Some(8))
        );
    }

    #[test]
    fn the_tails_name_the_value_length() {
        assert_eq!(SET_TAIL, format!(" 0 0 {VALUE_LEN}\r\n").as_bytes());
        assert_eq!(VALUE_TAIL, format!(" 0 {VALUE_LEN}").as_bytes());
    }

    #[test]
    fn the_preload_sets_every_key_once() {
        let data = Data::new();
        let mut seen = vec![0u32; KEYS];
        for i in 0..32 {
            let mut c = CacheClient::preload(&data, i, 32);
            let mut out = Vec::new();
            while c.request(&mut out) {}
            for op in c.expect {
                let Op::Set(k) = op else {
                    panic!("a get in the preload")
                };
                seen[k] += 1;
            }
        }
        assert!(seen.iter().all(|&n| n == 1));
    }
}
