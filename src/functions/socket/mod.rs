//! Socket functions: functions that work on the device's own smoltcp
//! sockets through [`SocketContext`] (attach / poll / detach) rather than
//! on forwarded frames: the diagnostic echo server and probe client, and
//! the protocol functions to come (proxy, cache, management).

#[allow(unused_imports)]
use super::{Function, FunctionConfig, FunctionError, SocketContext, build};

pub mod diag;
