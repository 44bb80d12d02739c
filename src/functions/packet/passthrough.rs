//! The pass-through function: every frame continues unchanged (the
//! device's own counters show the traffic). It does not look at frames, so
//! trusted frames reach the stack in place, without a copy.
//!
//! ```
//! use shmnet::functions::{Function, Passthrough};
//! assert!(!Passthrough.hooks_ingress());
//! ```

use super::Function;

/// Forwards everything unchanged.
#[derive(Debug, Default)]
pub struct Passthrough;

impl Function for Passthrough {
    fn name(&self) -> &'static str {
        "passthrough"
    }
    fn hooks_ingress(&self) -> bool {
        false
    }
}
