//! Faults a gateway can inject into what it sends, as a lossy link would:
//! loss, reordering, duplication (this kernel has no netem).

use std::net::SocketAddr;

use super::batch::Socket;

/// Faults a gateway injects into what it sends, to show that what crosses
/// it survives a real link (this kernel has no netem). Each is a
/// probability per datagram, 0.0..=1.0; `seed` makes a run repeatable.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Drop the datagram.
    pub loss: f64,
    /// Hold it back and send it after the next one.
    pub reorder: f64,
    /// Send it twice.
    pub duplicate: f64,
    /// Seed of the dice.
    pub seed: u64,
}

impl Faults {
    /// Whether any fault is asked for.
    pub fn any(&self) -> bool {
        self.loss > 0.0 || self.reorder > 0.0 || self.duplicate > 0.0
    }
}

/// The dice of [`Faults`]: splitmix64, enough for coin flips.
struct Dice(u64);

impl Dice {
    /// True with probability `p`.
    fn roll(&mut self, p: f64) -> bool {
        if p <= 0.0 {
            return false;
        }
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        ((z >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

/// A sender that applies [`Faults`], one datagram at a time.
pub struct Lossy {
    faults: Faults,
    dice: Dice,
    /// A datagram held back by [`Faults::reorder`], and where it goes.
    held: Option<(Vec<u8>, SocketAddr)>,
}

impl Lossy {
    /// A sender with these faults.
    pub fn new(faults: Faults) -> Lossy {
        Lossy {
            faults,
            dice: Dice(faults.seed),
            held: None,
        }
    }

    /// Whether any fault is asked for (if not, datagrams go in batches).
    pub fn active(&self) -> bool {
        self.faults.any()
    }

    /// Sends `datagram` to `to` as the faults say: lost, held back until
    /// after the next one, or sent (and perhaps sent twice). Returns
    /// whether it counts as sent (a lost one does, as far as anyone can
    /// tell).
    pub fn send(&mut self, sock: &Socket, datagram: &[u8], to: SocketAddr) -> bool {
        if self.dice.roll(self.faults.loss) {
            return true;
        }
        if self.held.is_none() && self.dice.roll(self.faults.reorder) {
            self.held = Some((datagram.to_vec(), to));
            return true;
        }
        let ok = sock.send_one(to, datagram);
        if self.dice.roll(self.faults.duplicate) {
            sock.send_one(to, datagram);
        }
        self.release(sock);
        ok
    }

    /// Sends the datagram held back, if any: a real link delays, it does
    /// not park, so this runs at the end of each burst at the latest.
    pub fn release(&mut self, sock: &Socket) {
        if let Some((late, to)) = self.held.take() {
            sock.send_one(to, &late);
        }
    }
}
