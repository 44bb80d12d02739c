//! Virtual time: devices driven in the test's own thread by
//! [`NetDevice::poll_at`], on a clock that moves only when the test says so.
//! Nothing reads the wall clock and nothing runs concurrently, so a run
//! does the same every time, and a timeout of minutes passes in as many
//! rounds as it takes, not in minutes.
//!
//! ```
//! use shmnet::testing::{DeviceToml, VirtualClock, device, unique};
//! use smoltcp::time::Duration;
//!
//! // An echo server and a probe on the same networks, in this thread.
//! let (lan, wan) = (unique("lan"), unique("wan"));
//! let host = |name, host, function| {
//!     device(&DeviceToml::host(name, &lan, &wan, host).function(function).settings())
//! };
//! let mut server = host("server", 2, r#"{ kind = "echo" }"#);
//! let mut client = host("client", 1, r#"{ kind = "probe", udp = ["10.0.0.2:7"] }"#);
//! let probe = client.handle();
//!
//! let mut clock = VirtualClock::new(Duration::from_millis(1));
//! let done = clock.run_until(&mut [&mut client, &mut server], Duration::from_secs(5), |_| {
//!     probe.finished()
//! });
//! assert!(done);
//! let report = probe.take_report();
//! assert!(report[0].contains("4/4 datagrams echoed intact"), "{report:?}");
//! ```

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::IpAddress;

use super::{DeviceToml, counter, device, unique};
use crate::stack::NetDevice;

/// A clock for devices polled by hand: it starts at zero, and every
/// [`tick`](VirtualClock::tick) moves it on by a fixed step and polls each
/// device once at the new time.
#[derive(Debug, Clone)]
pub struct VirtualClock {
    now: Instant,
    step: Duration,
}

impl VirtualClock {
    /// A clock at zero that moves by `step` each tick (1 ms is fine
    /// grained enough for the stack's and the functions' timers).
    pub fn new(step: Duration) -> VirtualClock {
        assert!(step > Duration::ZERO, "a clock that does not move");
        VirtualClock {
            now: Instant::ZERO,
            step,
        }
    }

    /// The time of the last tick.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Moves one step on and polls each of `devices` once, in order;
    /// returns whether any of them moved anything.
    pub fn tick(&mut self, devices: &mut [&mut NetDevice]) -> bool {
        self.now += self.step;
        let mut progress = false;
        for d in devices.iter_mut() {
            progress |= d.poll_at(self.now);
        }
        progress
    }

    /// Ticks until `span` has passed.
    pub fn run_for(&mut self, devices: &mut [&mut NetDevice], span: Duration) {
        let end = self.now + span;
        while self.now < end {
            self.tick(devices);
        }
    }

    /// Sends `request` on TCP socket `h` of `devices[0]` (a client polled
    /// by hand) and collects what comes back, ticking until everything is
    /// sent and `done(socket, received)` holds, or `limit` has passed;
    /// whether `done` held, and the bytes received.
    pub fn converse(
        &mut self,
        devices: &mut [&mut NetDevice],
        h: SocketHandle,
        request: &[u8],
        limit: Duration,
        done: impl Fn(&tcp::Socket, &[u8]) -> bool,
    ) -> (bool, Vec<u8>) {
        let mut sent = 0;
        let mut got = Vec::new();
        let ok = self.run_until(devices, limit, |d| {
            let s = d[0].sockets().get_mut::<tcp::Socket>(h);
            if s.may_send() && sent < request.len() {
                sent += s.send_slice(&request[sent..]).unwrap_or(0);
            }
            while let Ok(n) = s.recv(|b| {
                got.extend_from_slice(b);
                (b.len(), b.len())
            }) {
                if n == 0 {
                    break;
                }
            }
            sent == request.len() && done(s, &got)
        });
        (ok, got)
    }

    /// Ticks until `done` (asked after every tick) holds, or until `limit`
    /// has passed; returns whether `done` held. [`now`](Self::now) is then
    /// the virtual time it took.
    pub fn run_until(
        &mut self,
        devices: &mut [&mut NetDevice],
        limit: Duration,
        mut done: impl FnMut(&mut [&mut NetDevice]) -> bool,
    ) -> bool {
        let end = self.now + limit;
        while self.now < end {
            self.tick(devices);
            if done(devices) {
                return true;
            }
        }
        false
    }
}

/// Devices on one pair of networks (see [`DeviceToml::host`]), polled on
/// a [`VirtualClock`] of 1 ms steps: host `n` (10.0.0.`n`) is
/// `devices[n - 1]`, and host 1 is the client the test drives by hand.
pub struct VirtualHosts {
    /// The clock the devices run on.
    pub clock: VirtualClock,
    /// Host 1, 2, ... in order.
    pub devices: Vec<NetDevice>,
    /// The local network's segment, for a device added later.
    pub lan: String,
    /// The global network's segment.
    pub wan: String,
    /// How long [`talk`](Self::talk) waits.
    patience: Duration,
    /// The client's last local port.
    port: u16,
}

impl VirtualHosts {
    /// Host `n` for the `n`-th (name, `[function]` table) of `hosts`,
    /// counting from 1; [`talk`](Self::talk) waits 10 s.
    pub fn new(hosts: &[(&str, &str)]) -> VirtualHosts {
        let (lan, wan) = (unique("lan"), unique("wan"));
        let devices = (1..)
            .zip(hosts)
            .map(|(n, (name, table))| {
                device(
                    &DeviceToml::host(*name, &lan, &wan, n)
                        .function_table(*table)
                        .settings(),
                )
            })
            .collect();
        VirtualHosts {
            clock: VirtualClock::new(Duration::from_millis(1)),
            devices,
            lan,
            wan,
            patience: Duration::from_secs(10),
            port: 40000,
        }
    }

    /// Lets [`talk`](Self::talk) wait `limit` of virtual time.
    pub fn patience(mut self, limit: Duration) -> VirtualHosts {
        self.patience = limit;
        self
    }

    /// Connects the client's TCP socket `h` to `to`, from a local port
    /// not used before (40001 on); returns `h`.
    pub fn connect(&mut self, h: SocketHandle, to: (IpAddress, u16)) -> SocketHandle {
        self.port += 1;
        let (iface, sockets) = self.devices[0].parts();
        sockets
            .get_mut::<tcp::Socket>(h)
            .connect(iface.context(), to, self.port)
            .expect("connect");
        h
    }

    /// Sends `request` on the client's socket `h` and reads what comes
    /// back until `done` holds (asked once all is sent); panics, with what
    /// came, if it does not within the [`patience`](Self::patience).
    pub fn talk(
        &mut self,
        h: SocketHandle,
        request: &[u8],
        done: impl Fn(&tcp::Socket, &[u8]) -> bool,
    ) -> Vec<u8> {
        let mut refs: Vec<&mut NetDevice> = self.devices.iter_mut().collect();
        let (ok, got) = self
            .clock
            .converse(&mut refs, h, request, self.patience, done);
        assert!(ok, "no end in sight: {}", String::from_utf8_lossy(&got));
        got
    }

    /// One step of the clock, every device polled once, in order.
    pub fn tick(&mut self) -> bool {
        let mut refs: Vec<&mut NetDevice> = self.devices.iter_mut().collect();
        self.clock.tick(&mut refs)
    }

    /// Lets `span` of virtual time pass with every device running.
    pub fn idle(&mut self, span: Duration) {
        let mut refs: Vec<&mut NetDevice> = self.devices.iter_mut().collect();
        self.clock.run_for(&mut refs, span);
    }

    /// Ticks until `done` holds (see [`VirtualClock::run_until`]).
    pub fn run_until(
        &mut self,
        limit: Duration,
        done: impl FnMut(&mut [&mut NetDevice]) -> bool,
    ) -> bool {
        let mut refs: Vec<&mut NetDevice> = self.devices.iter_mut().collect();
        self.clock.run_until(&mut refs, limit, done)
    }

    /// The function counter `name` of host `n`.
    pub fn counter(&self, n: usize, name: &str) -> u64 {
        counter(&self.devices[n - 1].stats(), name)
    }
}
