//! The Nic over in-memory adapters: any [`Adapter`] plugs in, and the
//! receive path copies a forwarded frame once.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;
use smoltcp::phy::{Device as _, Medium, RxToken as _};
use smoltcp::time::Instant;
use smoltcp::wire::{Ipv4Address, Ipv4Cidr};

use super::{Nic, Router};
use crate::adapters::{
    Adapter, AdapterCounters, AdapterStats, InPlace, Neighbour, Remote, TxLease, Wake,
};
use crate::stack::hook::{Frame, Function, FunctionKind, Verdict};

/// Where buffers were, as addresses: received into, and sent from.
#[derive(Default)]
struct Trace {
    received_into: Vec<usize>,
    sent_from: Vec<usize>,
}

/// An adapter on the IP medium whose network is a queue in memory.
struct MemAdapter {
    inbox: VecDeque<Vec<u8>>,
    sent: Arc<Mutex<Vec<Vec<u8>>>>,
    bufs: Vec<Vec<u8>>,
    free: Vec<u32>,
    counters: AdapterCounters,
    trace: Arc<Mutex<Trace>>,
}

impl MemAdapter {
    fn new(trace: &Arc<Mutex<Trace>>) -> MemAdapter {
        MemAdapter {
            inbox: VecDeque::new(),
            sent: Arc::default(),
            bufs: vec![vec![0; 1536]; 16],
            free: (0..16).collect(),
            counters: AdapterCounters::default(),
            trace: Arc::clone(trace),
        }
    }
}

struct Silent;
impl Remote for Silent {
    fn stats(&self) -> AdapterStats {
        AdapterStats::default()
    }
    fn wake(&self) {}
}

impl Adapter for MemAdapter {
    fn medium(&self) -> Medium {
        Medium::Ip
    }
    fn ip_mtu(&self) -> usize {
        1500
    }
    fn frame_capacity(&self) -> usize {
        1536
    }
    fn can_lend(&mut self) -> bool {
        !self.free.is_empty()
    }
    fn lend(&mut self) -> Option<TxLease> {
        self.free.pop().map(TxLease::new)
    }
    fn buffer(&mut self, lease: &mut TxLease) -> &mut [u8] {
        &mut self.bufs[lease.slot() as usize]
    }
    fn commit(&mut self, lease: TxLease, len: usize) {
        let buf = &self.bufs[lease.slot() as usize];
        self.trace.lock().sent_from.push(buf.as_ptr() as usize);
        self.sent.lock().push(buf[..len].to_vec());
        self.free.push(lease.slot());
    }
    fn release(&mut self, lease: TxLease) {
        self.free.push(lease.slot());
    }
    fn recv_into(&mut self, dst: &mut [u8]) -> Option<usize> {
        let f = self.inbox.pop_front()?;
        dst[..f.len()].copy_from_slice(&f);
        self.trace.lock().received_into.push(dst.as_ptr() as usize);
        Some(f.len())
    }
    fn recv_in_place(&mut self) -> Option<InPlace> {
        None
    }
    fn flush(&mut self) {}
    fn prepare_sleep(&self) -> Wake<'_> {
        Wake::Ready
    }
    fn end_sleep(&self) {}
    fn remote(&self) -> Arc<dyn Remote> {
        Arc::new(Silent)
    }
    fn own_entry(&self) -> Neighbour {
        Neighbour::NOBODY
    }
    fn counters(&self) -> &AdapterCounters {
        &self.counters
    }
    fn describe(&self) -> String {
        "memory".into()
    }
}

/// A function that looks at every frame and lets it pass.
struct Look;
impl Function for Look {
    fn kind(&self) -> FunctionKind {
        FunctionKind::packet("look")
    }
    fn on_ingress(&mut self, _: Instant, _: crate::stack::Role, f: &mut Frame<'_>) -> Verdict {
        assert_eq!(f.len(), 100);
        Verdict::Pass
    }
}

/// A forwarding Nic between 10.0.0.0/24 (local) and 10.1.0.0/24 (global)
/// over two in-memory adapters, running `function`.
fn router(
    function: Box<dyn Function>,
    trace: &Arc<Mutex<Trace>>,
) -> (Nic, Arc<Mutex<Vec<Vec<u8>>>>) {
    let cidr = |a, b| Ipv4Cidr::new(Ipv4Address::new(10, a, 0, b), 24);
    let router = Router::new(Medium::Ip, Some(cidr(0, 254)), None, 1500, 1500).forwarding(
        [2, 0, 0, 0, 0, 1],
        Some(cidr(1, 254)),
        None,
        None,
        None,
    );
    let mut local = MemAdapter::new(trace);
    let global = MemAdapter::new(trace);
    let sent = Arc::clone(&global.sent);
    // A UDP-less IPv4 packet from 10.0.0.7 to 10.1.0.9, TTL 64.
    let mut p = vec![0u8; 100];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&100u16.to_be_bytes());
    p[8] = 64;
    p[9] = 253;
    p[12..16].copy_from_slice(&[10, 0, 0, 7]);
    p[16..20].copy_from_slice(&[10, 1, 0, 9]);
    local.inbox.push_back(p);
    let nic = Nic::new(Box::new(local), Box::new(global), function, router);
    (nic, sent)
}

#[test]
fn a_forwarded_frame_is_received_into_the_buffer_it_leaves_from() {
    /// Lets every frame through without looking (frames may stay in place).
    struct Blind;
    impl Function for Blind {
        fn kind(&self) -> FunctionKind {
            FunctionKind::socket("blind")
        }
    }
    let functions: [fn() -> Box<dyn Function>; 2] = [|| Box::new(Blind), || Box::new(Look)];
    for function in functions {
        let trace = Arc::default();
        let (mut nic, sent) = router(function(), &trace);
        let (rx, _tx) = nic.receive(Instant::ZERO).expect("a frame");
        // Forwarded, so nothing for the stack.
        assert!(rx.consume(|f| f.is_empty()));
        let sent = sent.lock();
        assert_eq!(sent.len(), 1);
        assert_eq!((sent[0].len(), sent[0][8]), (100, 63), "TTL decremented");
        // One copy: off the local network straight into the global
        // adapter's buffer, which is the one sent.
        let t = trace.lock();
        assert_eq!(t.received_into, t.sent_from);
        assert_eq!(nic.counters().snapshot().forwarded, 1);
    }
}
