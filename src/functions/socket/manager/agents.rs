//! The manager's side of the agents: one TCP session per device, carrying
//! sealed requests one after another, each answered in order. A session
//! that fails (refused, reset, silent past its timeout, a reply with a bad
//! signature) is dropped and opened again at the next poll; the device
//! reads as down until a poll succeeds.

use std::collections::VecDeque;

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::IpAddress;

use crate::functions::SocketContext;
use crate::functions::socket::{LocalPorts, Retired};
use crate::wire::mgmt::{self, Key, Kind, MgmtRepr, Op, Status};

/// What a request was for, handed back with its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Purpose {
    /// The periodic poll: identity, counters.
    Poll,
    /// The configuration, for the cache of it.
    Config,
    /// An API request waiting on HTTP connection `conn`.
    Api {
        /// The HTTP connection's id.
        conn: u64,
    },
    /// A policy action (decision `decision`).
    Policy {
        /// The engine's decision id.
        decision: u64,
    },
    /// The configuration a policy patch needs, then the patch.
    PolicyPatch {
        /// The engine's decision id.
        decision: u64,
        /// Index of the planned action kept aside.
        action: usize,
    },
}

/// An answer from an agent.
#[derive(Debug)]
pub struct Answer {
    /// The request's operation.
    pub op: Op,
    /// What it was for.
    pub purpose: Purpose,
    /// The agent's status, or why there is no answer (`Err`: the session
    /// failed or timed out).
    pub result: Result<(Status, Vec<u8>), String>,
    /// Round trip.
    pub rtt: Duration,
}

struct Pending {
    seq: u64,
    op: Op,
    purpose: Purpose,
    sent: Instant,
}

/// The session with one device's agent.
pub struct AgentLink {
    addr: IpAddress,
    port: u16,
    socket: Option<SocketHandle>,
    /// Requests not yet answered, oldest first (answers come in order).
    pending: VecDeque<Pending>,
    /// Sealed requests not yet written to the socket.
    output: Vec<u8>,
    input: Vec<u8>,
    next_seq: u64,
}

impl AgentLink {
    /// A link to the agent at `addr:port` (no session yet).
    pub fn new(addr: IpAddress, port: u16) -> AgentLink {
        AgentLink {
            addr,
            port,
            socket: None,
            pending: VecDeque::new(),
            output: Vec::new(),
            input: Vec::new(),
            next_seq: 1,
        }
    }

    /// The agent's address.
    pub fn addr(&self) -> IpAddress {
        self.addr
    }

    /// Requests waiting for an answer.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Queues a request; the session opens if it is not open.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn request(
        &mut self,
        cx: &mut SocketContext<'_>,
        ports: &mut LocalPorts,
        key: &Key,
        client: u32,
        op: Op,
        body: &[u8],
        purpose: Purpose,
    ) -> Result<(), String> {
        if self.socket.is_none() {
            self.connect(cx, ports)?;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let repr = MgmtRepr {
            kind: Kind::Request,
            op: op as u8,
            status: 0,
            client,
            seq,
            time_ms: mgmt::unix_ms(),
            body,
        };
        let msg = mgmt::seal(&repr, key).map_err(|e| e.to_string())?;
        self.output.extend_from_slice(&msg);
        self.pending.push_back(Pending {
            seq,
            op,
            purpose,
            sent: cx.now,
        });
        Ok(())
    }

    fn connect(
        &mut self,
        cx: &mut SocketContext<'_>,
        ports: &mut LocalPorts,
    ) -> Result<(), String> {
        let local = ports.take().ok_or("no free local port")?;
        let h = cx.add_tcp(Some(256 << 10));
        let (iface, sockets) = (&mut *cx.iface, &mut *cx.sockets);
        let s = sockets.get_mut::<tcp::Socket>(h);
        s.set_timeout(Some(Duration::from_secs(10)));
        if let Err(e) = s.connect(iface.context(), (self.addr, self.port), local) {
            ports.give_back(local);
            cx.remove_socket(h);
            return Err(format!(
                "cannot connect to {}:{}: {e}",
                self.addr, self.port
            ));
        }
        self.socket = Some(h);
        self.input.clear();
        self.output.clear();
        Ok(())
    }

    /// Moves bytes, collects answers (checked against `key`) and times out
    /// requests older than `timeout`. Returns the answers.
    pub(crate) fn poll(
        &mut self,
        cx: &mut SocketContext<'_>,
        retired: &mut Retired,
        key: &Key,
        timeout: Duration,
        out: &mut Vec<Answer>,
    ) {
        let Some(h) = self.socket else { return };
        let s = cx.sockets.get_mut::<tcp::Socket>(h);
        let mut failure = None;
        if s.can_send()
            && !self.output.is_empty()
            && let Ok(n) = s.send_slice(&self.output)
        {
            self.output.drain(..n);
        }
        while s.can_recv() {
            let _ = s.recv(|b| {
                self.input.extend_from_slice(b);
                (b.len(), ())
            });
        }
        loop {
            match mgmt::frame_len(&self.input) {
                Ok(Some(n)) if self.input.len() >= n => {
                    let msg: Vec<u8> = self.input.drain(..n).collect();
                    match self.answer(&msg, key, cx.now) {
                        Ok(a) => out.push(a),
                        Err(e) => {
                            failure = Some(e);
                            break;
                        }
                    }
                }
                Ok(_) => break,
                Err(e) => {
                    failure = Some(format!("agent sent garbage: {e}"));
                    break;
                }
            }
        }
        let s = cx.sockets.get_mut::<tcp::Socket>(h);
        if failure.is_none() {
            if !s.is_open() || (!s.may_recv() && s.state() != tcp::State::SynSent) {
                failure = Some(match s.state() {
                    tcp::State::Closed => "connection refused or reset".into(),
                    _ => "agent closed the connection".into(),
                });
            } else if let Some(p) = self.pending.front()
                && cx.now - p.sent > timeout
            {
                failure = Some(format!("no answer in {} ms", timeout.total_millis()));
            }
        }
        if let Some(why) = failure {
            self.fail(cx, retired, &why, out);
        }
    }

    /// Checks one answer and pairs it with its request.
    fn answer(&mut self, msg: &[u8], key: &Key, now: Instant) -> Result<Answer, String> {
        let r = mgmt::open(msg, key).map_err(|e| format!("answer refused: {e}"))?;
        if r.kind != Kind::Response {
            return Err("agent sent a request".into());
        }
        let p = self.pending.pop_front().ok_or("answer to nothing asked")?;
        if r.seq != p.seq {
            return Err(format!(
                "answer to request {} while {} was due",
                r.seq, p.seq
            ));
        }
        let status = Status::from_u8(r.status).unwrap_or(Status::Error);
        Ok(Answer {
            op: p.op,
            purpose: p.purpose,
            result: Ok((status, r.body.to_vec())),
            rtt: now - p.sent,
        })
    }

    /// Drops the session; every request in flight fails with `why`.
    pub(crate) fn fail(
        &mut self,
        cx: &mut SocketContext<'_>,
        retired: &mut Retired,
        why: &str,
        out: &mut Vec<Answer>,
    ) {
        log::debug!("manager: session with {} failed: {why}", self.addr);
        if let Some(h) = self.socket.take() {
            retired.retire(cx, h, true);
        }
        self.output.clear();
        self.input.clear();
        for p in self.pending.drain(..) {
            out.push(Answer {
                op: p.op,
                purpose: p.purpose,
                result: Err(why.to_string()),
                rtt: cx.now - p.sent,
            });
        }
    }

    /// Closes the session (the manager stops).
    pub(crate) fn close(&mut self, cx: &mut SocketContext<'_>, retired: &mut Retired) {
        let mut sink = Vec::new();
        self.fail(cx, retired, "manager stopped", &mut sink);
    }
}
