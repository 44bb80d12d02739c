//! The device's interface system: one `phy::Device` that owns both adapters,
//! runs the function's hooks on every frame and routes each outgoing frame
//! to the local or the global adapter.
//!
//! Routing: a frame whose destination (IP destination; ARP target; NDP
//! target) lies in the local network's subnet leaves by the local adapter,
//! everything else by the global adapter (the default route). The Tx token
//! lends a buffer of the adapter the previous frame went to (flows are long,
//! so the guess is nearly always right); a wrong guess costs one copy.
//!
//! The two networks may have different MTUs while smoltcp has one: the NIC
//! advertises the larger one and clamps the MSS option of TCP SYNs crossing
//! the smaller network (in both directions), as routers do with
//! `--clamp-mss-to-pmtu`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use smoltcp::phy::{self, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use smoltcp::wire::{IpAddress, IpCidr, Ipv4Address, Ipv4Cidr, Ipv6Address, Ipv6Cidr};

use super::hook::{Frame, Function, Verdict};
use crate::adapters::{AdapterCore, GlobalAdapter, LocalAdapter, Received, Role, bump};
use crate::shm::LinkMedium;

/// Counters of the interface system.
#[derive(Debug, Default)]
pub struct NicCounters {
    pub routed_local: AtomicU64,
    pub routed_global: AtomicU64,
    /// Frames the function dropped on ingress / egress.
    pub ingress_dropped: AtomicU64,
    pub egress_dropped: AtomicU64,
    /// Frames the function took (answered, or holds to release later).
    pub consumed: AtomicU64,
    /// Frames the function sent elsewhere than the routing table would
    /// (`Verdict::Redirect` or `Verdict::Via`).
    pub redirected: AtomicU64,
    /// Frames larger than the network they were routed to (dropped).
    pub oversize: AtomicU64,
    /// TCP SYNs whose MSS was clamped to a smaller network.
    pub mss_clamped: AtomicU64,
    /// Transit packets forwarded (forwarding devices only).
    pub forwarded: AtomicU64,
    /// Transit packets dropped: no route, no known next hop, TTL ran out.
    pub no_route: AtomicU64,
    pub no_neighbour: AtomicU64,
    pub ttl_expired: AtomicU64,
    /// Frames received by either adapter / sent by the stack.
    pub frames_in: AtomicU64,
    pub frames_out: AtomicU64,
}

/// Decides which network a frame belongs to.
#[derive(Debug, Clone)]
pub struct Router {
    medium: LinkMedium,
    local_v4: Option<Ipv4Cidr>,
    local_v6: Option<Ipv6Cidr>,
    /// IP MTU of each network.
    local_mtu: usize,
    global_mtu: usize,
    /// Static routes: `(prefix, gateway)`.
    routes: Vec<(IpCidr, IpAddress)>,
    /// Set by [`Router::forwarding`]: this device routes transit packets.
    fwd: Option<Forwarding>,
}

/// What a forwarding device knows beyond its local subnet.
#[derive(Debug, Clone)]
struct Forwarding {
    mac: [u8; 6],
    global_v4: Option<Ipv4Cidr>,
    global_v6: Option<Ipv6Cidr>,
    gateway4: Option<Ipv4Address>,
    gateway6: Option<Ipv6Address>,
}

/// Where a transit packet goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transit {
    /// Out of this network's adapter, to this next hop.
    Forward { egress: Role, next_hop: IpAddress },
    /// No route to its destination.
    NoRoute,
    /// Its TTL / hop limit ran out.
    Expired,
}

impl Router {
    pub fn new(
        medium: LinkMedium,
        local_v4: Option<Ipv4Cidr>,
        local_v6: Option<Ipv6Cidr>,
        local_mtu: usize,
        global_mtu: usize,
    ) -> Router {
        Router {
            medium,
            local_v4,
            local_v6,
            local_mtu,
            global_mtu,
            routes: Vec::new(),
            fwd: None,
        }
    }

    /// Makes the router forward packets not addressed to the device, with
    /// its hardware address, global subnets, static routes and gateways.
    pub fn forwarding(
        mut self,
        mac: [u8; 6],
        global_v4: Option<Ipv4Cidr>,
        global_v6: Option<Ipv6Cidr>,
        gateway4: Option<Ipv4Address>,
        gateway6: Option<Ipv6Address>,
    ) -> Router {
        self.fwd = Some(Forwarding {
            mac,
            global_v4,
            global_v6,
            gateway4,
            gateway6,
        });
        self
    }

    /// Does this device forward transit packets?
    pub fn forwards(&self) -> bool {
        self.fwd.is_some()
    }

    /// For a forwarding device: `None` if the frame is for the device
    /// itself (its addresses, broadcast, multicast, link-local, non-IP),
    /// else where it goes.
    pub fn transit(&self, frame: &[u8]) -> Option<Transit> {
        let f = self.fwd.as_ref()?;
        let (dst, ttl) = self.dst_ttl(frame)?;
        let ours = match dst {
            IpAddress::Ipv4(d) => {
                let ours = |c: Option<Ipv4Cidr>| {
                    c.is_some_and(|c| c.address() == d || c.broadcast() == Some(d))
                };
                d.is_broadcast()
                    || d.is_multicast()
                    || d.is_unspecified()
                    || ours(self.local_v4)
                    || ours(f.global_v4)
            }
            IpAddress::Ipv6(d) => {
                let ours = |c: Option<Ipv6Cidr>| c.is_some_and(|c| c.address() == d);
                d.is_multicast()
                    || d.is_unspecified()
                    || d.is_unicast_link_local()
                    || ours(self.local_v6)
                    || ours(f.global_v6)
            }
        };
        if ours {
            return None;
        }
        if ttl <= 1 {
            return Some(Transit::Expired);
        }
        let on = |a: &IpAddress| self.network_of(a);
        if let Some(egress) = on(&dst) {
            return Some(Transit::Forward {
                egress,
                next_hop: dst,
            });
        }
        let via = self.static_route(&dst).or(match dst {
            IpAddress::Ipv4(_) => f.gateway4.map(IpAddress::Ipv4),
            IpAddress::Ipv6(_) => f.gateway6.map(IpAddress::Ipv6),
        });
        Some(match via.and_then(|v| on(&v).map(|egress| (egress, v))) {
            Some((egress, next_hop)) => Transit::Forward { egress, next_hop },
            None => Transit::NoRoute,
        })
    }

    /// The network a next hop is on: its subnet's. A device that does not
    /// forward knows only its local subnet and sends everything else to the
    /// global network; a forwarding device knows both (else `None`).
    pub fn network_of(&self, a: &IpAddress) -> Option<Role> {
        let on_local =
            cidr_for(self.local_v4, self.local_v6, a).is_some_and(|c| c.contains_addr(a));
        match &self.fwd {
            _ if on_local => Some(Role::Local),
            None => Some(Role::Global),
            Some(f) => cidr_for(f.global_v4, f.global_v6, a)
                .is_some_and(|c| c.contains_addr(a))
                .then_some(Role::Global),
        }
    }

    /// The destination and TTL / hop limit of the IP packet in a frame.
    fn dst_ttl(&self, frame: &[u8]) -> Option<(IpAddress, u8)> {
        let ip = self.ip_packet(frame)?;
        match ip.first()? >> 4 {
            4 => Some((
                IpAddress::Ipv4(Ipv4Address::from_octets(ip.get(16..20)?.try_into().ok()?)),
                ip[8],
            )),
            6 => Some((
                IpAddress::Ipv6(Ipv6Address::from_octets(ip.get(24..40)?.try_into().ok()?)),
                ip[7],
            )),
            _ => None,
        }
    }

    /// Where a frame goes that a function sends to next hop `via`
    /// ([`Verdict::Via`]): like a transit frame, but to `via`.
    pub fn via(&self, frame: &[u8], via: IpAddress) -> Transit {
        match (&self.fwd, self.dst_ttl(frame)) {
            (None, _) | (_, None) => Transit::NoRoute,
            (_, Some((_, ttl))) if ttl <= 1 => Transit::Expired,
            _ => match self.network_of(&via) {
                Some(egress) => Transit::Forward {
                    egress,
                    next_hop: via,
                },
                None => Transit::NoRoute,
            },
        }
    }

    /// Where a forwarded frame goes that a function sends to network `role`
    /// ([`Verdict::Redirect`]): to its destination if that is on the
    /// network, else to the gateway of a static route or the default route
    /// if that gateway is on the network.
    pub fn redirect(&self, frame: &[u8], role: Role) -> Transit {
        let (Some(f), Some((dst, ttl))) = (&self.fwd, self.dst_ttl(frame)) else {
            return Transit::NoRoute;
        };
        if ttl <= 1 {
            return Transit::Expired;
        }
        let default = match dst {
            IpAddress::Ipv4(_) => f.gateway4.map(IpAddress::Ipv4),
            IpAddress::Ipv6(_) => f.gateway6.map(IpAddress::Ipv6),
        };
        [Some(dst), self.static_route(&dst), default]
            .into_iter()
            .flatten()
            .find(|hop| self.network_of(hop) == Some(role))
            .map_or(Transit::NoRoute, |next_hop| Transit::Forward {
                egress: role,
                next_hop,
            })
    }

    /// The IP packet inside a frame, if it carries one.
    fn ip_packet<'a>(&self, frame: &'a [u8]) -> Option<&'a [u8]> {
        match self.medium {
            LinkMedium::Ethernet => match frame.get(12..14)? {
                [0x08, 0x00] | [0x86, 0xdd] => frame.get(14..),
                _ => None,
            },
            LinkMedium::Ip => Some(frame),
        }
    }

    /// Rewrites a frame copied for forwarding: link-layer addresses (Ethernet)
    /// and TTL / hop limit, fixing the IPv4 header checksum incrementally.
    pub fn rewrite_forwarded(&self, frame: &mut [u8], next_hop_mac: Option<[u8; 6]>) {
        let l2 = self.l2();
        if let (Some(f), Some(mac), true) = (&self.fwd, next_hop_mac, frame.len() >= 14 && l2 == 14)
        {
            frame[0..6].copy_from_slice(&mac);
            frame[6..12].copy_from_slice(&f.mac);
        }
        let Some(ip) = frame.get_mut(l2..) else {
            return;
        };
        match ip.first().map(|b| b >> 4) {
            Some(4) if ip.len() >= 20 => {
                let old = u16::from_be_bytes([ip[8], ip[9]]);
                ip[8] = ip[8].saturating_sub(1);
                let new = u16::from_be_bytes([ip[8], ip[9]]);
                let ck = u16::from_be_bytes([ip[10], ip[11]]);
                ip[10..12].copy_from_slice(&checksum_update(ck, old, new).to_be_bytes());
            }
            Some(6) if ip.len() >= 40 => ip[7] = ip[7].saturating_sub(1),
            _ => {}
        }
    }

    fn l2(&self) -> usize {
        match self.medium {
            LinkMedium::Ethernet => 14,
            LinkMedium::Ip => 0,
        }
    }

    /// The network a frame goes to. Frames too short to tell go local.
    pub fn route(&self, frame: &[u8]) -> Role {
        let local4 = |a: &[u8]| {
            let a = IpAddress::Ipv4(Ipv4Address::from_octets(a.try_into().unwrap_or([0; 4])));
            self.next_hop_is_local(&a)
        };
        let local6 = |a: &[u8]| {
            let a = IpAddress::Ipv6(Ipv6Address::from_octets(a.try_into().unwrap_or([0; 16])));
            self.next_hop_is_local(&a)
        };
        let pick = |is_local: bool| if is_local { Role::Local } else { Role::Global };
        let (ethertype, ip) = match self.medium {
            LinkMedium::Ethernet => match frame.get(12..14) {
                Some(t) => (u16::from_be_bytes([t[0], t[1]]), &frame[14..]),
                None => return Role::Local,
            },
            LinkMedium::Ip => match frame.first().map(|b| b >> 4) {
                Some(4) => (0x0800, frame),
                Some(6) => (0x86dd, frame),
                _ => return Role::Local,
            },
        };
        match ethertype {
            0x0800 => ip.get(16..20).map_or(Role::Local, |d| pick(local4(d))),
            // ARP: route by the target protocol address.
            0x0806 => ip.get(24..28).map_or(Role::Local, |t| pick(local4(t))),
            0x86dd => {
                let Some(dst) = ip.get(24..40) else {
                    return Role::Local;
                };
                if dst[0] == 0xff {
                    // Multicast: neighbour solicitations go where their
                    // target is; other multicast stays local.
                    if ip.get(6) == Some(&58) && ip.get(40) == Some(&135) {
                        return ip.get(48..64).map_or(Role::Local, |t| pick(local6(t)));
                    }
                    return Role::Local;
                }
                pick(local6(dst))
            }
            _ => Role::Local,
        }
    }

    /// Is the next hop towards `dst` on the local network? It is if `dst`
    /// is in the local subnet, or a static route sends it via a local
    /// gateway; everything else takes the default route (global).
    fn next_hop_is_local(&self, dst: &IpAddress) -> bool {
        let local = |a: &IpAddress| {
            cidr_for(self.local_v4, self.local_v6, a).is_some_and(|c| c.contains_addr(a))
        };
        local(dst) || self.static_route(dst).is_some_and(|via| local(&via))
    }

    /// The gateway of the longest static route covering `dst`.
    fn static_route(&self, dst: &IpAddress) -> Option<IpAddress> {
        self.routes
            .iter()
            .filter(|(c, _)| c.contains_addr(dst))
            .max_by_key(|(c, _)| c.prefix_len())
            .map(|(_, v)| *v)
    }

    /// Adds static routes `(prefix, gateway)`.
    pub fn with_routes(mut self, routes: Vec<(IpCidr, IpAddress)>) -> Router {
        self.routes = routes;
        self
    }

    fn mtu(&self, role: Role) -> usize {
        match role {
            Role::Local => self.local_mtu,
            Role::Global => self.global_mtu,
        }
    }

    /// Could `clamp_mss` change this frame (a TCP SYN, MTUs differ)?
    pub fn may_clamp(&self, frame: &[u8], _role: Role) -> bool {
        if self.local_mtu == self.global_mtu {
            return false;
        }
        let l2 = self.l2();
        let ip = frame.get(l2..).unwrap_or_default();
        let tcp = match ip.first().map(|b| b >> 4) {
            Some(4) if ip.get(9) == Some(&6) => ip.get((ip[0] & 0xf) as usize * 4..),
            Some(6) if ip.get(6) == Some(&6) => ip.get(40..),
            _ => None,
        };
        tcp.and_then(|t| t.get(13)).is_some_and(|f| f & 0x02 != 0)
    }

    /// Clamps the MSS of a TCP SYN crossing `role`'s network if that network
    /// is the smaller one. Returns whether the frame changed.
    pub fn clamp_mss(&self, frame: &mut [u8], role: Role) -> bool {
        if self.local_mtu == self.global_mtu {
            return false;
        }
        let mtu = self.mtu(role);
        let l2 = self.l2();
        if self.medium == LinkMedium::Ethernet {
            match frame.get(12..14) {
                Some([0x08, 0x00]) | Some([0x86, 0xdd]) => {}
                _ => return false,
            }
        }
        let Some(ip) = frame.get_mut(l2..) else {
            return false;
        };
        let (tcp_off, ip_hdr) = match ip.first().map(|b| b >> 4) {
            Some(4) if ip.len() >= 20 && ip[9] == 6 => ((ip[0] & 0xf) as usize * 4, 20),
            Some(6) if ip.len() >= 40 && ip[6] == 6 => (40, 40),
            _ => return false,
        };
        let max_mss = mtu.saturating_sub(ip_hdr + 20).min(u16::MAX as usize) as u16;
        clamp_tcp_mss(ip.get_mut(tcp_off..).unwrap_or_default(), max_mss)
    }
}

/// The subnet of `a`'s IP version, if the network has one.
fn cidr_for(v4: Option<Ipv4Cidr>, v6: Option<Ipv6Cidr>, a: &IpAddress) -> Option<IpCidr> {
    match a {
        IpAddress::Ipv4(_) => v4.map(IpCidr::Ipv4),
        IpAddress::Ipv6(_) => v6.map(IpCidr::Ipv6),
    }
}

/// RFC 1624 incremental checksum update for one 16-bit word `old` → `new`:
/// HC' = ~(~HC + ~m + m').
pub fn checksum_update(ck: u16, old: u16, new: u16) -> u16 {
    let mut sum = (!ck) as u32 + (!old) as u32 + new as u32;
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Lowers the MSS option of a TCP SYN segment to `max_mss`, fixing the
/// checksum incrementally (RFC 1624). Returns whether it changed anything.
pub fn clamp_tcp_mss(tcp: &mut [u8], max_mss: u16) -> bool {
    if tcp.len() < 20 || tcp[13] & 0x02 == 0 {
        return false;
    }
    let hdr = ((tcp[12] >> 4) as usize * 4).min(tcp.len());
    let mut i = 20;
    while i < hdr {
        match tcp[i] {
            0 => break,
            1 => i += 1,
            kind => {
                let Some(&len) = tcp.get(i + 1) else { break };
                let len = len as usize;
                if len < 2 || i + len > hdr {
                    break;
                }
                if kind == 2 && len == 4 {
                    let old = u16::from_be_bytes([tcp[i + 2], tcp[i + 3]]);
                    if old <= max_mss {
                        return false;
                    }
                    tcp[i + 2..i + 4].copy_from_slice(&max_mss.to_be_bytes());
                    let ck = u16::from_be_bytes([tcp[16], tcp[17]]);
                    if ck != 0 {
                        tcp[16..18]
                            .copy_from_slice(&checksum_update(ck, old, max_mss).to_be_bytes());
                    }
                    return true;
                }
                i += len;
            }
        }
    }
    false
}

/// An ARP reply from `mac`/`ip` to `my_mac`/`my_ip` (RFC 826).
fn arp_announcement(mac: &[u8; 6], ip: [u8; 4], my_mac: &[u8; 6], my_ip: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0u8; 42];
    f[0..6].copy_from_slice(my_mac);
    f[6..12].copy_from_slice(mac);
    f[12..14].copy_from_slice(&[0x08, 0x06]);
    // Ethernet, IPv4, 6-byte and 4-byte addresses, operation 2 (reply).
    f[14..22].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 2]);
    f[22..28].copy_from_slice(mac);
    f[28..32].copy_from_slice(&ip);
    f[32..38].copy_from_slice(my_mac);
    f[38..42].copy_from_slice(&my_ip);
    f
}

/// A neighbour advertisement (override, with the target link-layer
/// address) from `mac`/`ip` to `my_mac`/`my_ip` (RFC 4861).
fn ndp_announcement(mac: &[u8; 6], ip: [u8; 16], my_mac: &[u8; 6], my_ip: [u8; 16]) -> Vec<u8> {
    use smoltcp::wire::{
        EthernetAddress, Icmpv6Packet, Icmpv6Repr, IpProtocol, Ipv6Packet, Ipv6Repr,
        NdiscNeighborFlags, NdiscRepr, RawHardwareAddress,
    };
    let (src, dst) = (
        Ipv6Address::from_octets(ip),
        Ipv6Address::from_octets(my_ip),
    );
    let icmp = Icmpv6Repr::Ndisc(NdiscRepr::NeighborAdvert {
        flags: NdiscNeighborFlags::OVERRIDE,
        target_addr: src,
        lladdr: Some(RawHardwareAddress::from(EthernetAddress(*mac))),
    });
    let ip_repr = Ipv6Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: IpProtocol::Icmpv6,
        payload_len: icmp.buffer_len(),
        hop_limit: 255,
    };
    let mut f = vec![0u8; 14 + 40 + icmp.buffer_len()];
    f[0..6].copy_from_slice(my_mac);
    f[6..12].copy_from_slice(mac);
    f[12..14].copy_from_slice(&[0x86, 0xdd]);
    ip_repr.emit(&mut Ipv6Packet::new_unchecked(&mut f[14..54]));
    icmp.emit(
        &src,
        &dst,
        &mut Icmpv6Packet::new_unchecked(&mut f[54..]),
        &ChecksumCapabilities::default(),
    );
    f
}

/// Forwards a transit frame (see [`Router::transit`]): a copy goes out of
/// the egress adapter with new link-layer addresses and TTL.
fn forward(
    router: &Router,
    counters: &NicCounters,
    transit: Transit,
    frame: &[u8],
    local: &mut AdapterCore,
    global: &mut AdapterCore,
) {
    let (egress, next_hop) = match transit {
        Transit::Forward { egress, next_hop } => (egress, next_hop),
        Transit::NoRoute => return bump(&counters.no_route, 1),
        Transit::Expired => return bump(&counters.ttl_expired, 1),
    };
    let out = match egress {
        Role::Local => local,
        Role::Global => global,
    };
    let mac = match router.medium {
        LinkMedium::Ethernet => {
            let found = match next_hop {
                IpAddress::Ipv4(a) => out.mac_of(&a.octets()),
                IpAddress::Ipv6(a) => out.mac_of(&a.octets()),
            };
            match found {
                Some(m) => Some(m),
                None => return bump(&counters.no_neighbour, 1),
            }
        }
        LinkMedium::Ip => None,
    };
    match out.alloc() {
        Some(mut b) if frame.len() <= out.frame_size() => {
            let buf = &mut out.buffer_mut(&mut b)[..frame.len()];
            buf.copy_from_slice(frame);
            router.rewrite_forwarded(buf, mac);
            if router.clamp_mss(buf, egress) {
                bump(&counters.mss_clamped, 1);
            }
            out.commit(b, frame.len());
            bump(&counters.forwarded, 1);
        }
        Some(b) => {
            out.release(b);
            counters.oversize.fetch_add(1, Ordering::Relaxed);
        }
        None => {
            out.counters().tx_no_buffer.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The (local, global) cores, given the one a frame arrived on (`role`)
/// and the other.
fn by_role<'a>(
    role: Role,
    rx: &'a mut AdapterCore,
    other: &'a mut AdapterCore,
) -> (&'a mut AdapterCore, &'a mut AdapterCore) {
    match role {
        Role::Local => (rx, other),
        Role::Global => (other, rx),
    }
}

/// Sends a copy of `frame` out of `out`; counts it if it does not fit or no
/// buffer is free.
fn send_copy(out: &mut AdapterCore, frame: &[u8], counters: &NicCounters) {
    match out.alloc() {
        Some(mut b) if frame.len() <= out.frame_size() => {
            out.buffer_mut(&mut b)[..frame.len()].copy_from_slice(frame);
            out.commit(b, frame.len());
        }
        Some(b) => {
            out.release(b);
            counters.oversize.fetch_add(1, Ordering::Relaxed);
        }
        None => {
            out.counters().tx_no_buffer.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The Tx token lending `local` and `global` (adapter cores borrowed apart
/// from the rest of the NIC) with the NIC's function, router and counters.
macro_rules! tx_token {
    ($nic:ident, $local:expr, $global:expr) => {
        NicTxToken {
            local: $local,
            global: $global,
            function: $nic.function.as_mut(),
            router: &$nic.router,
            predicted: &mut $nic.predicted,
            counters: &$nic.counters,
            now: $nic.now,
        }
    };
}

/// The device's single smoltcp `phy::Device`.
pub struct Nic {
    pub(crate) local: LocalAdapter,
    pub(crate) global: GlobalAdapter,
    pub(crate) function: Box<dyn Function>,
    router: Router,
    now: Instant,
    turn: bool,
    predicted: Role,
    counters: Arc<NicCounters>,
    checksums: bool,
    /// Synthetic frames to hand the stack before real ones (neighbour
    /// announcements built from the segment directory).
    inject: std::collections::VecDeque<(Role, Vec<u8>)>,
    warm_gen: [Option<u32>; 2],
    warm_at: Instant,
    /// When a forwarding device last found an adapter without free buffers.
    stalled_since: Option<Instant>,
    /// Where the function writes the frames it releases (`poll_transmit`).
    held: Vec<u8>,
}

/// At most this many held frames are released per round, so a function's
/// backlog does not starve the adapters' receive side.
const HELD_PER_ROUND: usize = 64;

/// How long a forwarding device holds back ingress while an adapter has no
/// free transmit buffer.
const FORWARD_STALL_LIMIT: smoltcp::time::Duration = smoltcp::time::Duration::from_millis(200);

impl Nic {
    pub fn new(
        local: LocalAdapter,
        global: GlobalAdapter,
        function: Box<dyn Function>,
        router: Router,
        checksums: bool,
    ) -> Nic {
        Nic {
            local,
            global,
            function,
            router,
            now: Instant::ZERO,
            turn: false,
            predicted: Role::Local,
            counters: Arc::default(),
            checksums,
            inject: Default::default(),
            warm_gen: [None; 2],
            warm_at: Instant::ZERO,
            stalled_since: None,
            held: Vec::new(),
        }
    }

    /// Seeds smoltcp's neighbour cache with every peer the directories
    /// list, by handing the stack an unsolicited ARP reply (IPv4) and
    /// neighbour advertisement (IPv6) per peer, as if the peer had announced
    /// itself; neither makes the stack answer. Without this, the first
    /// packet to a new neighbour is dropped while ARP/NDP runs, and a dropped
    /// SYN costs TCP a 1 s retransmission. Re-done when ports change and
    /// every 30 s (entries live 60 s).
    fn warm_neighbours(&mut self, now: Instant) {
        if self.router.medium != LinkMedium::Ethernet {
            return;
        }
        let stale = now >= self.warm_at;
        for (i, role) in [Role::Local, Role::Global].into_iter().enumerate() {
            let port = match role {
                Role::Local => self.local.port(),
                Role::Global => self.global.port(),
            };
            let generation = port.port_generation();
            if !stale && self.warm_gen[i] == Some(generation) {
                continue;
            }
            self.warm_gen[i] = Some(generation);
            let seg = port.segment();
            let Some(me) = seg.peer(port.index()) else {
                continue;
            };
            for p in seg.peers() {
                if p.index == me.index || p.mac == me.mac {
                    continue;
                }
                if let (Some(theirs), Some(mine)) = (p.ipv4, me.ipv4) {
                    self.inject
                        .push_back((role, arp_announcement(&p.mac, theirs, &me.mac, mine)));
                }
                if let (Some(theirs), Some(mine)) = (p.ipv6, me.ipv6) {
                    self.inject
                        .push_back((role, ndp_announcement(&p.mac, theirs, &me.mac, mine)));
                }
            }
        }
        if stale {
            self.warm_at = now + smoltcp::time::Duration::from_secs(30);
        }
    }

    pub fn counters(&self) -> &Arc<NicCounters> {
        &self.counters
    }
    pub fn local(&self) -> &LocalAdapter {
        &self.local
    }
    pub fn global(&self) -> &GlobalAdapter {
        &self.global
    }
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// Starts a poll round at `now`.
    pub fn begin_round(&mut self, now: Instant) {
        self.now = now;
        self.warm_neighbours(now);
        self.local.begin_round();
        self.global.begin_round();
    }

    /// Can both adapters take a forwarded frame now?
    fn egress_ready(&mut self) -> bool {
        self.local.can_transmit() && self.global.can_transmit()
    }

    /// Sends the frames the function releases from its own queues
    /// ([`Function::poll_transmit`]) while both adapters can take one:
    /// transit frames are forwarded, frames for the device go to its stack.
    /// Returns whether any frame was released.
    pub fn release_held(&mut self) -> bool {
        let cap = self
            .local
            .core_mut()
            .frame_size()
            .max(self.global.core_mut().frame_size());
        if self.held.len() != cap {
            self.held = vec![0; cap];
        }
        let mut n = 0;
        while n < HELD_PER_ROUND && self.egress_ready() {
            let Some(emit) = self.function.poll_transmit(self.now, &mut self.held) else {
                break;
            };
            n += 1;
            let frame = &self.held[..emit.len.min(cap)];
            let transit = match emit.via {
                Some(via) => Some(self.router.via(frame, via)),
                None => self.router.transit(frame),
            };
            match transit {
                Some(t) => forward(
                    &self.router,
                    &self.counters,
                    t,
                    frame,
                    self.local.core_mut(),
                    self.global.core_mut(),
                ),
                None => self.inject.push_back((Role::Local, frame.to_vec())),
            }
        }
        n > 0
    }

    /// Pushes queued frames and wakes peers.
    pub fn flush(&mut self) {
        self.local.flush();
        self.global.flush();
    }

    /// Frames moved so far (for progress detection).
    pub fn frames_moved(&self) -> u64 {
        self.counters.frames_in.load(Ordering::Relaxed)
            + self.counters.frames_out.load(Ordering::Relaxed)
    }

    /// Sleeps until a peer rings either adapter's doorbell, or `timeout`.
    pub fn wait(&mut self, timeout: Option<std::time::Duration>) {
        let local = self.local.port_mut();
        let global = self.global.port_mut();
        crate::shm::wait_any(&mut [local, global], timeout);
    }
}

/// Ingress: a frame already processed by the function.
pub struct NicRxToken<'a> {
    frame: &'a [u8],
}

impl phy::RxToken for NicRxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.frame)
    }
}

/// Egress: lends a buffer of the predicted adapter, then hooks and routes.
pub struct NicTxToken<'a> {
    local: &'a mut AdapterCore,
    global: &'a mut AdapterCore,
    function: &'a mut dyn Function,
    router: &'a Router,
    predicted: &'a mut Role,
    counters: &'a NicCounters,
    now: Instant,
}

impl phy::TxToken for NicTxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let pred = *self.predicted;
        let (pc, oc) = match pred {
            Role::Local => (self.local, self.global),
            Role::Global => (self.global, self.local),
        };
        let scratch = |f: F, c: &AtomicU64| {
            c.fetch_add(1, Ordering::Relaxed);
            let mut s = vec![0u8; len];
            f(&mut s)
        };
        let Some(mut buf) = pc.alloc() else {
            pc.counters().tx_no_buffer.fetch_add(1, Ordering::Relaxed);
            let mut s = vec![0u8; len];
            return f(&mut s);
        };
        if len > pc.frame_size() {
            pc.release(buf);
            return scratch(f, &self.counters.oversize);
        }
        bump(&self.counters.frames_out, 1);
        let full = pc.buffer_mut(&mut buf);
        let r = f(&mut full[..len]);
        let mut frame = Frame::new(full, len, self.router.medium);
        let verdict = self.function.on_egress(self.now, &mut frame);
        let flen = frame.len();
        let route = match verdict {
            Verdict::Drop | Verdict::Consumed => {
                let c = if verdict == Verdict::Drop {
                    &self.counters.egress_dropped
                } else {
                    &self.counters.consumed
                };
                c.fetch_add(1, Ordering::Relaxed);
                pc.release(buf);
                return r;
            }
            Verdict::Redirect(role) => {
                self.counters.redirected.fetch_add(1, Ordering::Relaxed);
                role
            }
            Verdict::Via(via) => {
                let Some(role) = self.router.network_of(&via) else {
                    self.counters.no_route.fetch_add(1, Ordering::Relaxed);
                    pc.release(buf);
                    return r;
                };
                if self.router.medium == LinkMedium::Ethernet {
                    let core = if role == pred { &mut *pc } else { &mut *oc };
                    let mac = match via {
                        IpAddress::Ipv4(a) => core.mac_of(&a.octets()),
                        IpAddress::Ipv6(a) => core.mac_of(&a.octets()),
                    };
                    let Some(mac) = mac else {
                        self.counters.no_neighbour.fetch_add(1, Ordering::Relaxed);
                        pc.release(buf);
                        return r;
                    };
                    if flen >= 14 {
                        pc.buffer_mut(&mut buf)[0..6].copy_from_slice(&mac);
                    }
                }
                self.counters.redirected.fetch_add(1, Ordering::Relaxed);
                role
            }
            Verdict::Pass | Verdict::Modified => self.router.route(&full[..flen]),
        };
        let full = pc.buffer_mut(&mut buf);
        if self.router.clamp_mss(&mut full[..flen], route) {
            self.counters.mss_clamped.fetch_add(1, Ordering::Relaxed);
        }
        bump(
            match route {
                Role::Local => &self.counters.routed_local,
                Role::Global => &self.counters.routed_global,
            },
            1,
        );
        if route == pred {
            pc.commit(buf, flen);
        } else {
            *self.predicted = route;
            send_copy(oc, &pc.buffer_mut(&mut buf)[..flen], self.counters);
            pc.release(buf);
        }
        r
    }
}

impl phy::Device for Nic {
    type RxToken<'a> = NicRxToken<'a>;
    type TxToken<'a> = NicTxToken<'a>;

    fn receive(&mut self, _t: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        if let Some((role, frame)) = self.inject.pop_front() {
            // Reuse the adapter's receive buffer so the token borrows it.
            let (rx, local, global) = match role {
                Role::Local => {
                    let (rx, _, c) = self.local.parts();
                    (rx, c, self.global.core_mut())
                }
                Role::Global => {
                    let (rx, _, c) = self.global.parts();
                    (rx, self.local.core_mut(), c)
                }
            };
            if frame.len() > rx.len() {
                // A released frame bigger than this network's buffers.
                self.counters.oversize.fetch_add(1, Ordering::Relaxed);
                return Some((NicRxToken { frame: &[] }, tx_token!(self, local, global)));
            }
            rx[..frame.len()].copy_from_slice(&frame);
            return Some((
                NicRxToken {
                    frame: &rx[..frame.len()],
                },
                tx_token!(self, local, global),
            ));
        }
        if self.router.forwards() && !self.egress_ready() {
            // Back-pressure: leave transit frames in their rings until the
            // adapters have buffers again, rather than drop them. A stall
            // longer than FORWARD_STALL_LIMIT (two forwarders waiting on
            // each other) is broken by forwarding anyway, which may drop.
            let since = *self.stalled_since.get_or_insert(self.now);
            if self.now - since < FORWARD_STALL_LIMIT {
                return None;
            }
        } else {
            self.stalled_since = None;
        }
        let hooks = self.function.hooks_ingress();
        let mut from = None;
        for _ in 0..2 {
            self.turn = !self.turn;
            let role = if self.turn { Role::Local } else { Role::Global };
            let got = match role {
                Role::Local => self.local.recv_frame(hooks),
                Role::Global => self.global.recv_frame(hooks),
            };
            if let Some(got) = got {
                from = Some((role, got));
                break;
            }
        }
        let (role, got) = from?;
        bump(&self.counters.frames_in, 1);
        let (seg, rx, rx_core, other_core) = match role {
            Role::Local => {
                let (s, b, c) = self.local.split();
                (s, b, c, self.global.core_mut())
            }
            Role::Global => {
                let (s, b, c) = self.global.split();
                (s, b, c, self.local.core_mut())
            }
        };
        let len = match got {
            Received::Copied(len) => len,
            Received::InPlace(f) => {
                let bytes = seg.frame_bytes(&f);
                if let Some(t) = self.router.transit(bytes) {
                    let (local, global) = by_role(role, rx_core, other_core);
                    forward(&self.router, &self.counters, t, bytes, local, global);
                    return Some((NicRxToken { frame: &[] }, tx_token!(self, local, global)));
                }
                if !self.router.may_clamp(bytes, role) {
                    // Nothing to rewrite: the stack parses the sender's
                    // buffer directly.
                    let (local, global) = by_role(role, rx_core, other_core);
                    return Some((NicRxToken { frame: bytes }, tx_token!(self, local, global)));
                }
                rx[..bytes.len()].copy_from_slice(bytes);
                bytes.len()
            }
        };
        let mut frame = Frame::new(rx, len, self.router.medium);
        let verdict = self.function.on_ingress(self.now, role, &mut frame);
        let mut flen = frame.len();
        // Where the frame is forwarded to, if it leaves by the routing path.
        let transit = match verdict {
            Verdict::Pass | Verdict::Modified => {
                let t = self.router.transit(&rx[..flen]);
                if t.is_none() && self.router.clamp_mss(&mut rx[..flen], role) {
                    self.counters.mss_clamped.fetch_add(1, Ordering::Relaxed);
                }
                t
            }
            Verdict::Drop => {
                self.counters
                    .ingress_dropped
                    .fetch_add(1, Ordering::Relaxed);
                flen = 0;
                None
            }
            Verdict::Consumed => {
                self.counters.consumed.fetch_add(1, Ordering::Relaxed);
                flen = 0;
                None
            }
            Verdict::Via(via) => {
                self.counters.redirected.fetch_add(1, Ordering::Relaxed);
                Some(self.router.via(&rx[..flen], via))
            }
            // A forwarding device routes it: next hop, MAC and TTL.
            Verdict::Redirect(to) if self.router.forwards() => {
                self.counters.redirected.fetch_add(1, Ordering::Relaxed);
                Some(self.router.redirect(&rx[..flen], to))
            }
            Verdict::Redirect(to) => {
                self.counters.redirected.fetch_add(1, Ordering::Relaxed);
                let out: &mut AdapterCore = if to == role {
                    &mut *rx_core
                } else {
                    &mut *other_core
                };
                send_copy(out, &rx[..flen], &self.counters);
                flen = 0;
                None
            }
        };
        if let Some(t) = transit {
            let (local, global) = by_role(role, &mut *rx_core, &mut *other_core);
            forward(&self.router, &self.counters, t, &rx[..flen], local, global);
            flen = 0;
        }
        // An empty frame tells smoltcp "processed" without ending the
        // ingress loop (returning None would).
        let (local, global) = by_role(role, rx_core, other_core);
        Some((
            NicRxToken { frame: &rx[..flen] },
            tx_token!(self, local, global),
        ))
    }

    fn transmit(&mut self, _t: Instant) -> Option<Self::TxToken<'_>> {
        let ok = match self.predicted {
            Role::Local => self.local.can_transmit(),
            Role::Global => self.global.can_transmit(),
        };
        if !ok {
            let c = match self.predicted {
                Role::Local => self.local.counters(),
                Role::Global => self.global.counters(),
            };
            c.tx_backpressure.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(tx_token!(
            self,
            self.local.core_mut(),
            self.global.core_mut()
        ))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = match self.local.medium() {
            LinkMedium::Ethernet => Medium::Ethernet,
            LinkMedium::Ip => Medium::Ip,
        };
        caps.max_transmission_unit = self.local.frame_mtu().max(self.global.frame_mtu());
        let l = self.local.capabilities_burst();
        let g = self.global.capabilities_burst();
        caps.max_burst_size = match (l, g) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if !self.checksums {
            caps.checksum = ChecksumCapabilities::ignored();
        }
        caps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clamps_syn_mss_and_fixes_checksum() {
        // A TCP SYN header with MSS 65495 and a made-up checksum.
        let mut tcp = [0u8; 24];
        tcp[12] = 6 << 4;
        tcp[13] = 0x02;
        tcp[16..18].copy_from_slice(&0x1234u16.to_be_bytes());
        tcp[20..24].copy_from_slice(&[2, 4, 0xff, 0xd7]);
        assert!(clamp_tcp_mss(&mut tcp, 1460));
        assert_eq!(&tcp[20..24], &[2, 4, 0x05, 0xb4]);
        // One's-complement sum over the changed word balances out.
        let before = 0x1234u32 + 0xffd7;
        let after = u16::from_be_bytes([tcp[16], tcp[17]]) as u32 + 1460;
        let fold = |mut s: u32| {
            while s > 0xffff {
                s = (s & 0xffff) + (s >> 16)
            }
            s
        };
        assert_eq!(fold(before), fold(after));
        // Not a SYN, or already small: untouched.
        assert!(!clamp_tcp_mss(&mut tcp, 1460));
        tcp[13] = 0x10;
        assert!(!clamp_tcp_mss(&mut tcp, 536));
        // Truncated options never panic.
        assert!(!clamp_tcp_mss(&mut [0u8; 10], 536));
    }

    #[test]
    fn routes_by_destination() {
        let r = Router::new(
            LinkMedium::Ethernet,
            Some(Ipv4Cidr::new(Ipv4Address::new(10, 0, 0, 0), 24)),
            None,
            1500,
            1500,
        );
        let mut f = vec![0u8; 14 + 20];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[30..34].copy_from_slice(&[10, 0, 0, 9]);
        assert_eq!(r.route(&f), Role::Local);
        f[30..34].copy_from_slice(&[10, 100, 0, 9]);
        assert_eq!(r.route(&f), Role::Global);
        assert_eq!(r.route(&f[..5]), Role::Local);
    }
}
