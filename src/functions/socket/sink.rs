//! The sink: a discard server (RFC 863) that checks what it is sent.
//! Each TCP stream is compared with the probe's pattern
//! ([`super::probe::pattern_byte`]); when the client half-closes, the sink
//! answers with a receipt — the byte count as 8 bytes big-endian, then 1
//! if every byte was the pattern's, else 0 — and closes. With the probe's
//! `send` targets it measures one-way transfers, where an echo's return
//! stream would compete with the data (lossy links, slow paths).
//!
//! ```
//! use shmnet::functions::{build, FunctionConfig};
//! let cfg: FunctionConfig = toml::from_str("kind = \"sink\"\nport = 9").unwrap();
//! assert_eq!(build(&cfg).unwrap().name(), "sink");
//! ```

use super::probe::pattern_matches;
use super::{Function, FunctionError, FunctionKind, SocketContext, check_server, listen_on};
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;

/// Bytes of a receipt: the count, then the intact flag.
pub const RECEIPT_LEN: usize = 9;

/// `[function] kind = "sink"`; a field left out takes its value from
/// [`SinkConfig::default`].
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SinkConfig {
    /// TCP port to listen on.
    pub port: u16,
    /// Concurrent TCP connections served (smoltcp has no listen backlog).
    pub connections: usize,
    /// Bytes of each TCP socket's receive and send buffer (default: the
    /// device's `[sockets] tcp_buffer`).
    pub tcp_buffer: Option<usize>,
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig {
            port: 9,
            connections: 2,
            tcp_buffer: None,
        }
    }
}

/// A stream being received.
#[derive(Clone, Copy)]
struct Stream {
    got: u64,
    intact: bool,
    answered: bool,
}

/// Nothing received yet, nothing wrong yet.
const FRESH: Stream = Stream {
    got: 0,
    intact: true,
    answered: false,
};

/// Discard server that checks the pattern and answers with a receipt.
pub struct Sink {
    cfg: SinkConfig,
    tcp: Vec<(SocketHandle, Stream)>,
    scratch: Vec<u8>,
    bytes: u64,
    intact: u64,
    corrupted: u64,
}

impl Sink {
    /// The server for `cfg`; errors if `port`, `connections` or
    /// `tcp_buffer` is out of range.
    pub fn new(cfg: SinkConfig) -> Result<Sink, FunctionError> {
        check_server("sink", cfg.port, (cfg.connections, 64), cfg.tcp_buffer)?;
        Ok(Sink {
            cfg,
            tcp: Vec::new(),
            scratch: vec![0; 64 * 1024],
            bytes: 0,
            intact: 0,
            corrupted: 0,
        })
    }
}

impl Function for Sink {
    fn kind(&self) -> FunctionKind {
        FunctionKind::socket("sink")
    }

    fn attach(&mut self, cx: &mut SocketContext<'_>) {
        let listening = listen_on(cx, self.cfg.port, self.cfg.connections, self.cfg.tcp_buffer);
        self.tcp = listening.into_iter().map(|h| (h, FRESH)).collect();
    }

    fn detach(&mut self, cx: &mut SocketContext<'_>) {
        cx.remove_sockets(self.tcp.drain(..).map(|(h, _)| h));
    }

    fn poll(&mut self, cx: &mut SocketContext<'_>) -> bool {
        let mut progress = false;
        for (h, st) in &mut self.tcp {
            let s = cx.sockets.get_mut::<tcp::Socket>(*h);
            if s.state() == tcp::State::TimeWait {
                s.abort();
            }
            if !s.is_open() {
                let _ = s.listen(self.cfg.port);
                *st = FRESH;
                continue;
            }
            while let Ok(n) = s.recv_slice(&mut self.scratch) {
                if n == 0 {
                    break;
                }
                let got = st.got;
                st.intact &= pattern_matches(got, &self.scratch[..n]);
                st.got += n as u64;
                self.bytes += n as u64;
                progress = true;
            }
            if !s.may_recv() && s.state() == tcp::State::CloseWait && !st.answered {
                let mut receipt = [0u8; RECEIPT_LEN];
                receipt[..8].copy_from_slice(&st.got.to_be_bytes());
                receipt[8] = u8::from(st.intact);
                if s.send_slice(&receipt) == Ok(RECEIPT_LEN) {
                    st.answered = true;
                    if st.intact {
                        self.intact += 1;
                    } else {
                        self.corrupted += 1;
                    }
                    s.close();
                    progress = true;
                }
            }
        }
        progress
    }

    fn counters(&self, visit: &mut dyn FnMut(&str, u64)) {
        visit("tcp_bytes_received", self.bytes);
        visit("tcp_streams_intact", self.intact);
        visit("tcp_streams_corrupted", self.corrupted);
    }
}

#[cfg(test)]
mod tests {
    use smoltcp::time::Duration;

    use crate::testing::{DeviceToml, VirtualClock, device, unique};

    /// The probe's one-way report against a sink, and the sink's counters.
    fn one_way(bytes: usize) -> (Vec<String>, Vec<(String, u64)>) {
        let (lan, wan) = (unique("lan"), unique("wan"));
        let host = |name, host, function: &str| {
            device(
                &DeviceToml::host(name, &lan, &wan, host)
                    .function(function)
                    .settings(),
            )
        };
        let mut sink = host("sink", 2, r#"{ kind = "sink" }"#);
        let mut client = host(
            "client",
            1,
            &format!(r#"{{ kind = "probe", send = ["10.0.0.2:9"], bytes = {bytes} }}"#),
        );
        let probe = client.handle();
        let mut clock = VirtualClock::new(Duration::from_millis(1));
        let done = clock.run_until(
            &mut [&mut client, &mut sink],
            Duration::from_secs(10),
            |_| probe.finished(),
        );
        assert!(done, "{:?}", probe.take_report());
        (probe.take_report(), sink.stats().function_counters)
    }

    #[test]
    fn a_stream_sent_one_way_is_checked_and_receipted() {
        for bytes in [0, 1, 3 << 20] {
            let (report, counters) = one_way(bytes);
            assert!(
                report[0].contains(&format!("{bytes} bytes delivered intact")),
                "{report:?}"
            );
            let get = |n: &str| counters.iter().find(|(k, _)| k == n).map(|c| c.1);
            assert_eq!(get("tcp_bytes_received"), Some(bytes as u64));
            assert_eq!(get("tcp_streams_intact"), Some(1));
            assert_eq!(get("tcp_streams_corrupted"), Some(0));
        }
    }
}
