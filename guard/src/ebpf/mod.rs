//! The XDP fast path from userspace: loading and pinning the program
//! (`loader`), choosing an attach mode in which XDP_TX replies really arrive
//! (`attach_mode`), installing list tables atomically (`tables`), and
//! reading the kernel's counters and verdict events (`stats`, `events`,
//! which folds a flood's repeats into counted lines with `coalesce`), and
//! removing the pins of pods that are gone (`sweep`).

pub mod attach_mode;
pub mod coalesce;
pub mod events;
pub mod loader;
pub mod stats;
pub mod sweep;
pub mod tables;

pub use guard_ebpf::abi;
pub use loader::{detach, pin_root, AttachMode, LoaderError, RateLimitSettings, XdpGuard, XdpSettings};
