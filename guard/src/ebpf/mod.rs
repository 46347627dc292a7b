//! TODO: the eBPF loader, maps and events
