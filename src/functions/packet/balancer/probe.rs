//! TCP health checks of the backends, from the device's own stack: a
//! connection attempt per backend every `interval`; established is a
//! success, refused (RST) or not established within `timeout` a failure.
//! The fall/rise state machine is the shared one
//! ([`crate::functions::health`]).

use smoltcp::socket::tcp;
use smoltcp::time::Instant;

use super::Balancer;
use crate::functions::SocketContext;
use crate::functions::health::Transition;

/// Local ports the health checks use, in turn.
pub(super) const CHECK_PORTS: (u16, u16) = (40_000, 59_999);

impl Balancer {
    /// Runs the health checks on the device's sockets; returns whether it
    /// sent or closed anything.
    pub(super) fn check_health(&mut self, cx: &mut SocketContext<'_>) -> bool {
        let now = cx.now;
        let mut progress = false;
        let mut changes: Vec<(usize, usize, Transition)> = Vec::new();
        for (si, svc) in self.services.iter_mut().enumerate() {
            let Some(check) = svc.check else {
                continue;
            };
            for (bi, b) in svc.backends.iter_mut().enumerate() {
                let h = *b.socket.get_or_insert_with(|| {
                    let buffer = || tcp::SocketBuffer::new(vec![0; 64]);
                    cx.sockets.add(tcp::Socket::new(buffer(), buffer()))
                });
                let s = cx.sockets.get_mut::<tcp::Socket>(h);
                let result = if b.health.start(&check, now) {
                    if s.is_open() {
                        s.abort();
                    }
                    let port = self.next_port;
                    self.next_port = if port >= CHECK_PORTS.1 {
                        CHECK_PORTS.0
                    } else {
                        port + 1
                    };
                    progress = true;
                    match s.connect(cx.iface.context(), b.ep.to_smoltcp(), port) {
                        Ok(()) => None,
                        Err(_) => Some(false),
                    }
                } else if b.health.in_flight().is_some() {
                    let r = match s.state() {
                        tcp::State::Established => Some(true),
                        tcp::State::Closed => Some(false),
                        _ if b.health.timed_out(&check, now) => Some(false),
                        _ => None,
                    };
                    if r.is_some() {
                        // An RST ends the check on both sides at once.
                        s.abort();
                        progress = true;
                    }
                    r
                } else {
                    None
                };
                let Some(ok) = result else {
                    continue;
                };
                if ok {
                    self.stats.checks_ok += 1;
                } else {
                    self.stats.checks_failed += 1;
                }
                if let Some(t) = b.health.finish(&check, now, ok) {
                    changes.push((si, bi, t));
                }
            }
        }
        for (s, b, t) in changes {
            self.backend_changed(s, b, t == Transition::Up);
        }
        progress
    }

    /// When the next check starts or times out.
    pub(super) fn next_check(&self) -> Option<Instant> {
        self.services
            .iter()
            .filter_map(|s| Some((s.check?, s)))
            .flat_map(|(check, s)| s.backends.iter().map(move |b| b.health.due(&check)))
            .min()
    }
}
