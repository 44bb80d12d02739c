//! Services (a VIP:port and its backends) and their Maglev tables.

use std::net::{IpAddr, SocketAddr};

use smoltcp::iface::SocketHandle;
use smoltcp::wire::{IpAddress, IpEndpoint};

use super::maglev::{self, NONE, Permutation};
use crate::functions::common::counter_names;
use crate::functions::health::{Health, HealthCheck};
use crate::wire::FlowKey;

/// An address and port; IPv4 addresses live in the low 32 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct Endpoint {
    pub v6: bool,
    pub addr: u128,
    pub port: u16,
}

impl Endpoint {
    pub fn parse(s: &str) -> Option<Endpoint> {
        let a: SocketAddr = s.trim().parse().ok()?;
        Some(Endpoint::from(a))
    }

    fn ip(&self) -> IpAddr {
        if self.v6 {
            IpAddr::V6(self.addr.into())
        } else {
            IpAddr::V4((self.addr as u32).into())
        }
    }

    /// The address in network byte order, and its length (4 or 16).
    pub fn addr_bytes(&self) -> ([u8; 16], usize) {
        let mut a = [0u8; 16];
        if self.v6 {
            a = self.addr.to_be_bytes();
            (a, 16)
        } else {
            a[..4].copy_from_slice(&(self.addr as u32).to_be_bytes());
            (a, 4)
        }
    }

    /// The endpoint to connect to.
    pub fn to_smoltcp(self) -> IpEndpoint {
        IpEndpoint::new(IpAddress::from(self.ip()), self.port)
    }
}

impl From<SocketAddr> for Endpoint {
    fn from(a: SocketAddr) -> Endpoint {
        match a {
            SocketAddr::V4(a) => Endpoint {
                v6: false,
                addr: u128::from(u32::from(*a.ip())),
                port: a.port(),
            },
            SocketAddr::V6(a) => Endpoint {
                v6: true,
                addr: u128::from(*a.ip()),
                port: a.port(),
            },
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", SocketAddr::new(self.ip(), self.port))
    }
}

#[derive(Debug)]
pub(super) struct Backend {
    pub ep: Endpoint,
    pub health: Health,
    /// Maglev permutation of this backend for the service's table size.
    pub perm: Permutation,
    pub flows: u64,
    pub packets: u64,
    /// The health check's socket, opened at its first check.
    pub socket: Option<SocketHandle>,
}

impl Backend {
    pub fn new(ep: Endpoint, table_size: u32) -> Backend {
        Backend {
            ep,
            health: Health::new(true),
            perm: Permutation::of(&ep, table_size),
            flows: 0,
            packets: 0,
            socket: None,
        }
    }
}

#[derive(Debug)]
pub(super) struct Service {
    pub name: String,
    pub proto: u8,
    pub vip: Endpoint,
    /// `None`: the backends are not checked (always up).
    pub check: Option<HealthCheck>,
    pub flows: u64,
    pub packets: u64,
    pub no_backend: u64,
    /// `service.NAME.` + `flows`, `packets`, `no_backend`, `backends_up`.
    pub counters: [String; 4],
    pub backends: Vec<Backend>,
    pub table_size: u32,
    /// Maglev lookup table: backend indices, or all `NONE` without any
    /// healthy backend.
    pub table: Vec<u16>,
}

impl Service {
    pub fn new(
        name: String,
        proto: u8,
        vip: Endpoint,
        backends: Vec<Backend>,
        table_size: u32,
        check: Option<HealthCheck>,
    ) -> Service {
        let mut s = Service {
            counters: counter_names(
                "service",
                &name,
                ["flows", "packets", "no_backend", "backends_up"],
            ),
            name,
            proto,
            vip,
            check,
            backends,
            table_size,
            table: Vec::new(),
            flows: 0,
            packets: 0,
            no_backend: 0,
        };
        s.rebuild();
        s
    }

    /// Rebuilds the lookup table over the healthy backends, visited in
    /// endpoint order so that the table does not depend on list order.
    pub fn rebuild(&mut self) {
        let mut up: Vec<(Endpoint, u16, Permutation)> = self
            .backends
            .iter()
            .enumerate()
            .filter(|(_, b)| b.health.is_up())
            .map(|(i, b)| (b.ep, i as u16, b.perm))
            .collect();
        up.sort_unstable_by_key(|u| u.0);
        let perms: Vec<(u16, Permutation)> = up.iter().map(|u| (u.1, u.2)).collect();
        self.table = maglev::table(self.table_size, &perms);
    }

    /// The backend a new flow goes to, if any is up.
    pub fn lookup(&self, key: &FlowKey) -> Option<u16> {
        let h = maglev::flow_hash(key) % u64::from(self.table_size);
        let i = self.table[h as usize];
        (i != NONE).then_some(i)
    }

    pub fn backends_up(&self) -> usize {
        self.backends.iter().filter(|b| b.health.is_up()).count()
    }
}
