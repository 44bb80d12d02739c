//! Prometheus text exposition of the devices' counters.
