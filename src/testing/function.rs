//! One function driven by hand, as the functions' unit tests (and the
//! bench) do it: built from its config text, frames handed to its hooks
//! in a copy, its counters read by name, its config errors collected.
//!
//! ```
//! use shmnet::functions::firewall::Firewall;
//! use shmnet::functions::{Role, Verdict};
//! use shmnet::testing::function::{build, config_error, counter, ingress};
//! use shmnet::testing::frames;
//! use shmnet::wire::LinkMedium;
//! use smoltcp::time::Instant;
//!
//! let mut fw = build("default = \"drop\"", Firewall::new);
//! let arp = frames::arp();
//! let (v, out) = ingress(&mut fw, Instant::ZERO, Role::Global, LinkMedium::Ethernet, &arp);
//! assert_eq!((v, out), (Verdict::Pass, arp));
//! assert_eq!(counter(&fw, "accepted"), 1);
//! assert!(config_error("max_connections = 0", Firewall::new).contains("max_connections"));
//! ```

use serde::de::DeserializeOwned;
use smoltcp::time::Instant;

use crate::stack::hook::{Frame, Function, FunctionError, Role, Verdict, counters_of};
use crate::wire::LinkMedium;

/// The function `new` builds from the config section `text` (TOML
/// without `kind`); panics if the text does not parse or the config is
/// refused.
pub fn build<C: DeserializeOwned, F>(
    text: &str,
    new: impl FnOnce(C) -> Result<F, FunctionError>,
) -> F {
    new(toml::from_str(text).expect("test config parses")).expect("valid config")
}

/// Asserts that the config section `text` reads as `built`: a field a
/// file leaves out and a field left to `Default` must be the same value.
pub fn reads_as<C: DeserializeOwned + PartialEq + std::fmt::Debug>(text: &str, built: &C) {
    let read: C = toml::from_str(text).expect("test config parses");
    assert_eq!(&read, built, "{text}");
}

/// The error `new` gives for the config section `text`; panics if the
/// text does not parse or the config is accepted.
pub fn config_error<C: DeserializeOwned, F>(
    text: &str,
    new: impl FnOnce(C) -> Result<F, FunctionError>,
) -> String {
    match new(toml::from_str(text).expect("parses")) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("accepted: {text}"),
    }
}

/// The counter `name` of `f`; panics if it has none by that name.
pub fn counter(f: &dyn Function, name: &str) -> u64 {
    counters_of(f)
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no counter {name}"))
}

/// Asserts `f`'s counters named in `want` have those values.
pub fn counters_are(f: &dyn Function, want: &[(&str, u64)]) {
    for &(name, n) in want {
        assert_eq!(counter(f, name), n, "{name}");
    }
}

/// Runs a copy of `bytes`, a frame of `medium`, through `f`'s ingress hook
/// as if it arrived from `from` at `now`; returns the verdict and the frame
/// after (as long as the function left it).
pub fn ingress(
    f: &mut dyn Function,
    now: Instant,
    from: Role,
    medium: LinkMedium,
    bytes: &[u8],
) -> (Verdict, Vec<u8>) {
    in_a_copy(bytes, medium, |frame| f.on_ingress(now, from, frame))
}

/// [`ingress`] for the egress hook: the device's own stack sent the frame.
pub fn egress(
    f: &mut dyn Function,
    now: Instant,
    medium: LinkMedium,
    bytes: &[u8],
) -> (Verdict, Vec<u8>) {
    in_a_copy(bytes, medium, |frame| f.on_egress(now, frame))
}

/// `hook` on a copy of `bytes`; the verdict and the frame after.
fn in_a_copy(
    bytes: &[u8],
    medium: LinkMedium,
    hook: impl FnOnce(&mut Frame<'_>) -> Verdict,
) -> (Verdict, Vec<u8>) {
    let mut buf = bytes.to_vec();
    let mut frame = Frame::new(&mut buf, bytes.len(), medium);
    let v = hook(&mut frame);
    (v, frame.bytes().to_vec())
}

/// Sends the bare IP packet `packet` through a pair of tunnel ends on the
/// IP medium, in a buffer of `capacity` bytes: into `there` as if from the
/// local network, what comes out into `back` as if from the global one.
/// Asserts that both rewrite the packet and that `back` restores it;
/// returns what travelled between them.
pub fn ip_round_trip(
    there: &mut dyn Function,
    back: &mut dyn Function,
    packet: &[u8],
    capacity: usize,
) -> Vec<u8> {
    let mut buf = packet.to_vec();
    buf.resize(capacity.max(packet.len()), 0);
    let mut f = Frame::new(&mut buf, packet.len(), LinkMedium::Ip);
    assert_eq!(
        there.on_ingress(Instant::ZERO, Role::Local, &mut f),
        Verdict::Modified
    );
    let between = f.bytes().to_vec();
    let mut f = Frame::new(&mut buf, between.len(), LinkMedium::Ip);
    assert_eq!(
        back.on_ingress(Instant::ZERO, Role::Global, &mut f),
        Verdict::Modified
    );
    assert_eq!(f.bytes(), packet, "restored");
    between
}
