use super::maglev::{self, NONE, Permutation};
use super::service::Endpoint;
use super::*;
use crate::functions::FunctionConfig;
use crate::testing::frames::{self, arp, ep, garbled, udp};
use crate::testing::function::{self, config_error, counter, counters_are};
use crate::wire::LinkMedium;
use smoltcp::wire::{
    IpAddress, Ipv4Address, Ipv4Packet, Ipv6Address, Ipv6Packet, TcpControl, TcpPacket, UdpPacket,
};

fn tcp(src: (IpAddress, u16), dst: (IpAddress, u16), control: TcpControl) -> Vec<u8> {
    let ack = control != TcpControl::Syn;
    frames::tcp(src, dst, control, ack, b"hello, backend")
}

const CLIENT: Ipv4Address = Ipv4Address::new(10, 11, 0, 1);
const VIP: Ipv4Address = Ipv4Address::new(10, 20, 0, 100);
const BALANCER: Ipv4Address = Ipv4Address::new(10, 12, 0, 254);

fn backend(i: u8) -> Ipv4Address {
    Ipv4Address::new(10, 12, 0, 2 + i)
}

fn t(ms: u64) -> Instant {
    Instant::from_millis(1_000_000 + ms as i64)
}

fn balancer(text: &str) -> Balancer {
    function::build(text, Balancer::new)
}

/// One TCP service on VIP:7 over `n` backends 10.12.0.2.. port 7, and a
/// UDP one on VIP:53 over the same hosts, port 53.
fn config(n: u8, extra: &str) -> String {
    let list = |port: u16| {
        (0..n)
            .map(|i| format!("\"{}:{port}\"", backend(i)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "{extra}\n[[service]]\nname = \"web\"\nvip = \"{VIP}:7\"\nbackends = [{}]\n\
         table_size = 65537\n\
         [[service]]\nname = \"dns\"\nvip = \"{VIP}:53\"\nproto = \"udp\"\nbackends = [{}]\n\
         table_size = 251\n",
        list(7),
        list(53)
    )
}

/// Runs `on_ingress` on a copy; returns the verdict and the frame after.
fn ingress(lb: &mut Balancer, now: Instant, from: Role, bytes: &[u8]) -> (Verdict, Vec<u8>) {
    ingress_on(LinkMedium::Ethernet, lb, now, from, bytes)
}

fn ingress_on(
    medium: LinkMedium,
    lb: &mut Balancer,
    now: Instant,
    from: Role,
    bytes: &[u8],
) -> (Verdict, Vec<u8>) {
    function::ingress(lb, now, from, medium, bytes)
}

/// The backend a client's packet was sent to (its new destination).
fn dnat_target(lb: &mut Balancer, now: Instant, frame: &[u8]) -> Option<Ipv4Address> {
    match ingress(lb, now, Role::Local, frame) {
        (Verdict::Modified, out) => Some(Ipv4Packet::new_unchecked(&out[14..]).dst_addr()),
        _ => None,
    }
}

fn perms(n: usize, m: u32) -> Vec<(u16, Permutation)> {
    (0..n)
        .map(|i| {
            let ep = Endpoint::parse(&format!("10.12.{}.{}:80", i / 200, i % 200 + 2)).unwrap();
            (i as u16, Permutation::of(&ep, m))
        })
        .collect()
}

#[test]
fn maglev_gives_every_backend_its_share() {
    for n in [1, 2, 3, 7, 10, 100] {
        let table = maglev::table(65537, &perms(n, 65537));
        let mut share = vec![0usize; n];
        for e in &table {
            share[usize::from(*e)] += 1;
        }
        let (lo, hi) = (share.iter().min().unwrap(), share.iter().max().unwrap());
        // Turn-taking: everyone holds ⌊M/N⌋ or ⌈M/N⌉ entries.
        assert!(hi - lo <= 1, "n {n}: {lo}..{hi}");
        assert_eq!(share.iter().sum::<usize>(), 65537);
    }
    assert!(maglev::table(7, &[]).iter().all(|&e| e == NONE));
}

#[test]
fn maglev_moves_few_entries_when_a_backend_comes_or_goes() {
    let m = 65537;
    let all = perms(11, m);
    let ten = maglev::table(m, &all[..10]);
    let eleven = maglev::table(m, &all);
    // Adding one of 11: it takes ~1/11 of the table; entries moving
    // between the old ten are few.
    let to_new = eleven.iter().filter(|&&e| e == 10).count();
    let shuffled = ten
        .iter()
        .zip(&eleven)
        .filter(|(a, b)| a != b && **b != 10)
        .count();
    assert!((5900..6000).contains(&to_new), "{to_new}");
    assert!(
        shuffled < m as usize / 50,
        "{shuffled} entries moved between old backends"
    );
    // Removing backend 3 of ten: its entries must move, others mostly stay.
    let without: Vec<_> = all[..10].iter().filter(|p| p.0 != 3).copied().collect();
    let nine = maglev::table(m, &without);
    let moved = ten
        .iter()
        .zip(&nine)
        .filter(|(a, b)| a != b && **a != 3)
        .count();
    assert!(nine.iter().all(|&e| e != 3));
    assert!(
        moved < m as usize / 50,
        "{moved} entries of healthy backends moved"
    );
}

#[test]
fn nat_rewrite_matches_packets_built_from_scratch() {
    let mut lb = balancer(&config(3, ""));
    let c = ep(CLIENT, 40001);
    for control in [TcpControl::Syn, TcpControl::Psh, TcpControl::Fin] {
        let (v, out) = ingress(&mut lb, t(0), Role::Local, &tcp(c, ep(VIP, 7), control));
        assert_eq!(v, Verdict::Modified);
        let be = Ipv4Packet::new_unchecked(&out[14..]).dst_addr();
        // Byte for byte what the client would have sent to the backend,
        // checksums included.
        assert_eq!(out, tcp(c, ep(be, 7), control), "{control:?}");
        // The reply comes back from the VIP.
        let (v, back) = ingress(&mut lb, t(0), Role::Global, &tcp(ep(be, 7), c, control));
        assert_eq!(v, Verdict::Modified);
        assert_eq!(back, tcp(ep(VIP, 7), c, control));
    }
    // UDP, with and without a checksum.
    let c = ep(CLIENT, 5353);
    let q = udp(c, ep(VIP, 53), b"query");
    let (v, out) = ingress(&mut lb, t(0), Role::Local, &q);
    assert_eq!(v, Verdict::Modified);
    let be = Ipv4Packet::new_unchecked(&out[14..]).dst_addr();
    assert_eq!(out, udp(c, ep(be, 53), b"query"));
    let ip = Ipv4Packet::new_unchecked(&out[14..]);
    assert!(ip.verify_checksum());
    let u = UdpPacket::new_unchecked(ip.payload());
    assert!(u.verify_checksum(&ip.src_addr().into(), &ip.dst_addr().into()));
    let mut none = q.clone();
    none[14 + 20 + 6..14 + 20 + 8].fill(0);
    let (v, out) = ingress(&mut lb, t(0), Role::Local, &none);
    assert_eq!(v, Verdict::Modified);
    assert_eq!(&out[14 + 20 + 6..14 + 20 + 8], &[0, 0]);
    assert!(Ipv4Packet::new_unchecked(&out[14..]).verify_checksum());
}

/// An IPv6 service `[vip]:443` over `[b1]:8443` and `[b2]:8443`, and a
/// client address: `(balancer, [vip, b1, b2, client])`.
fn v6_service() -> (Balancer, [Ipv6Address; 4]) {
    let vip = Ipv6Address::new(0xfd00, 20, 0, 0, 0, 0, 0, 0x100);
    let b1 = Ipv6Address::new(0xfd00, 12, 0, 0, 0, 0, 0, 2);
    let b2 = Ipv6Address::new(0xfd00, 12, 0, 0, 0, 0, 0, 3);
    let client = Ipv6Address::new(0xfd00, 11, 0, 0, 0, 0, 0, 1);
    let lb = balancer(&format!(
        "[[service]]\nname = \"v6\"\nvip = \"[{vip}]:443\"\nbackends = [\"[{b1}]:8443\", \"[{b2}]:8443\"]\n\
         check = \"none\"\ntable_size = 1009\n"
    ));
    (lb, [vip, b1, b2, client])
}

#[test]
fn ipv6_services_rewrite_too() {
    let (mut lb, [vip, b1, b2, client]) = v6_service();
    let c = ep(client, 50000);
    let (v, out) = ingress(
        &mut lb,
        t(0),
        Role::Local,
        &tcp(c, ep(vip, 443), TcpControl::Syn),
    );
    assert_eq!(v, Verdict::Modified);
    let be = Ipv6Packet::new_unchecked(&out[14..]).dst_addr();
    assert!(be == b1 || be == b2);
    assert_eq!(out, tcp(c, ep(be, 8443), TcpControl::Syn));
    let (v, back) = ingress(&mut lb, t(0), Role::Global, &udp(ep(be, 8443), c, b"x"));
    assert_eq!(v, Verdict::Pass, "a UDP packet is not the TCP flow's reply");
    assert_eq!(back, udp(ep(be, 8443), c, b"x"));
    let (v, back) = ingress(
        &mut lb,
        t(0),
        Role::Global,
        &tcp(ep(be, 8443), c, TcpControl::Syn),
    );
    assert_eq!(v, Verdict::Modified);
    assert_eq!(back, tcp(ep(vip, 443), c, TcpControl::Syn));
}

/// `frame` (Ethernet + IPv6) with an 8-byte destination-options header
/// (one PadN option) between the IPv6 header and the transport header.
fn with_destination_options(frame: &[u8]) -> Vec<u8> {
    let mut f = frame.to_vec();
    let next = f[14 + 6];
    f[14 + 6] = 60;
    let plen = u16::from_be_bytes([f[14 + 4], f[14 + 5]]) + 8;
    f[14 + 4..14 + 6].copy_from_slice(&plen.to_be_bytes());
    f.splice(54..54, [next, 0, 1, 4, 0, 0, 0, 0]);
    f
}

/// The TCP checksum of an Ethernet + IPv6 + 8-byte extension header frame.
fn tcp_checksum_ok(frame: &[u8]) -> bool {
    let ip = Ipv6Packet::new_unchecked(&frame[14..]);
    let (src, dst) = (
        IpAddress::Ipv6(ip.src_addr()),
        IpAddress::Ipv6(ip.dst_addr()),
    );
    TcpPacket::new_checked(&frame[14 + 48..]).is_ok_and(|t| t.verify_checksum(&src, &dst))
}

#[test]
fn ipv6_extension_headers_are_walked_and_rewritten_behind() {
    let (mut lb, [vip, b1, b2, client]) = v6_service();
    let c = ep(client, 50001);
    let syn = with_destination_options(&tcp(c, ep(vip, 443), TcpControl::Syn));
    assert!(tcp_checksum_ok(&syn));
    let (v, out) = ingress(&mut lb, t(0), Role::Local, &syn);
    assert_eq!(v, Verdict::Modified);
    let be = Ipv6Packet::new_unchecked(&out[14..]).dst_addr();
    assert!(be == b1 || be == b2, "{be}");
    // Byte for byte what the client would have sent to the backend: the
    // options header untouched, the TCP port and checksum rewritten.
    let expected = tcp(c, ep(be, 8443), TcpControl::Syn);
    assert_eq!(out, with_destination_options(&expected));
    assert!(tcp_checksum_ok(&out));
    assert_eq!(counter(&lb, "flows_created"), 1);
    // The same flow without the header finds the same entry.
    let data = tcp(c, ep(vip, 443), TcpControl::Psh);
    let (v, out) = ingress(&mut lb, t(1), Role::Local, &data);
    assert_eq!(v, Verdict::Modified);
    assert_eq!(out, tcp(c, ep(be, 8443), TcpControl::Psh));
    // The reply, with its own options header, comes back from the VIP.
    let reply = with_destination_options(&tcp(ep(be, 8443), c, TcpControl::Psh));
    let (v, back) = ingress(&mut lb, t(2), Role::Global, &reply);
    assert_eq!(v, Verdict::Modified);
    assert_eq!(
        back,
        with_destination_options(&tcp(ep(vip, 443), c, TcpControl::Psh))
    );
    assert!(tcp_checksum_ok(&back));
    counters_are(&lb, &[("flows_created", 1), ("malformed", 0)]);
}

#[test]
fn every_balancer_builds_the_same_table() {
    // Fixed seeds: another process (or a restarted one) agrees on the
    // table and on where a flow goes.
    let (a, b) = (balancer(&config(5, "")), balancer(&config(5, "")));
    assert_eq!(a.services[0].table, b.services[0].table);
    let ep = Endpoint::parse("10.12.0.2:7").unwrap();
    assert_eq!(Permutation::of(&ep, 65537), a.services[0].backends[0].perm);
    // Offsets and skips are not tied to each other (CRC-32's were).
    let ps: Vec<Permutation> = (0..200u8)
        .map(|i| {
            let ep = Endpoint::parse(&format!("10.12.0.{i}:80")).unwrap();
            Permutation::of(&ep, 65537)
        })
        .collect();
    let distinct = |f: fn(&Permutation) -> i64| {
        let mut d: Vec<i64> = ps.iter().map(f).collect();
        d.sort_unstable();
        d.dedup();
        d.len()
    };
    assert!(distinct(|p| i64::from(p.skip) - i64::from(p.offset)) > 190);
    assert!(distinct(|p| i64::from(p.skip)) > 190);
}

#[test]
fn flows_expire_with_virtual_time() {
    let mut lb = balancer(&config(
        3,
        "udp_timeout = \"30s\"\ntcp_timeout = \"60s\"\ntcp_closing_timeout = \"2s\"",
    ));
    let c = ep(CLIENT, 5000);
    let q = udp(c, ep(VIP, 53), b"q");
    let be = dnat_target(&mut lb, t(0), &q).unwrap();
    let reply = udp(ep(be, 53), c, b"a");
    // A backend's packet at `ms`: rewritten while its flow lives.
    let back = |lb: &mut Balancer, ms, f: &[u8]| ingress(lb, t(ms), Role::Global, f).0;
    // Each packet refreshes the idle timer.
    assert_eq!(back(&mut lb, 29_000, &reply), Verdict::Modified);
    assert_eq!(back(&mut lb, 58_000, &reply), Verdict::Modified);
    assert_eq!(lb.flows_active(), 1);
    // 30 s of silence: gone, the reply is no longer rewritten.
    assert_eq!(back(&mut lb, 88_001, &reply), Verdict::Pass);
    assert_eq!(counter(&lb, "expired"), 1);
    assert_eq!(lb.flows_active(), 0);
    // TCP: idle timeout, and a short linger after FIN.
    let c = ep(CLIENT, 40000);
    let be = dnat_target(&mut lb, t(100_000), &tcp(c, ep(VIP, 7), TcpControl::Syn)).unwrap();
    let data = tcp(ep(be, 7), c, TcpControl::Psh);
    assert_eq!(back(&mut lb, 159_000, &data), Verdict::Modified);
    let fin = tcp(c, ep(VIP, 7), TcpControl::Fin);
    assert_eq!(dnat_target(&mut lb, t(160_000), &fin), Some(be));
    assert_eq!(back(&mut lb, 161_500, &data), Verdict::Modified);
    assert_eq!(back(&mut lb, 164_000, &data), Verdict::Pass);
    // A sweep removes what nobody touched.
    dnat_target(
        &mut lb,
        t(200_000),
        &tcp(ep(CLIENT, 1), ep(VIP, 7), TcpControl::Syn),
    );
    dnat_target(&mut lb, t(200_000), &udp(ep(CLIENT, 2), ep(VIP, 53), b"q"));
    assert_eq!(lb.flows_active(), 2);
    lb.sweep(t(231_000));
    assert_eq!(lb.flows_active(), 1);
    lb.sweep(t(261_000));
    assert_eq!(lb.flows_active(), 0);
    assert_eq!(counter(&lb, "expired"), 4);
}

#[test]
fn flows_spread_and_keep_their_backend_when_one_is_added() {
    let mut lb = balancer(&config(3, ""));
    let syn = |port| tcp(ep(CLIENT, port), ep(VIP, 7), TcpControl::Syn);
    let before: Vec<_> = (0..600)
        .map(|p| dnat_target(&mut lb, t(0), &syn(30000 + p)).unwrap())
        .collect();
    for i in 0..3 {
        let n = counter(&lb, &format!("backend.{}:7.flows", backend(i)));
        assert!((150..250).contains(&n), "backend {i}: {n} of 600 flows");
    }
    let cfg: BalancerConfig = toml::from_str(&config(4, "")).unwrap();
    assert!(lb.reconfigure(&FunctionConfig::Balancer(cfg)).unwrap());
    assert_eq!(lb.flows_active(), 600);
    // Established flows stay where they were, also for data packets.
    for (p, be) in before.iter().enumerate() {
        let data = tcp(ep(CLIENT, 30000 + p as u16), ep(VIP, 7), TcpControl::Psh);
        assert_eq!(dnat_target(&mut lb, t(1), &data), Some(*be));
    }
    // New flows reach the new backend too.
    let fresh: Vec<_> = (0..400)
        .map(|p| dnat_target(&mut lb, t(2), &syn(50000 + p)).unwrap())
        .collect();
    let on_new = fresh.iter().filter(|&&b| b == backend(3)).count();
    assert!(
        (60..140).contains(&on_new),
        "{on_new} of 400 on the new backend"
    );
    // Counters survive the reconfiguration.
    let total: u64 = (0..4)
        .map(|i| counter(&lb, &format!("backend.{}:7.flows", backend(i))))
        .sum();
    assert_eq!(total, 1000);
    // Removing a backend drops only its flows.
    let cfg: BalancerConfig = toml::from_str(&config(3, "")).unwrap();
    assert!(lb.reconfigure(&FunctionConfig::Balancer(cfg)).unwrap());
    assert_eq!(lb.flows_active(), 1000 - on_new);
}

#[test]
fn a_backend_down_loses_its_flows_others_keep_theirs() {
    let mut lb = balancer(&config(3, ""));
    let pkt = |port| tcp(ep(CLIENT, port), ep(VIP, 7), TcpControl::Psh);
    let before: Vec<_> = (0..300)
        .map(|p| dnat_target(&mut lb, t(0), &pkt(p + 1)).unwrap())
        .collect();
    lb.set_backend_up(0, 1, false);
    assert_eq!(counter(&lb, "health_changes"), 1);
    assert_eq!(counter(&lb, &format!("backend.{}:7.up", backend(1))), 0);
    assert_eq!(counter(&lb, "service.web.backends_up"), 2);
    for (p, was) in before.iter().enumerate() {
        let now = dnat_target(&mut lb, t(1), &pkt(p as u16 + 1)).unwrap();
        assert_ne!(now, backend(1));
        if *was != backend(1) {
            assert_eq!(now, *was);
        }
    }
    // All down: nothing to send new flows to.
    lb.set_backend_up(0, 0, false);
    lb.set_backend_up(0, 2, false);
    let syn = tcp(ep(CLIENT, 9999), ep(VIP, 7), TcpControl::Syn);
    assert_eq!(ingress(&mut lb, t(2), Role::Local, &syn).0, Verdict::Drop);
    counters_are(&lb, &[("no_backend", 1), ("service.web.no_backend", 1)]);
    lb.set_backend_up(0, 1, true);
    assert_eq!(dnat_target(&mut lb, t(3), &syn), Some(backend(1)));
}

#[test]
fn full_table_refuses_new_flows_and_counts_them() {
    let mut lb = balancer(&config(3, "max_flows = 2\nudp_timeout = \"10s\""));
    let q = |port| udp(ep(CLIENT, port), ep(VIP, 53), b"q");
    assert!(dnat_target(&mut lb, t(0), &q(1)).is_some());
    assert!(dnat_target(&mut lb, t(0), &q(2)).is_some());
    assert_eq!(ingress(&mut lb, t(0), Role::Local, &q(3)).0, Verdict::Drop);
    assert_eq!(counter(&lb, "table_full"), 1);
    // Existing flows still work; once they expire there is room again.
    assert!(dnat_target(&mut lb, t(5_000), &q(1)).is_some());
    assert!(dnat_target(&mut lb, t(12_000), &q(3)).is_some());
    assert_eq!(counter(&lb, "flows_active"), 2);
}

#[test]
fn other_traffic_passes_untouched() {
    let mut lb = balancer(&config(3, ""));
    // A health check's reply is addressed to the balancer itself.
    let check = tcp(ep(backend(0), 7), ep(BALANCER, 40000), TcpControl::Syn);
    assert_eq!(
        ingress(&mut lb, t(0), Role::Global, &check),
        (Verdict::Pass, check)
    );
    // Another port of the VIP, another protocol, a non-IP frame.
    let other = tcp(ep(CLIENT, 1), ep(VIP, 8), TcpControl::Syn);
    assert_eq!(ingress(&mut lb, t(0), Role::Local, &other).0, Verdict::Pass);
    let udp7 = udp(ep(CLIENT, 1), ep(VIP, 7), b"x");
    assert_eq!(ingress(&mut lb, t(0), Role::Local, &udp7).0, Verdict::Pass);
    assert_eq!(ingress(&mut lb, t(0), Role::Local, &arp()).0, Verdict::Pass);
    // A fragment to a VIP cannot be balanced.
    let mut frag = udp(ep(CLIENT, 1), ep(VIP, 53), b"x");
    frag[14 + 6] = 0x20;
    assert_eq!(ingress(&mut lb, t(0), Role::Local, &frag).0, Verdict::Drop);
    assert_eq!(counter(&lb, "fragments_dropped"), 1);
    assert_eq!(lb.flows_active(), 0);
}

#[test]
fn truncated_and_garbage_frames_never_panic() {
    let frames = [
        tcp(ep(CLIENT, 1), ep(VIP, 7), TcpControl::Syn),
        udp(ep(CLIENT, 1), ep(VIP, 53), b"datagram"),
        tcp(ep(backend(0), 7), ep(CLIENT, 1), TcpControl::Psh),
    ];
    for medium in [LinkMedium::Ethernet, LinkMedium::Ip] {
        let mut lb = balancer(&config(3, ""));
        for f in &frames {
            let f = &f[14 - medium.header_len()..];
            for len in 0..f.len() {
                let (v, out) = ingress_on(medium, &mut lb, t(0), Role::Local, &f[..len]);
                assert!(
                    matches!(v, Verdict::Drop | Verdict::Pass),
                    "len {len}: {v:?}"
                );
                assert_eq!(out, &f[..len]);
            }
        }
        assert!(counter(&lb, "malformed") > 0);
    }
    let mut lb = balancer(&config(3, "max_flows = 64"));
    for (i, f) in garbled(&frames, 20_000) {
        let from = if i % 2 == 0 {
            Role::Local
        } else {
            Role::Global
        };
        let (v, out) = ingress(&mut lb, t(i), from, &f);
        if v == Verdict::Modified {
            assert_eq!(out.len(), f.len());
        }
        assert!(lb.flows_active() <= 64);
    }
}

#[test]
fn config_errors_name_the_problem() {
    let err = |text: &str| config_error(text, Balancer::new);
    let svc = |body: &str| format!("[[service]]\nname = \"s\"\nvip = \"10.0.0.1:80\"\n{body}");
    for (body, names) in [
        ("table_size = 65536", "prime"),
        (
            "table_size = 2\nbackends = [\"10.0.1.1:80\", \"10.0.1.2:80\"]",
            "exceed",
        ),
        ("backends = [\"10.0.1.1\"]", "not ip:port"),
        ("backends = [\"[fd00::1]:80\"]", "IP version"),
        ("backends = [\"10.0.1.1:80\", \"10.0.1.1:80\"]", "twice"),
        ("timeout = \"0s\"", "service \"s\": timeout"),
        ("fall = 0", "service \"s\": fall"),
        ("proto = \"sctp\"", "proto"),
        ("proto = \"icmp\"", "\"tcp\" or \"udp\""),
    ] {
        let e = err(&svc(body));
        assert!(e.contains(names), "{body}: {e}");
    }
    // Durations are read by the parser (its message shows the line).
    let e = toml::from_str::<BalancerConfig>(&svc("interval = \"fast\""))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("interval") && e.contains("not a duration"),
        "{e}"
    );
    // Unchecked backends need no check parameters.
    assert!(Balancer::new(toml::from_str(&svc("check = \"none\"\nfall = 0")).unwrap()).is_ok());
    assert!(err("[[service]]\nname = \"s\"\nvip = \"10.0.0.1\"").contains("vip"));
    assert!(err(&format!("{}\n{}", svc(""), svc(""))).contains("name"));
    assert!(err("udp_timeout = \"0s\"").contains("udp_timeout"));
    assert!(toml::from_str::<BalancerConfig>("udp_timeout = \"5 parsecs\"").is_err());
    assert!(err("max_flows = 0").contains("max_flows"));
    let parse = |text: &str| toml::from_str::<FunctionConfig>(text);
    assert!(parse("kind = \"balancer\"\nflows = 3").is_err());
    assert!(parse(&format!("kind = \"balancer\"\n{}", svc("check = \"http\""))).is_err());
    let ok = parse(&format!(
        "kind = \"balancer\"\n{}",
        svc("backends = [\"10.0.1.1:80\"]")
    ))
    .expect("valid");
    assert!(super::super::build(&ok).is_ok());
    // A refused reconfiguration keeps the running configuration.
    let mut lb = balancer(&config(3, ""));
    let bad: BalancerConfig = toml::from_str(&svc("table_size = 100")).unwrap();
    let e = lb
        .reconfigure(&FunctionConfig::Balancer(bad))
        .unwrap_err()
        .to_string();
    assert!(e.contains("table_size 100"), "{e}");
    assert_eq!(lb.table_share(0).len(), 3);
}

#[test]
fn backend_checks_left_unconfigured_take_the_defaults() {
    // 1 s between checks, 500 ms to connect, 3 failures down, 2 up.
    let lb = balancer(&config(1, ""));
    let c = lb.services[0].check.expect("a TCP service is checked");
    assert_eq!(
        (c.interval, c.timeout, c.fall, c.rise),
        (Duration::from_secs(1), Duration::from_millis(500), 3, 2)
    );
    // The UDP service is not checked unless asked to.
    assert_eq!(lb.services[1].check, None);
}
