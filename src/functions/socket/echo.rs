//! The echo server: echoes TCP streams and UDP datagrams on one port, on
//! the device's own stack. The simplest way to see the data path work (the
//! sample topologies use it as the far end of every chain) and, with
//! [`super::probe`], to check that bytes arrive intact.
//!
//! ```
//! use shmnet::functions::{build, FunctionConfig};
//! let cfg: FunctionConfig = toml::from_str("kind = \"echo\"\nport = 7").unwrap();
//! assert_eq!(build(&cfg).unwrap().name(), "echo");
//! ```

use smoltcp::iface::SocketHandle;
use smoltcp::socket::{tcp, udp};

use super::{
    Function, FunctionError, FunctionKind, SocketContext, check_server, listen_on, udp_socket,
};

/// `[function] kind = "echo"`; a field left out takes its value from
/// [`EchoConfig::default`].
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct EchoConfig {
    /// TCP and UDP port to echo on.
    pub port: u16,
    /// Concurrent TCP connections served (smoltcp has no listen backlog).
    pub connections: usize,
    /// Bytes of each TCP socket's receive and send buffer (default: the
    /// device's `[sockets] tcp_buffer`).
    pub tcp_buffer: Option<usize>,
}

impl Default for EchoConfig {
    fn default() -> Self {
        EchoConfig {
            port: 7,
            connections: 2,
            tcp_buffer: None,
        }
    }
}

/// Echo server on TCP and UDP.
pub struct Echo {
    cfg: EchoConfig,
    tcp: Vec<SocketHandle>,
    udp: Option<SocketHandle>,
    scratch: Vec<u8>,
    bytes: u64,
    datagrams: u64,
}

impl Echo {
    /// The server for `cfg`; errors if `port`, `connections` or `tcp_buffer`
    /// is out of range.
    pub fn new(cfg: EchoConfig) -> Result<Echo, FunctionError> {
        check_server("echo", cfg.port, (cfg.connections, 64), cfg.tcp_buffer)?;
        Ok(Echo {
            cfg,
            tcp: Vec::new(),
            udp: None,
            scratch: vec![0; 64 * 1024],
            bytes: 0,
            datagrams: 0,
        })
    }
}

impl Function for Echo {
    fn kind(&self) -> FunctionKind {
        FunctionKind::socket("echo")
    }

    fn attach(&mut self, cx: &mut SocketContext<'_>) {
        // Listen at once: a SYN processed before the first `poll` would
        // otherwise be refused.
        self.tcp = listen_on(cx, self.cfg.port, self.cfg.connections, self.cfg.tcp_buffer);
        let mut u = udp_socket(64, 256 * 1024);
        if u.bind(self.cfg.port).is_ok() {
            self.udp = Some(cx.sockets.add(u));
        }
    }

    fn detach(&mut self, cx: &mut SocketContext<'_>) {
        cx.remove_sockets(self.tcp.drain(..));
        if let Some(h) = self.udp.take() {
            cx.sockets.remove(h);
        }
    }

    fn poll(&mut self, cx: &mut SocketContext<'_>) -> bool {
        let mut progress = false;
        for &h in &self.tcp {
            let s = cx.sockets.get_mut::<tcp::Socket>(h);
            if s.state() == tcp::State::TimeWait {
                s.abort();
            }
            if !s.is_open() {
                let _ = s.listen(self.cfg.port);
                continue;
            }
            while s.can_recv() && s.can_send() {
                let room = (s.send_capacity() - s.send_queue()).min(self.scratch.len());
                let n = s.recv_slice(&mut self.scratch[..room]).unwrap_or(0);
                if n == 0 {
                    break;
                }
                let _ = s.send_slice(&self.scratch[..n]);
                self.bytes += n as u64;
                progress = true;
            }
            if !s.may_recv() && s.send_queue() == 0 && s.state() == tcp::State::CloseWait {
                s.close();
            }
        }
        if let Some(h) = self.udp {
            let s = cx.sockets.get_mut::<udp::Socket>(h);
            while s.can_send() {
                let Ok((n, meta)) = s.recv_slice(&mut self.scratch) else {
                    break;
                };
                let _ = s.send_slice(&self.scratch[..n], meta.endpoint);
                self.datagrams += 1;
                progress = true;
            }
        }
        progress
    }

    fn counters(&self, visit: &mut dyn FnMut(&str, u64)) {
        visit("tcp_bytes_echoed", self.bytes);
        visit("udp_datagrams_echoed", self.datagrams);
    }
}
