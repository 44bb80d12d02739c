//! Super-packets cut to the network's MTU, as a NIC's segmentation offload
//! would: a VXLAN peer whose kernel passed tunnel GSO through, or a TAP
//! interface with offloads on, hands over one frame carrying many MSS
//! worth of TCP payload (or many UDP datagrams); the network's stations
//! take frames of its MTU only.

use crate::wire::LinkMedium;
pub use crate::wire::gso::Offload;
use crate::wire::gso::segment;

/// One super-packet being handed on a piece at a time.
pub struct Segmenter {
    frame: Vec<u8>,
    kind: Offload,
    /// Payload bytes per piece (0: nothing pending).
    per: usize,
    /// The next piece's index.
    next: usize,
}

impl Default for Segmenter {
    fn default() -> Segmenter {
        Segmenter {
            frame: Vec::new(),
            kind: Offload::Tcp,
            per: 0,
            next: 0,
        }
    }
}

impl Segmenter {
    /// Keeps `frame` to cut, if it is a whole TCP segment (IPv4 or IPv6,
    /// not a fragment) whose headers leave room for payload in a
    /// `cap`-byte frame; `false` (and nothing kept) otherwise.
    pub fn take(&mut self, medium: LinkMedium, frame: &[u8], cap: usize) -> bool {
        let view = crate::wire::FrameView::parse(medium, frame);
        let Some(ip) = view.ip() else { return false };
        let crate::wire::Transport::Tcp { header_len, .. } = ip.transport else {
            return false;
        };
        let head = ip.l4 + usize::from(header_len);
        if head >= cap || ip.end != frame.len() || ip.fragment != crate::wire::Fragment::Whole {
            return false;
        }
        self.take_cut(Offload::Tcp, frame, cap - head);
        true
    }

    /// Keeps `frame` to cut into pieces of `per` payload bytes (the
    /// sender's segment size, when it said so).
    pub fn take_cut(&mut self, kind: Offload, frame: &[u8], per: usize) {
        self.frame.clear();
        self.frame.extend_from_slice(frame);
        self.kind = kind;
        self.per = per;
        self.next = 0;
    }

    /// Writes the next piece into `dst` and returns its length; `None`
    /// when the super-packet is used up (or its piece does not fit).
    pub fn next(&mut self, medium: LinkMedium, dst: &mut [u8]) -> Option<usize> {
        if self.per == 0 {
            return None;
        }
        let n = segment(self.kind, medium, &self.frame, self.per, self.next, dst);
        match n {
            Some(_) => self.next += 1,
            None => self.per = 0,
        }
        n
    }
}
