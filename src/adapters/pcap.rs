//! Packet capture as a wrapper any adapter can wear.
//!
//! [`Pcap`] wraps an [`Adapter`] and writes every frame it sends (at
//! commit) and receives (copied or in place) to a classic pcap file, with
//! the link type of the adapter's medium and wall-clock timestamps. The
//! file is flushed with the adapter, once per round.
//!
//! ```
//! use shmnet::adapters::pcap::Pcap;
//! use shmnet::adapters::shm::{NetworkParams, SegmentKind, ShmAdapter, ShmOptions};
//! use shmnet::adapters::{Adapter, Neighbour};
//! let me = Neighbour { mac: smoltcp::wire::EthernetAddress([2, 0, 0, 0, 0, 9]), ipv4: None, ipv6: None };
//! let inner = ShmAdapter::join("pcap-doc", SegmentKind::InProcess, &NetworkParams::new(1500), "a", me, ShmOptions::default()).unwrap();
//! let path = std::env::temp_dir().join(format!("pcap-doc-{}.pcap", std::process::id()));
//! let mut a = Pcap::create(inner, &path).unwrap();
//! a.flush();
//! assert_eq!(std::fs::metadata(&path).unwrap().len(), 24); // the global header
//! # std::fs::remove_file(&path).ok();
//! ```

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Arc;

use smoltcp::phy::{Medium, PcapLinkType, PcapSink};
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, IpAddress};

use super::{Adapter, AdapterCounters, AdapterError, InPlace, Neighbour, Remote, TxLease, Wake};

/// An adapter whose every frame is also written to a pcap file.
pub struct Pcap {
    inner: Box<dyn Adapter>,
    out: BufWriter<File>,
    /// What was written: records and their bytes.
    written: Capture,
    start: std::time::Instant,
    /// Microseconds since the Unix epoch at `start`.
    start_unix_us: i64,
}

/// A new pcap file, its global header written, for [`Pcap::wrap`].
pub struct PcapFile(BufWriter<File>);

impl PcapFile {
    /// Creates (or truncates) `path` for frames of `medium`.
    pub fn create(path: &Path, medium: Medium) -> Result<PcapFile, AdapterError> {
        let f = File::create(path).map_err(|source| AdapterError::Pcap {
            path: path.display().to_string(),
            source,
        })?;
        let mut out = BufWriter::with_capacity(1 << 20, f);
        let link = match medium {
            Medium::Ethernet => PcapLinkType::Ethernet,
            _ => PcapLinkType::Ip,
        };
        PcapSink::global_header(&mut out, link);
        Ok(PcapFile(out))
    }
}

/// What a capture wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capture {
    /// Frames recorded.
    pub frames: u64,
    /// Their bytes (as captured, without record headers).
    pub bytes: u64,
}

impl Pcap {
    /// Wraps `inner`, writing to a new file at `path`.
    pub fn create(inner: impl Adapter + 'static, path: &Path) -> Result<Pcap, AdapterError> {
        let file = PcapFile::create(path, inner.medium())?;
        Ok(Self::wrap(Box::new(inner), file))
    }

    /// Wraps an adapter already boxed (e.g. one a device runs, to capture
    /// from now on) in a file opened beforehand, so that nothing can fail
    /// once the adapter is taken.
    pub fn wrap(inner: Box<dyn Adapter>, file: PcapFile) -> Pcap {
        Pcap {
            inner,
            out: file.0,
            written: Capture::default(),
            start: std::time::Instant::now(),
            start_unix_us: crate::wire::since_unix_epoch().as_micros() as i64,
        }
    }

    /// The wrapped adapter.
    pub fn inner(&self) -> &dyn Adapter {
        self.inner.as_ref()
    }

    /// What was written so far.
    pub fn written(&self) -> Capture {
        self.written
    }
}

/// Appends one record (a free function, so the frame may borrow the inner
/// adapter while the writer is borrowed).
fn capture(out: &mut BufWriter<File>, written: &mut Capture, at_us: i64, frame: &[u8]) {
    PcapSink::packet(out, Instant::from_micros(at_us), frame);
    written.frames += 1;
    written.bytes += frame.len() as u64;
}

impl Pcap {
    fn now_us(&self) -> i64 {
        self.start_unix_us + self.start.elapsed().as_micros() as i64
    }
}

/// Methods that go straight to the wrapped adapter: `fn name(&self, a: A)
/// -> R;` becomes `fn name(&self, a: A) -> R { self.inner.name(a) }`.
macro_rules! pass_through {
    () => {};
    (fn $name:ident(&self $(, $a:ident: $t:ty)*) $(-> $r:ty)?; $($rest:tt)*) => {
        fn $name(&self $(, $a: $t)*) $(-> $r)? {
            self.inner.$name($($a),*)
        }
        pass_through!($($rest)*);
    };
    (fn $name:ident(&mut self $(, $a:ident: $t:ty)*) $(-> $r:ty)?; $($rest:tt)*) => {
        fn $name(&mut self $(, $a: $t)*) $(-> $r)? {
            self.inner.$name($($a),*)
        }
        pass_through!($($rest)*);
    };
}

impl Adapter for Pcap {
    // What a capture changes: every frame sent or received is recorded,
    // and the file is flushed with the adapter.
    fn commit(&mut self, mut lease: TxLease, len: usize) {
        let at = self.now_us();
        let buf = self.inner.buffer(&mut lease);
        capture(
            &mut self.out,
            &mut self.written,
            at,
            &buf[..len.min(buf.len())],
        );
        self.inner.commit(lease, len);
    }
    fn recv_into(&mut self, dst: &mut [u8]) -> Option<usize> {
        let len = self.inner.recv_into(dst)?;
        let at = self.now_us();
        capture(&mut self.out, &mut self.written, at, &dst[..len]);
        Some(len)
    }
    fn recv_in_place(&mut self) -> Option<InPlace> {
        let f = self.inner.recv_in_place()?;
        let at = self.now_us();
        capture(&mut self.out, &mut self.written, at, self.inner.frame(&f));
        Some(f)
    }
    fn flush(&mut self) {
        self.inner.flush();
        let _ = Write::flush(&mut self.out);
    }
    fn take_off_capture(self: Box<Self>) -> Result<(Box<dyn Adapter>, Capture), Box<dyn Adapter>> {
        // The writer flushes as it drops.
        let Pcap { inner, written, .. } = *self;
        Ok((inner, written))
    }

    pass_through! {
        fn medium(&self) -> Medium;
        fn ip_mtu(&self) -> usize;
        fn frame_capacity(&self) -> usize;
        fn max_burst(&self) -> Option<usize>;
        fn can_lend(&mut self) -> bool;
        fn lend(&mut self) -> Option<TxLease>;
        fn buffer(&mut self, lease: &mut TxLease) -> &mut [u8];
        fn release(&mut self, lease: TxLease);
        fn in_place(&self) -> bool;
        fn frame(&self, f: &InPlace) -> &[u8];
        fn prepare_sleep(&self) -> Wake<'_>;
        fn end_sleep(&self);
        fn remote(&self) -> Arc<dyn Remote>;
        fn directory_generation(&self) -> u32;
        fn own_entry(&self) -> Neighbour;
        fn neighbours(&self) -> Vec<Neighbour>;
        fn mac_of(&mut self, ip: IpAddress) -> Option<EthernetAddress>;
        fn addresses_of(&self, name: &str) -> Vec<IpAddress>;
        fn members(&self) -> Vec<(String, Neighbour)>;
        fn maintain(&mut self);
        fn counters(&self) -> &AdapterCounters;
        fn describe(&self) -> String;
    }
}
