//! The NIC's output paths for functions: frames a function holds and
//! releases later (`poll_transmit`), and frames it sends to a next hop of
//! its choice (`Verdict::Via`), found through the device directory.

mod common;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use shmnet::functions::{Emit, Frame, Function, FunctionKind, Role, SocketContext, Verdict};
use shmnet::shm::SegmentKind;
use shmnet::stack::NetDevice;
use smoltcp::time::Instant;
use smoltcp::wire::{IpAddress, Ipv4Address};

fn is_ip(frame: &[u8]) -> bool {
    matches!(frame.get(12..14), Some([0x08, 0x00]) | Some([0x86, 0xdd]))
}

/// Holds every IP frame and releases them in order on later rounds: the
/// shape of a scheduler.
struct HoldAll {
    queue: VecDeque<Vec<u8>>,
    released: Arc<AtomicU64>,
}

impl Function for HoldAll {
    fn kind(&self) -> FunctionKind {
        FunctionKind::packet("hold-all")
    }
    fn on_ingress(&mut self, _now: Instant, _from: Role, frame: &mut Frame<'_>) -> Verdict {
        if !is_ip(frame.bytes()) {
            return Verdict::Pass;
        }
        self.queue.push_back(frame.bytes().to_vec());
        Verdict::Consumed
    }
    fn poll_transmit(&mut self, _now: Instant, buf: &mut [u8]) -> Option<Emit> {
        let f = self.queue.pop_front()?;
        buf[..f.len()].copy_from_slice(&f);
        self.released.fetch_add(1, Ordering::Relaxed);
        Some(Emit {
            len: f.len(),
            via: None,
        })
    }
    fn poll_at(&self) -> Option<Instant> {
        (!self.queue.is_empty()).then_some(Instant::ZERO)
    }
}

/// Sends every packet for 10.3.0.0/24 to the device named `x`, whose
/// address it looks up in the directory.
struct ViaDevice {
    next_hop: Option<IpAddress>,
}

impl Function for ViaDevice {
    fn kind(&self) -> FunctionKind {
        FunctionKind::packet("via-device")
    }
    fn poll(&mut self, cx: &mut SocketContext<'_>) -> bool {
        if self.next_hop.is_none() {
            self.next_hop = cx
                .devices
                .device_addresses("x")
                .into_iter()
                .find(|a| matches!(a, IpAddress::Ipv4(v) if v.octets()[..3] == [10, 2, 0]));
        }
        false
    }
    fn on_ingress(&mut self, _now: Instant, _from: Role, frame: &mut Frame<'_>) -> Verdict {
        let b = frame.bytes();
        match (b.get(12..14), b.get(30..33), self.next_hop) {
            (Some([0x08, 0x00]), Some([10, 3, 0]), Some(via)) => Verdict::Via(via),
            _ => Verdict::Pass,
        }
    }
}

fn spawn_with(
    cfg: &shmnet::config::DeviceSettings,
    f: Box<dyn Function>,
) -> (
    shmnet::stack::DeviceHandle,
    std::thread::JoinHandle<NetDevice>,
) {
    let mut d = NetDevice::new(cfg, SegmentKind::InProcess).unwrap();
    d.replace_function(f);
    d.spawn()
}

/// client ─lan─ holder ─srv─ server: every packet waits in the function's
/// queue before it is forwarded, and TCP and UDP still arrive intact.
#[test]
fn held_frames_are_released_and_forwarded_intact() {
    let (lan, srv) = (unique("lan"), unique("srv"));
    let client = probe_client(&lan, "10.1.0.1", "10.3.0.2", "10.1.0.254", 2097152).settings();
    let holder = DeviceToml::new("holder", (&lan, "10.1.0.254/24"), (&srv, "10.3.0.254/24"))
        .forward()
        .settings();
    let server = echo_server(&srv, "10.3.0.2", "10.1.0.1", "10.3.0.254").settings();
    let released = Arc::new(AtomicU64::new(0));
    let (sh, st) = spawn(&server);
    let (hh, ht) = spawn_with(
        &holder,
        Box::new(HoldAll {
            queue: VecDeque::new(),
            released: Arc::clone(&released),
        }),
    );
    probe_intact(&client, 2, Duration::from_secs(60));
    let h = hh.stats();
    // Both directions of the 2 MiB exchange went through the queue.
    assert!(
        released.load(Ordering::Relaxed) > 2 * 2097152 / 1500,
        "{h:?}"
    );
    assert!(
        h.nic.consumed >= released.load(Ordering::Relaxed) - 64,
        "{h:?}"
    );
    assert_eq!(
        h.nic.no_route + h.nic.no_neighbour + h.nic.oversize,
        0,
        "{h:?}"
    );
    stop_all([(hh, ht), (sh, st)]);
}

/// client ─lan─ r ═core═ x ─srv─ server, where r has no route to srv: its
/// function sends those packets via x, found by name.
#[test]
fn via_sends_transit_to_a_next_hop_found_by_device_name() {
    let (lan, core, srv) = (unique("lan"), unique("core"), unique("srv"));
    let client = probe_client(&lan, "10.1.0.1", "10.3.0.2", "10.1.0.254", 1048576).settings();
    let r = DeviceToml::new("r", (&lan, "10.1.0.254/24"), (&core, "10.2.0.1/24"))
        .forward()
        .settings();
    let x = DeviceToml::new("x", (&core, "10.2.0.2/24"), (&srv, "10.3.0.254/24"))
        .forward()
        .route("10.1.0.0/24", "10.2.0.1")
        .settings();
    let server = echo_server(&srv, "10.3.0.2", "10.1.0.1", "10.3.0.254").settings();
    let (sh, st) = spawn(&server);
    let (xh, xt) = spawn(&x);
    let (rh, rt) = spawn_with(&r, Box::new(ViaDevice { next_hop: None }));
    // The client starts once r has found x in its directory.
    std::thread::sleep(Duration::from_millis(50));
    probe_intact(&client, 2, Duration::from_secs(60));
    let s = rh.stats();
    assert!(s.nic.redirected > 1048576 / 1500, "{s:?}");
    assert_eq!(s.nic.no_route + s.nic.no_neighbour, 0, "{s:?}");
    assert!(xh.stats().nic.forwarded > 2 * 1048576 / 1500);
    stop_all([(rh, rt), (xh, xt), (sh, st)]);
}

/// A next hop on neither of the device's networks is a counted drop; a
/// redirect to a network goes to the destination if it is on it.
#[test]
fn via_to_an_unreachable_next_hop_is_a_counted_drop() {
    let router = shmnet::stack::Router::new(
        shmnet::shm::LinkMedium::Ethernet,
        Some("10.1.0.254/24".parse().unwrap()),
        None,
        1500,
        1500,
    )
    .forwarding(
        [2, 0, 0, 0, 0, 1],
        Some("10.2.0.1/24".parse().unwrap()),
        None,
        None,
        None,
    );
    let mut frame = vec![0u8; 14 + 20];
    frame[12..14].copy_from_slice(&[0x08, 0x00]);
    frame[14..18].copy_from_slice(&[0x45, 0, 0, 20]);
    frame[14 + 8] = 64;
    let far = IpAddress::Ipv4(Ipv4Address::new(192, 0, 2, 1));
    assert_eq!(
        router.via(&router.parse(&frame), far),
        shmnet::stack::nic::Transit::NoRoute
    );
    let near = IpAddress::Ipv4(Ipv4Address::new(10, 2, 0, 7));
    assert_eq!(
        router.via(&router.parse(&frame), near),
        shmnet::stack::nic::Transit::Forward {
            egress: Role::Global,
            next_hop: near
        }
    );
    // Redirected to the global network: no gateway there, no route.
    frame[14 + 16..14 + 20].copy_from_slice(&[192, 0, 2, 1]);
    assert_eq!(
        router.redirect(&router.parse(&frame), Role::Global),
        shmnet::stack::nic::Transit::NoRoute
    );
    // A destination on the global network is its own next hop.
    frame[14 + 16..14 + 20].copy_from_slice(&[10, 2, 0, 7]);
    assert_eq!(
        router.redirect(&router.parse(&frame), Role::Global),
        shmnet::stack::nic::Transit::Forward {
            egress: Role::Global,
            next_hop: near
        }
    );
    frame[14 + 8] = 1;
    assert_eq!(
        router.via(&router.parse(&frame), near),
        shmnet::stack::nic::Transit::Expired
    );
}
