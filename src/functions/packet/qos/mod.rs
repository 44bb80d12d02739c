//! QoS: classify, shape and schedule the packets a forwarding device carries.
//!
//! The model is Linux `tc` with HTB-style shaping under a priority / DRR
//! scheduler:
//!
//! - **Classes.** Every IP packet is put into the first class whose match
//!   criteria it meets — DSCP (RFC 2474: the upper six bits of the IPv4 TOS
//!   / IPv6 traffic class byte), IP protocol, source and destination
//!   prefixes (IPv4 or IPv6), TCP/UDP source and destination ports or port
//!   ranges — or into the `default` class. A class with no criteria matches
//!   everything. Non-first fragments carry no ports: classes with port
//!   criteria do not match them.
//! - **Shaping.** A class with a `rate` has a token bucket (`rate`, `burst`):
//!   its packets wait in the class queue until the bucket holds enough
//!   tokens. The optional top-level `rate` shapes the whole link the same
//!   way, which is when scheduling between classes matters. A packet larger
//!   than the burst leaves once the bucket is full (the bucket then goes
//!   negative), so any frame size works with any burst.
//! - **Scheduling.** Strict priority between priority levels (0 is the
//!   highest); within a level, deficit round robin (DRR, Shreedhar and
//!   Varghese) with a quantum proportional to the class `weight`. A class
//!   takes part when it has packets and its bucket allows its head packet,
//!   so a backlogged but rate-limited high-priority class never blocks the
//!   lower levels (HTB's behaviour, not `tc prio`'s).
//! - **Over limit.** Each class queue holds at most `queue` bytes. With
//!   `over_limit = "drop"` a packet that does not fit is dropped (tail
//!   drop). With `"mark"`, ECN-capable packets (ECT(0) or ECT(1), RFC 3168)
//!   arriving while the queue holds `mark_at` bytes or more are marked
//!   Congestion Experienced (the IPv4 header checksum is updated
//!   incrementally, RFC 1624); packets are dropped only when the queue is
//!   full.
//!
//! Byte counts (rates, bursts, queues, counters) are of frames as they
//! cross the device's networks, like `tc`'s (the Ethernet header is
//! counted, a preamble or FCS is not).
//!
//! Direction: a frame arriving from the local network is `out`, one from
//! the global network `in` (the firewall's convention). Each direction is
//! its own link with its own queues, buckets and link rate; `direction`
//! chooses which are scheduled (default both), frames of the other pass
//! unqueued. ARP, IPv6 neighbour discovery and MLD, and any non-IP frame
//! pass unqueued; a malformed or truncated IP frame (see
//! [`crate::wire::ip`]) is a counted drop. The device's own frames are not
//! shaped (a QoS device forwards; its stack barely talks).
//!
//! Mechanics: [`Function::on_ingress`] reads the frame's parsed view,
//! copies each scheduled frame into its class queue (a byte ring allocated
//! once per class, so steady state allocates nothing) and returns
//! [`Verdict::Consumed`]; [`Function::poll_transmit`] releases frames in
//! scheduler order, and [`Function::poll_at`] says when the next
//! backlogged class will have enough tokens. [`Qos::reconfigure`] changes
//! rates, weights and sizes in place and keeps the queued frames.
//!
//! The parts: `config` (schema and validation), `classify` (what is
//! scheduled, class matching, ECN marking), `queue` (the byte rings),
//! `scheduler` (token buckets, priority levels, DRR).
//!
//! ```
//! use shmnet::functions::qos::{Qos, QosConfig};
//! use shmnet::functions::{Frame, Function, Role, Verdict};
//! use shmnet::wire::LinkMedium;
//! use smoltcp::time::Instant;
//! let cfg: QosConfig = toml::from_str(r#"
//!     default = "bulk"
//!     rate = "100mbit"
//!     [[class]]
//!     name = "voice"
//!     priority = 0
//!     dscp = [46]
//!     [[class]]
//!     name = "bulk"
//!     priority = 1
//!     rate = "40mbit"
//! "#).unwrap();
//! let mut qos = Qos::new(cfg).unwrap();
//! // An Ethernet + IPv4 + UDP frame with DSCP EF (46) is queued in "voice".
//! let mut frame = [0u8; 14 + 28];
//! frame[12..14].copy_from_slice(&[0x08, 0x00]);
//! frame[14..18].copy_from_slice(&[0x45, 46 << 2, 0, 28]);
//! frame[14 + 9] = 17;
//! frame[14 + 25] = 8; // UDP length
//! let now = Instant::from_millis(1);
//! let len = frame.len();
//! let mut f = Frame::new(&mut frame, len, LinkMedium::Ethernet);
//! assert_eq!(qos.on_ingress(now, Role::Local, &mut f), Verdict::Consumed);
//! let mut out = [0u8; 1514];
//! assert_eq!(qos.release(now, &mut out), Some(len));
//! assert_eq!(qos.class_stats("voice").unwrap().packets, 1);
//! ```

mod classify;
mod config;
mod queue;
mod scheduler;
#[cfg(test)]
mod tests;

use smoltcp::time::Instant;

use self::classify::{ClassMatch, Unscheduled, mark_ce, scheduled};
use self::scheduler::Link;
use super::{Emit, Frame, Function, FunctionError, FunctionKind, Role, Verdict};
use crate::functions::common::{counter_names, counters, reconfigure_in_place};
use crate::wire::FrameView;

pub use self::config::{
    ClassConfig, DEFAULT_QUEUE, Direction, OverLimit, QosConfig, RateSpec, parse_rate,
};

counters! {
    /// Counters of one class (both directions together).
    #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
    pub struct ClassStats {
        /// Frames released.
        pub packets: u64,
        /// Bytes released.
        pub bytes: u64,
        /// Frames dropped because the queue was full.
        pub dropped: u64,
        /// Frames CE-marked.
        pub marked: u64,
    }
}

counters! {
    /// Counters of the whole function, beyond the per-class ones.
    #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
    pub struct QosStats {
        /// Frames queued.
        pub enqueued: u64,
        /// Frames passed unqueued: non-IP, neighbour discovery, the
        /// unscheduled direction.
        pub passed: u64,
        /// Malformed or truncated IP frames (dropped).
        pub malformed: u64,
        /// Frames too big for the output buffer, or dropped by a
        /// reconfiguration that removed their class and found no room.
        pub discarded: u64,
    }
}

/// A class: its criteria, its marking threshold, its counters.
#[derive(Debug)]
struct Class {
    name: String,
    matcher: ClassMatch,
    mark_at: Option<usize>,
    stats: ClassStats,
    /// `class.NAME.{packets,bytes,dropped,marked,queued_bytes}`, built once.
    counter_names: [String; 5],
}

/// The QoS function.
pub struct Qos {
    direction: Direction,
    classes: Vec<Class>,
    default: usize,
    /// `[out, in]`: frames from the local network, from the global one.
    links: [Link; 2],
    /// Link polled first by the next release (the two take turns).
    next_link: usize,
    now: Instant,
    stats: QosStats,
    /// What classes a reconfiguration removed had counted: the totals keep
    /// it, so that they never go down.
    retired: ClassStats,
}

impl ClassStats {
    fn add(&mut self, other: &ClassStats) {
        self.packets += other.packets;
        self.bytes += other.bytes;
        self.dropped += other.dropped;
        self.marked += other.marked;
    }
}

impl Qos {
    /// The scheduler for `cfg`; errors name an invalid class, rate or queue.
    pub fn new(cfg: QosConfig) -> Result<Qos, FunctionError> {
        Qos::build(&cfg)
    }

    fn build(cfg: &QosConfig) -> Result<Qos, FunctionError> {
        let plan = cfg.plan()?;
        let shapes: Vec<_> = plan.classes.iter().map(|c| c.shape).collect();
        let classes = plan
            .classes
            .into_iter()
            .map(|c| Class {
                counter_names: counter_names(
                    "class",
                    &c.name,
                    ["packets", "bytes", "dropped", "marked", "queued_bytes"],
                ),
                name: c.name,
                matcher: c.matcher,
                mark_at: c.mark_at,
                stats: ClassStats::default(),
            })
            .collect();
        Ok(Qos {
            direction: plan.direction,
            links: [Link::new(&shapes, plan.link), Link::new(&shapes, plan.link)],
            classes,
            default: plan.default,
            next_link: 0,
            now: Instant::ZERO,
            stats: QosStats::default(),
            retired: ClassStats::default(),
        })
    }

    /// The counters beyond the per-class ones.
    pub fn stats(&self) -> &QosStats {
        &self.stats
    }

    fn index_of(&self, name: &str) -> Option<usize> {
        self.classes.iter().position(|c| c.name == name)
    }

    /// A class's counters, by name.
    pub fn class_stats(&self, name: &str) -> Option<ClassStats> {
        self.index_of(name).map(|c| self.classes[c].stats)
    }

    /// Bytes queued in a class (both directions).
    pub fn queued_bytes(&self, name: &str) -> Option<u64> {
        self.index_of(name).map(|c| self.class_queued_bytes(c))
    }

    fn class_queued_bytes(&self, c: usize) -> u64 {
        self.links.iter().map(|l| l.queued_bytes(c) as u64).sum()
    }

    /// Frames queued in all classes.
    pub fn queued_frames(&self) -> usize {
        self.links.iter().map(Link::queued_frames).sum()
    }

    /// The class a frame goes to (`None`: it passes unqueued or is
    /// malformed).
    pub fn classify(&self, view: &FrameView) -> Option<&str> {
        let ip = scheduled(view).ok()?;
        Some(&self.classes[self.class_of(ip)].name)
    }

    fn class_of(&self, ip: &crate::wire::IpView) -> usize {
        self.classes
            .iter()
            .position(|c| c.matcher.matches(ip))
            .unwrap_or(self.default)
    }

    /// Classifies a frame from `from` and queues it (`Consumed`), or lets
    /// it pass, or drops it.
    fn admit(&mut self, now: Instant, from: Role, frame: &mut Frame<'_>) -> Verdict {
        self.now = now;
        let link = match (self.direction, from) {
            (Direction::Both | Direction::Out, Role::Local) => 0,
            (Direction::Both | Direction::In, Role::Global) => 1,
            _ => {
                self.stats.passed += 1;
                return Verdict::Pass;
            }
        };
        let ip = match scheduled(frame.view()) {
            Ok(ip) => *ip,
            Err(Unscheduled::Pass) => {
                self.stats.passed += 1;
                return Verdict::Pass;
            }
            Err(Unscheduled::Malformed) => {
                self.stats.malformed += 1;
                return Verdict::Drop;
            }
        };
        let c = self.class_of(&ip);
        let class = &mut self.classes[c];
        let link = &mut self.links[link];
        if !link.fits(c, frame.len()) {
            class.stats.dropped += 1;
            return Verdict::Drop;
        }
        if class.mark_at.is_some_and(|at| link.queued_bytes(c) >= at)
            && mark_ce(frame.bytes_mut(), &ip)
        {
            class.stats.marked += 1;
        }
        link.enqueue(c, frame.bytes());
        self.stats.enqueued += 1;
        Verdict::Consumed
    }

    /// Releases the next frame in scheduler order into `out` (the two
    /// directions take turns); returns its length, or `None` when nothing
    /// may leave yet (see [`Function::poll_at`]).
    pub fn release(&mut self, now: Instant, out: &mut [u8]) -> Option<usize> {
        self.now = now;
        for k in 0..2 {
            let i = (self.next_link + k) % 2;
            // A frame too big for `out` is discarded; try the next one
            // (bounded by the frames queued).
            while let Some(d) = self.links[i].dequeue(now, out) {
                if !d.copied {
                    self.stats.discarded += 1;
                    continue;
                }
                let s = &mut self.classes[d.class].stats;
                s.packets += 1;
                s.bytes += d.len as u64;
                self.next_link = i ^ 1;
                return Some(d.len);
            }
        }
        None
    }

    /// When a queued frame can next leave: `now` (of the last call) if one
    /// can already; `None` when nothing is queued.
    pub fn next_release(&self) -> Option<Instant> {
        self.links.iter().filter_map(|l| l.ready_at(self.now)).min()
    }

    /// Applies a changed configuration in place: classes keep their queued
    /// frames, bucket levels and counters by name; the frames of a class
    /// that is gone move to the new default class (discarded if it has no
    /// room), its counts stay in the totals. An invalid configuration is an
    /// error and changes nothing.
    pub fn reconfigure(&mut self, cfg: &QosConfig) -> Result<(), FunctionError> {
        let mut next = Qos::build(cfg)?;
        let target: Vec<Option<usize>> = self
            .classes
            .iter()
            .map(|c| next.index_of(&c.name))
            .collect();
        next.retired = self.retired;
        for (old, &ni) in self.classes.iter().zip(&target) {
            match ni {
                Some(ni) => next.classes[ni].stats = old.stats,
                None => next.retired.add(&old.stats),
            }
        }
        let mut discarded = 0;
        for (new, old) in next.links.iter_mut().zip(&mut self.links) {
            discarded += new.take_over(old, &target, next.default);
        }
        next.stats = QosStats {
            discarded: self.stats.discarded + discarded,
            ..self.stats
        };
        next.now = self.now;
        next.next_link = self.next_link;
        *self = next;
        Ok(())
    }
}

impl Function for Qos {
    fn kind(&self) -> FunctionKind {
        FunctionKind::packet("qos")
    }

    fn on_ingress(&mut self, now: Instant, from: Role, frame: &mut Frame<'_>) -> Verdict {
        self.admit(now, from, frame)
    }

    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Emit> {
        self.release(now, buf).map(|len| Emit { len, via: None })
    }

    fn poll_at(&self) -> Option<Instant> {
        self.next_release()
    }

    fn reconfigure(&mut self, cfg: &dyn crate::stack::FunctionSpec) -> Result<bool, FunctionError> {
        reconfigure_in_place(cfg, |c| Qos::reconfigure(self, c))
    }

    fn counters(&self, visit: &mut dyn FnMut(&str, u64)) {
        let mut total = self.retired;
        let mut queued = 0;
        for (i, c) in self.classes.iter().enumerate() {
            let q = self.class_queued_bytes(i);
            let s = c.stats;
            for (name, v) in c
                .counter_names
                .iter()
                .zip([s.packets, s.bytes, s.dropped, s.marked, q])
            {
                visit(name, v);
            }
            total.add(&s);
            queued += q;
        }
        total.visit(visit);
        visit("queued_bytes", queued);
        visit("queued_packets", self.queued_frames() as u64);
        self.stats.visit(visit);
    }
}
