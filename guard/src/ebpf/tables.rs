//! Puts a list table into the kernel with no window.
//!
//! A new inner array map is created at the table's exact size, filled
//! through mmap (one memcpy instead of a syscall per bucket: 1M names load
//! in well under a second), and swapped into slot 0 of `guard_tables` with
//! one map update. Packets in flight finish on the table they started with;
//! the next packet sees the new one. The old table is freed by the kernel
//! when its last reference goes, so the steady state holds one table.

use std::{
    fs,
    os::fd::{AsFd, AsRawFd},
    time::{Duration, Instant},
};

use aya::maps::{ArrayOfMaps, MapData, MapError};
use guard_ebpf::{abi::guard_bucket, table::Table};

use super::XdpGuard;

// From <linux/bpf.h>.
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_F_MMAPABLE: u32 = 1 << 10;
const BPF_F_INNER_MAP: u32 = 1 << 12;

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("creating a {elements}-bucket table map: {source}")]
    Create { elements: u32, source: MapError },
    #[error("mapping the table into memory: {0}")]
    Mmap(std::io::Error),
    #[error("swapping the table into guard_tables: {0}")]
    Swap(MapError),
    #[error("guard_tables missing from the XDP object")]
    MissingOuter,
}

/// What a swap cost, for the log and for metrics.
#[derive(Debug, Clone)]
pub struct InstallReport {
    pub names: u64,
    pub buckets: u32,
    /// Kernel memory charged to the table map (fdinfo `memlock`).
    pub kernel_bytes: u64,
    pub fill_time: Duration,
}

impl InstallReport {
    pub fn bytes_per_name(&self) -> f64 {
        self.kernel_bytes as f64 / self.names.max(1) as f64
    }
}

impl XdpGuard {
    /// Installs `table` as the active list table.
    pub fn install_table(&mut self, table: &Table) -> Result<InstallReport, TableError> {
        let started = Instant::now();
        let inner = create_table_map(table)?;
        let kernel_bytes = memlock_bytes(&inner).unwrap_or(0);
        let outer = self.ebpf.map_mut("guard_tables").ok_or(TableError::MissingOuter)?;
        let mut outer: ArrayOfMaps<&mut MapData> = ArrayOfMaps::try_from(outer).map_err(TableError::Swap)?;
        outer.set(0, &inner, 0).map_err(TableError::Swap)?;
        Ok(InstallReport {
            names: table.header.nnames,
            buckets: table.header.nbuckets,
            kernel_bytes,
            fill_time: started.elapsed(),
        })
    }
}

/// Creates an inner map holding `table`, filled through mmap.
pub fn create_table_map(table: &Table) -> Result<MapData, TableError> {
    let elements = table.elements();
    let value_size = std::mem::size_of::<guard_bucket>() as u32;
    let obj = aya_obj::Map::new_from_params(BPF_MAP_TYPE_ARRAY, 4, value_size, elements, BPF_F_MMAPABLE | BPF_F_INNER_MAP);
    let map = MapData::create(obj, "guard_table", None).map_err(|source| TableError::Create { elements, source })?;

    // Array elements are laid out back to back at round_up(value_size, 8),
    // which is value_size here (72); the mmap covers whole pages.
    let bytes = elements as usize * value_size as usize;
    let page = 4096;
    let len = bytes.div_ceil(page) * page;
    // SAFETY: the fd is a BPF_F_MMAPABLE array of at least `len` bytes
    // (the kernel rounds the value area up to pages), mapped shared and
    // written only by us before the map is published to the program.
    let mut mmap = unsafe {
        memmap2::MmapOptions::new()
            .len(len)
            .map_mut(map.fd().as_fd().as_raw_fd())
            .map_err(TableError::Mmap)?
    };
    let mut off = 0;
    for chunk in table.as_bytes() {
        mmap[off..off + chunk.len()].copy_from_slice(chunk);
        off += chunk.len();
    }
    drop(mmap);
    Ok(map)
}

/// Kernel memory charged to a map, as `bpftool map show` reports it.
pub fn memlock_bytes(map: &MapData) -> Option<u64> {
    let fd = map.fd().as_fd().as_raw_fd();
    let info = fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
}
