//! A class queue: a FIFO of frames in one byte ring, allocated once (on
//! first use) and reused, so steady state allocates nothing.

use std::collections::VecDeque;

/// A FIFO of frames in one byte ring of `cap` bytes; frames wrap around
/// the end.
#[derive(Debug, Default)]
pub(super) struct Ring {
    buf: Vec<u8>,
    cap: usize,
    head: usize,
    used: usize,
    lens: VecDeque<u32>,
}

impl Ring {
    pub fn new(cap: usize) -> Ring {
        Ring {
            cap,
            ..Ring::default()
        }
    }

    /// Capacity in bytes.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Bytes queued.
    #[inline]
    pub fn used(&self) -> usize {
        self.used
    }

    /// Frames queued.
    #[inline]
    pub fn frames(&self) -> usize {
        self.lens.len()
    }

    /// Length of the head frame.
    #[inline]
    pub fn front_len(&self) -> Option<usize> {
        self.lens.front().map(|&l| l as usize)
    }

    #[inline]
    pub fn fits(&self, len: usize) -> bool {
        len <= self.cap - self.used
    }

    /// Appends a frame; `false` (and no change) if it does not fit.
    #[inline]
    pub fn push(&mut self, f: &[u8]) -> bool {
        if !self.fits(f.len()) {
            return false;
        }
        if self.buf.len() != self.cap {
            self.buf = vec![0; self.cap];
        }
        let mut tail = self.head + self.used;
        if tail >= self.cap {
            tail -= self.cap;
        }
        let first = f.len().min(self.cap - tail);
        self.buf[tail..tail + first].copy_from_slice(&f[..first]);
        self.buf[..f.len() - first].copy_from_slice(&f[first..]);
        self.used += f.len();
        self.lens.push_back(f.len() as u32);
        true
    }

    /// Removes the head frame, copying it into `out` if it fits there;
    /// returns its length.
    #[inline]
    pub fn pop_into(&mut self, out: &mut [u8]) -> Option<usize> {
        let len = self.lens.pop_front()? as usize;
        if len <= out.len() {
            let first = len.min(self.cap - self.head);
            out[..first].copy_from_slice(&self.buf[self.head..self.head + first]);
            out[first..len].copy_from_slice(&self.buf[..len - first]);
        }
        self.used -= len;
        self.head += len;
        if self.head >= self.cap {
            self.head -= self.cap;
        }
        if self.used == 0 {
            // Start over at the front: a queue that keeps emptying stays
            // in the same (cached) bytes.
            self.head = 0;
        }
        Some(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_wrap_round_the_ring_intact() {
        let mut r = Ring::new(10);
        let mut out = [0u8; 10];
        assert!(r.push(&[1, 2, 3, 4]));
        assert!(r.push(&[5, 6, 7, 8]));
        assert!(!r.push(&[0; 3]));
        assert_eq!(r.pop_into(&mut out), Some(4));
        // Two bytes at the end, three at the front.
        assert!(r.push(&[9, 10, 11, 12, 13]));
        assert_eq!((r.used(), r.frames(), r.front_len()), (9, 2, Some(4)));
        assert_eq!(r.pop_into(&mut out), Some(4));
        assert_eq!(out[..4], [5, 6, 7, 8]);
        assert_eq!(r.pop_into(&mut out), Some(5));
        assert_eq!(out[..5], [9, 10, 11, 12, 13]);
        // A frame bigger than `out` is removed, not copied.
        assert!(r.push(&[1; 9]));
        assert_eq!(r.pop_into(&mut out[..4]), Some(9));
        assert_eq!((r.used(), r.frames(), r.front_len()), (0, 0, None));
    }
}
