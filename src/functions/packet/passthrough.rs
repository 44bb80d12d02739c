//! The pass-through function: every frame continues unchanged (the
//! device's own counters show the traffic). It does not look at frames, so
//! trusted frames reach the stack in place, without a copy.
//!
//! ```
//! use shmnet::functions::{Function, Passthrough};
//! assert!(!Passthrough.kind().hooks_ingress);
//! ```

use super::{Function, FunctionKind};

/// Forwards everything unchanged.
#[derive(Debug, Default)]
pub struct Passthrough;

impl Function for Passthrough {
    fn kind(&self) -> FunctionKind {
        FunctionKind::socket("passthrough")
    }
}
