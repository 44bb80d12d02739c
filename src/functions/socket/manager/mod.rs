//! `kind = "manager"`: network management. The manager device polls every
//! device's management agent over the networks, serves Prometheus
//! `/metrics` and a JSON API over HTTP on its own stack, probes devices and
//! services actively, and runs the policy engine that changes devices'
//! functions when its rules say so.

pub mod api;
pub mod metrics;
pub mod policy;
