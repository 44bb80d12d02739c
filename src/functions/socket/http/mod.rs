//! HTTP/1.1: the sans-IO message codec ([`codec`]) that the HTTP functions
//! share, and the static HTTP server function ([`server`], `kind =
//! "http-server"`), a backend for examples, tests and benchmarks.

pub mod codec;
pub mod proxy;
pub mod server;

pub use proxy::{HttpProxy, HttpProxyConfig};
pub use server::{HttpServer, HttpServerConfig, Route};
