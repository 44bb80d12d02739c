//! Routing decisions: which network a frame the stack sends goes to, and
//! where a forwarding device sends a transit packet.
//!
//! A device that does not forward knows only its local subnet: frames for
//! it (IP destination, ARP target, neighbour-solicitation target) or for a
//! static route's local gateway leave by the local adapter, everything else
//! by the global one (the default route). A forwarding device knows both
//! subnets, its static routes and gateways; a packet not for the device
//! itself is a [`Transit`]. The Router also knows each network's MTU, so it
//! says whether a frame fits and clamps the MSS of TCP SYNs crossing the
//! smaller network.
//!
//! ```
//! use shmnet::stack::{Role, Router};
//! let r = Router::new(smoltcp::phy::Medium::Ip, Some("10.0.0.1/24".parse().unwrap()), None, 1500, 1500);
//! let mut packet = [0u8; 20];
//! packet[..4].copy_from_slice(&[0x45, 0, 0, 20]);
//! packet[16..20].copy_from_slice(&[10, 0, 0, 9]);
//! assert_eq!(r.route(&r.parse(&packet), &packet), Role::Local);
//! assert!(r.fits(packet.len(), Role::Global));
//! ```

use smoltcp::phy::Medium;
use smoltcp::wire::{IpAddress, IpCidr, Ipv4Address, Ipv4Cidr, Ipv6Address, Ipv6Cidr};

use super::frame;
use crate::adapters::link_header_len;
use crate::stack::Role;
use crate::wire::{FrameView, LinkMedium};

/// Decides which network a frame belongs to.
#[derive(Debug, Clone)]
pub struct Router {
    medium: Medium,
    l2: usize,
    local_v4: Option<Ipv4Cidr>,
    local_v6: Option<Ipv6Cidr>,
    /// IP MTU of each network, by [`Role::index`].
    mtu: [usize; 2],
    /// Static routes: `(prefix, gateway)`.
    routes: Vec<(IpCidr, IpAddress)>,
    /// Set by [`Router::forwarding`]: this device routes transit packets.
    fwd: Option<Forwarding>,
    /// Set by [`Router::checksummed`]: frames carry computed checksums.
    checksums: bool,
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
    Forward {
        /// The network it leaves by.
        egress: Role,
        /// The neighbour it is sent to: a gateway, or its destination.
        next_hop: IpAddress,
    },
    /// No route to its destination.
    NoRoute,
    /// Its TTL / hop limit ran out.
    Expired,
}

impl Router {
    /// A router for a device on `medium` with these local subnets and the
    /// IP MTUs of its local and global networks.
    pub fn new(
        medium: impl Into<Medium>,
        local_v4: Option<Ipv4Cidr>,
        local_v6: Option<Ipv6Cidr>,
        local_mtu: usize,
        global_mtu: usize,
    ) -> Router {
        let medium = medium.into();
        Router {
            medium,
            l2: link_header_len(medium),
            local_v4,
            local_v6,
            mtu: [local_mtu, global_mtu],
            routes: Vec::new(),
            fwd: None,
            checksums: false,
        }
    }

    /// Makes the router forward packets not addressed to the device, with
    /// its hardware address, global subnets and gateways.
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

    /// Adds static routes `(prefix, gateway)`.
    pub fn with_routes(mut self, routes: Vec<(IpCidr, IpAddress)>) -> Router {
        self.routes = routes;
        self
    }

    /// Says that the device's stack fills in and verifies checksums
    /// (either network asks for them), so rewrites keep a checksum right
    /// even when it is 0 (see [`LinkInfo::checksums`]). Off (the default),
    /// a 0 means "left out" and stays so.
    ///
    /// [`LinkInfo::checksums`]: crate::stack::LinkInfo::checksums
    pub fn checksummed(mut self, on: bool) -> Router {
        self.checksums = on;
        self
    }

    /// Does the device's stack fill in and verify checksums?
    pub fn checksums(&self) -> bool {
        self.checksums
    }

    /// Does this device forward transit packets?
    pub fn forwards(&self) -> bool {
        self.fwd.is_some()
    }

    /// The device's link layer (Ethernet or bare IP).
    pub fn medium(&self) -> Medium {
        self.medium
    }

    /// The link header length (14 on Ethernet, 0 on the IP medium).
    pub fn link_header_len(&self) -> usize {
        self.l2
    }

    /// The device's own hardware address (forwarding devices only).
    pub(super) fn mac(&self) -> Option<[u8; 6]> {
        self.fwd.as_ref().map(|f| f.mac)
    }

    /// IP MTU of `role`'s network.
    pub fn mtu(&self, role: Role) -> usize {
        self.mtu[role.index()]
    }

    /// Does a frame of `len` bytes fit `role`'s network: is its IP packet
    /// at most the network's MTU?
    pub fn fits(&self, len: usize, role: Role) -> bool {
        len <= self.l2 + self.mtu(role)
    }

    /// The network a frame the stack sends goes to. Frames too short to
    /// tell go local.
    pub fn route(&self, view: &FrameView, frame: &[u8]) -> Role {
        match frame::route_address(view, frame) {
            Some(a) if !self.next_hop_is_local(&a) => Role::Global,
            _ => Role::Local,
        }
    }

    /// For a forwarding device: `None` if the frame is for the device
    /// itself (its addresses, broadcast, multicast, link-local, non-IP),
    /// else where it goes.
    pub fn transit(&self, view: &FrameView) -> Option<Transit> {
        let f = self.fwd.as_ref()?;
        let (dst, ttl) = frame::dst_ttl(view)?;
        if self.is_ours(f, &dst) {
            return None;
        }
        if ttl <= 1 {
            return Some(Transit::Expired);
        }
        if let Some(egress) = self.network_of(&dst) {
            return Some(Transit::Forward {
                egress,
                next_hop: dst,
            });
        }
        let via = self.static_route(&dst).or(f.gateway(&dst));
        Some(
            match via.and_then(|v| self.network_of(&v).map(|egress| (egress, v))) {
                Some((egress, next_hop)) => Transit::Forward { egress, next_hop },
                None => Transit::NoRoute,
            },
        )
    }

    /// Where a frame goes that a function sends to next hop `via`
    /// (`Verdict::Via`): like a transit frame, but to `via`.
    pub fn via(&self, view: &FrameView, via: IpAddress) -> Transit {
        match (&self.fwd, frame::dst_ttl(view)) {
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
    /// (`Verdict::Redirect`): to its destination if that is on the network,
    /// else to the gateway of a static route or the default route if that
    /// gateway is on the network.
    pub fn redirect(&self, view: &FrameView, role: Role) -> Transit {
        let (Some(f), Some((dst, ttl))) = (&self.fwd, frame::dst_ttl(view)) else {
            return Transit::NoRoute;
        };
        if ttl <= 1 {
            return Transit::Expired;
        }
        [Some(dst), self.static_route(&dst), f.gateway(&dst)]
            .into_iter()
            .flatten()
            .find(|hop| self.network_of(hop) == Some(role))
            .map_or(Transit::NoRoute, |next_hop| Transit::Forward {
                egress: role,
                next_hop,
            })
    }

    /// The network a next hop is on: its subnet's. A device that does not
    /// forward knows only its local subnet and sends everything else to the
    /// global network; a forwarding device knows both (else `None`).
    pub fn network_of(&self, a: &IpAddress) -> Option<Role> {
        let on_local = in_subnet(self.local_v4, self.local_v6, a);
        match &self.fwd {
            _ if on_local => Some(Role::Local),
            None => Some(Role::Global),
            Some(f) => in_subnet(f.global_v4, f.global_v6, a).then_some(Role::Global),
        }
    }

    /// Do the networks' MTUs differ (so TCP SYNs may need their MSS
    /// clamped)?
    pub fn clamps(&self) -> bool {
        self.mtu[0] != self.mtu[1]
    }

    /// Could [`Router::clamp_mss`] change this frame (a TCP SYN, and the
    /// networks' MTUs differ)?
    pub fn may_clamp(&self, view: &FrameView) -> bool {
        self.clamps() && frame::is_tcp_syn(view)
    }

    /// Clamps the MSS of a TCP SYN crossing `role`'s network if that network
    /// is the smaller one. Returns whether the frame changed.
    pub fn clamp_mss(&self, view: &FrameView, frame: &mut [u8], role: Role) -> bool {
        self.clamps() && frame::clamp_mss(view, frame, self.mtu(role), self.checksums)
    }

    /// The one parse of a frame of this device's medium (see
    /// [`crate::wire::ip`]); every decision above reads it.
    pub fn parse(&self, frame: &[u8]) -> FrameView {
        FrameView::parse(self.link_medium(), frame)
    }

    /// The medium as the wire layer names it.
    pub fn link_medium(&self) -> LinkMedium {
        LinkMedium::from_phy(self.medium)
    }

    /// Is `dst` the device itself (or everyone)?
    fn is_ours(&self, f: &Forwarding, dst: &IpAddress) -> bool {
        match *dst {
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
        }
    }

    /// Is the next hop towards `dst` on the local network? It is if `dst`
    /// is in the local subnet, or a static route sends it via a local
    /// gateway; everything else takes the default route (global).
    fn next_hop_is_local(&self, dst: &IpAddress) -> bool {
        let local = |a: &IpAddress| in_subnet(self.local_v4, self.local_v6, a);
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
}

impl Forwarding {
    /// The default gateway for `dst`'s IP version.
    fn gateway(&self, dst: &IpAddress) -> Option<IpAddress> {
        match dst {
            IpAddress::Ipv4(_) => self.gateway4.map(IpAddress::Ipv4),
            IpAddress::Ipv6(_) => self.gateway6.map(IpAddress::Ipv6),
        }
    }
}

/// Is `a` inside the subnet of its IP version?
fn in_subnet(v4: Option<Ipv4Cidr>, v6: Option<Ipv6Cidr>, a: &IpAddress) -> bool {
    match a {
        IpAddress::Ipv4(_) => v4.map(IpCidr::Ipv4),
        IpAddress::Ipv6(_) => v6.map(IpCidr::Ipv6),
    }
    .is_some_and(|c| c.contains_addr(a))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_by_destination() {
        let r = Router::new(
            Medium::Ethernet,
            Some(Ipv4Cidr::new(Ipv4Address::new(10, 0, 0, 0), 24)),
            None,
            1500,
            1500,
        );
        let mut f = vec![0u8; 14 + 20];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[16..18].copy_from_slice(&20u16.to_be_bytes());
        f[30..34].copy_from_slice(&[10, 0, 0, 9]);
        assert_eq!(r.route(&r.parse(&f), &f), Role::Local);
        f[30..34].copy_from_slice(&[10, 100, 0, 9]);
        assert_eq!(r.route(&r.parse(&f), &f), Role::Global);
        assert_eq!(r.route(&r.parse(&f[..5]), &f[..5]), Role::Local);
    }

    #[test]
    fn fits_is_exactly_the_ip_mtu() {
        let r = Router::new(Medium::Ethernet, None, None, 1500, 9000);
        assert!(r.fits(14 + 1500, Role::Local));
        assert!(!r.fits(14 + 1501, Role::Local));
        assert!(r.fits(14 + 9000, Role::Global));
        let r = Router::new(Medium::Ip, None, None, 576, 576);
        assert!(r.fits(576, Role::Global) && !r.fits(577, Role::Global));
    }
}
