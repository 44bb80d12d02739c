//! A network function (`bench function`): its cost per packet of an
//! established flow, the bare library where there is one, and TCP
//! through a chain of devices running it.

use std::time::Instant;

use shmnet::testing::frames;
use smoltcp::wire::{IpAddress, TcpControl};

use super::chain::{chain_destination, chain_tcp};
use super::report::{list, median, num};
use super::{PORT, Res};

/// Functions `shmnet bench function` knows (and `--quick` runs).
pub(super) const FUNCTIONS_BENCHED: &[&str] = &[
    "firewall", "encrypt", "compress", "reroute", "balancer", "qos",
];

const K1: &str = "4c80cdefbb5d10da906ac73c3613a6342e443b68";
const K2: &str = "feffe9928665731c6d6a8f9467308308cafebabe";

/// The function configuration(s) of each benchmarked chain. Addresses
/// follow `chain_configs`: device k sits between 10.(10+k).0.254 and
/// 10.(11+k).0.1.
pub(super) fn chain_functions(name: &str) -> Res<Vec<String>> {
    Ok(match name {
        // Lets the client's connections out (and their replies back in).
        "firewall" => vec![
            "{ kind = \"firewall\", default = \"drop\", rule = [{ action = \"accept\", direction = \"out\", proto = \"tcp\", dport = 5000 }] }".into(),
        ],
        // An ESP tunnel over the hop between the two devices.
        "encrypt" => vec![
            format!(
                "{{ kind = \"encrypt\", local_address = \"10.11.0.1\", peer_address = \"10.11.0.254\", \
                 outbound = {{ spi = 0x1001, key = \"{K1}\" }}, inbound = [{{ spi = 0x2002, key = \"{K2}\" }}] }}"
            ),
            format!(
                "{{ kind = \"encrypt\", hop = \"local\", local_address = \"10.11.0.254\", peer_address = \"10.11.0.1\", \
                 outbound = {{ spi = 0x2002, key = \"{K2}\" }}, inbound = [{{ spi = 0x1001, key = \"{K1}\" }}] }}"
            ),
        ],
        // The server as the single backend behind a VIP on the server's
        // network; the balancer is the server's gateway (NAT mode).
        "balancer" => vec![format!(
            "{{ kind = \"balancer\", service = [{{ name = \"bench\", vip = \"10.11.0.100:{PORT}\", \
             backends = [\"10.11.0.2:{PORT}\"], check = \"none\" }}] }}"
        )],
        // A compressor/decompressor pair: the hop between them is compressed.
        "compress" => vec![
            "{ kind = \"compress\" }".into(),
            "{ kind = \"compress\", hop = \"local\" }".into(),
        ],
        // Two classes, one matched by DSCP; the bulk class's rate does not
        // limit (and its default queue holds the sender's window).
        "qos" => vec![
            "{ kind = \"qos\", default = \"bulk\", class = [{ name = \"voice\", dscp = [46] }, \
             { name = \"bulk\", rate = \"1000gbit\" }] }"
                .into(),
        ],
        // The client's connections to the server's port go to the server
        // (10.11.0.2, health-checked by ICMP) by a rule, not by the table.
        "reroute" => vec![
            "{ kind = \"reroute\", next_hop = [{ name = \"server\", address = \"10.11.0.2\" }], \
             rule = [{ name = \"bulk\", proto = \"tcp\", dport = 5000, via = [\"server\"] }] }".into(),
        ],
        other => {
            return Err(format!(
                "no benchmark for function {other:?}; known: {}",
                FUNCTIONS_BENCHED.join(", ")
            ));
        }
    })
}

/// Runs `f` on a fresh copy of `template` `rounds` times; returns ns per
/// call, less the copy (measured alone).
fn per_packet_ns(
    template: &[u8],
    rounds: usize,
    mut f: impl FnMut(&mut [u8]) -> Res<()>,
) -> Res<f64> {
    let mut buf = vec![0u8; 9014.max(template.len())];
    let t0 = Instant::now();
    for _ in 0..rounds {
        buf[..template.len()].copy_from_slice(std::hint::black_box(template));
    }
    let copy = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    for _ in 0..rounds {
        buf[..template.len()].copy_from_slice(std::hint::black_box(template));
        f(&mut buf)?;
    }
    Ok((t0.elapsed().as_secs_f64() - copy).max(0.0) / rounds as f64 * 1e9)
}

/// Text-like bytes (words from a small vocabulary): what compression
/// meets on real links, neither all zeros nor noise.
fn corpus(len: usize) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "the ",
        "device ",
        "packet ",
        "shared ",
        "memory ",
        "ring ",
        "stack ",
        "frame ",
        "of ",
        "and ",
        "to ",
        "network ",
        "function ",
        "a ",
        "is ",
        "with ",
        "in ",
        "buffer ",
        "port ",
        "segment ",
        "link ",
        "peer ",
        "router ",
        "chain ",
    ];
    let mut x = 0x2545_f491_u32;
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        out.extend_from_slice(WORDS[x as usize % WORDS.len()].as_bytes());
        if x.is_multiple_of(11) {
            out.extend_from_slice(format!("{} ", x % 1000).as_bytes());
        }
    }
    out.truncate(len);
    out
}

/// What `function_cost` measured: the cost per packet of a function on a
/// representative packet of an established flow, and the bare library
/// speed where there is one.
struct Cost {
    /// ns per 1400-byte packet of an established flow.
    ns: f64,
    /// The bare library's Gbit/s on the same data, where there is one.
    raw: Option<f64>,
    /// ns per packet with a 64-byte payload, for functions whose cost
    /// includes copying the packet (the decision without the copies).
    small_ns: Option<f64>,
}

fn function_cost(name: &str, data: &[u8], quick: bool) -> Res<Cost> {
    let cost = |ns: f64| Cost {
        ns,
        raw: None,
        small_ns: None,
    };
    use shmnet::functions::{Frame, Role, Verdict, build};
    let rounds = if quick { 20_000 } else { 200_000 };
    let client = (IpAddress::v4(10, 10, 0, 1), 49152);
    let server = (IpAddress::v4(10, 12, 0, 2), PORT);
    let data_packet = frames::tcp(client, server, TcpControl::Psh, true, &data[..1400]);
    let cfgs = chain_functions(name)?;
    let cfg: shmnet::functions::FunctionConfig = toml::from_str(&format!("f = {}", cfgs[0]))
        .map(
            |t: std::collections::HashMap<String, shmnet::functions::FunctionConfig>| {
                t["f"].clone()
            },
        )
        .map_err(|e| e.to_string())?;
    let mut func = build(&cfg).map_err(|e| e.to_string())?;
    let now = smoltcp::time::Instant::from_secs(1);
    // `buf` holds a packet of `len` bytes in a buffer as big as a jumbo
    // frame (room for functions that grow packets).
    let mut run = |buf: &mut [u8], len: usize, from: Role, want: &[Verdict]| -> Res<()> {
        let mut f = Frame::new(buf, len, shmnet::wire::LinkMedium::Ethernet);
        let v = func.on_ingress(now, from, &mut f);
        if want.contains(&v) {
            Ok(())
        } else {
            Err(format!(
                "{name}: unexpected verdict {v:?} on the sample packet"
            ))
        }
    };
    match name {
        "firewall" => {
            // Establish the flow, then time a data packet of it.
            for (frame, from) in [
                (
                    frames::tcp(client, server, TcpControl::Syn, false, &[]),
                    Role::Local,
                ),
                (
                    frames::tcp(server, client, TcpControl::Syn, true, &[]),
                    Role::Global,
                ),
                (
                    frames::tcp(client, server, TcpControl::None, true, &[]),
                    Role::Local,
                ),
            ] {
                run(&mut frame.clone(), frame.len(), from, &[Verdict::Pass])?;
            }
            let ns = per_packet_ns(&data_packet, rounds * 10, |b| {
                run(b, data_packet.len(), Role::Local, &[Verdict::Pass])
            })?;
            Ok(cost(ns))
        }
        "qos" => {
            // Classify + enqueue + dequeue of one data packet, then of a
            // small one (the same decision, next to nothing to copy).
            let mut out = vec![0u8; 9014];
            // Time moves on (1 us a packet) so the class's bucket refills.
            let mut t = now;
            let mut cycle = |packet: &[u8]| {
                let len = packet.len();
                per_packet_ns(packet, rounds * 10, |b| {
                    t += smoltcp::time::Duration::from_micros(1);
                    let now = t;
                    let v = func.on_ingress(
                        now,
                        Role::Local,
                        &mut Frame::new(b, len, shmnet::wire::LinkMedium::Ethernet),
                    );
                    if v != Verdict::Consumed {
                        return Err(format!("qos: unexpected verdict {v:?}"));
                    }
                    match func.poll_transmit(now, &mut out) {
                        Some(e) if e.len == len => Ok(()),
                        other => Err(format!("qos: released {other:?}")),
                    }
                })
            };
            let ns = cycle(&data_packet)?;
            let small = frames::tcp(client, server, TcpControl::Psh, true, &data[..64]);
            Ok(Cost {
                small_ns: Some(cycle(&small)?),
                ..cost(ns)
            })
        }
        "reroute" => {
            // A packet the rule sends to its next hop.
            let via = Verdict::Via(IpAddress::v4(10, 11, 0, 2));
            let ns = per_packet_ns(&data_packet, rounds * 10, |b| {
                run(b, data_packet.len(), Role::Local, &[via])
            })?;
            Ok(cost(ns))
        }
        "balancer" => {
            // A flow's SYN and the backend's SYN-ACK, then a data packet of
            // it to the VIP: flow lookup and DNAT, timed.
            let vip = (IpAddress::v4(10, 11, 0, 100), PORT);
            let backend = (IpAddress::v4(10, 11, 0, 2), PORT);
            for (frame, from) in [
                (
                    frames::tcp(client, vip, TcpControl::Syn, false, &[]),
                    Role::Local,
                ),
                (
                    frames::tcp(backend, client, TcpControl::Syn, true, &[]),
                    Role::Global,
                ),
            ] {
                run(&mut frame.clone(), frame.len(), from, &[Verdict::Modified])?;
            }
            let to_vip = frames::tcp(client, vip, TcpControl::Psh, true, &data[..1400]);
            let ns = per_packet_ns(&to_vip, rounds * 10, |b| {
                run(b, to_vip.len(), Role::Local, &[Verdict::Modified])
            })?;
            Ok(cost(ns))
        }
        "encrypt" | "compress" => {
            let ns = per_packet_ns(&data_packet, rounds, |b| {
                run(b, data_packet.len(), Role::Local, &[Verdict::Modified])
            })?;
            let block = 1400;
            let t0 = Instant::now();
            if name == "encrypt" {
                use aes_gcm::aead::{AeadInOut, KeyInit};
                let key: Vec<u8> = (0..16)
                    .map(|i| u8::from_str_radix(&K1[2 * i..2 * i + 2], 16).unwrap_or(0))
                    .collect();
                let cipher = aes_gcm::Aes128Gcm::new_from_slice(&key).map_err(|e| e.to_string())?;
                let mut buf = data[..block].to_vec();
                for i in 0..rounds as u64 {
                    let mut nonce = [0u8; 12];
                    nonce[4..].copy_from_slice(&i.to_be_bytes());
                    cipher
                        .encrypt_inout_detached(&nonce.into(), &[0u8; 8], (&mut buf[..]).into())
                        .map_err(|e| e.to_string())?;
                }
            } else {
                let mut table = lz4_flex::block::CompressTable::default();
                let mut out = vec![0u8; lz4_flex::block::get_maximum_output_size(block)];
                for i in 0..rounds {
                    let off = (i * block) % (data.len() - block);
                    let input = std::hint::black_box(&data[off..off + block]);
                    lz4_flex::block::compress_into_with_table(input, &mut out, &mut table)
                        .map_err(|e| e.to_string())?;
                }
            }
            let raw = rounds as f64 * block as f64 * 8.0 / t0.elapsed().as_secs_f64() / 1e9;
            Ok(Cost {
                raw: Some(raw),
                ..cost(ns)
            })
        }
        other => Err(format!("no benchmark for function {other:?}")),
    }
}

pub(super) fn bench_function(
    name: &str,
    bytes: Option<u64>,
    quick: bool,
    reps: usize,
) -> Res<String> {
    let functions = chain_functions(name)?;
    let chain: Vec<&str> = functions.iter().map(String::as_str).collect();
    let data = corpus(1 << 20);
    let bytes = bytes.unwrap_or(if quick { 16 << 20 } else { 256 << 20 });
    let Cost { ns, raw, small_ns } = function_cost(name, &data, quick)?;
    let mut runs = Vec::new();
    for _ in 0..reps {
        let secs = chain_tcp(&chain, chain_destination(name), &data, bytes)?;
        runs.push(bytes as f64 * 8.0 / secs / 1e9);
    }
    let gbps = median(&mut runs.clone());
    let mut line = format!(
        "{{\"bench\":\"function\",\"name\":\"{name}\",\"ns_per_packet\":{},\"gbps\":{},\"unit\":\"Gbit/s\",\"bytes\":{bytes},\"reps\":{reps},\"gbps_runs\":{}",
        num(ns),
        num(gbps),
        list(&runs)
    );
    if let Some(small) = small_ns {
        line.push_str(&format!(",\"ns_per_small_packet\":{}", num(small)));
    }
    if let Some(raw) = raw {
        // The function alone on one core, from its cost per 1400-byte packet.
        let alone = 1400.0 * 8.0 / ns.max(1e-9);
        line.push_str(&format!(
            ",\"raw_gbps\":{},\"ratio\":{},\"function_gbps\":{},\"function_ratio\":{}",
            num(raw),
            num(gbps / raw),
            num(alone),
            num(alone / raw)
        ));
    }
    line.push('}');
    Ok(line)
}
