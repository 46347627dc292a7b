//! dns-guard: an XDP DNS query guard and a validating forwarder for the
//! CoreDNS pod. `main.rs` only wires these modules together.

pub mod admin;
pub mod app;
pub mod config;
pub mod dynblock;
pub mod ebpf;
pub mod k8s;
pub mod lists;
pub mod metrics;
pub mod proxy;
pub mod verdict;
pub mod watch;
