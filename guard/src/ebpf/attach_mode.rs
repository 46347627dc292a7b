//! Which XDP mode to attach in.
//!
//! `auto` must pick a mode in which synthesized replies (XDP_TX) reach the
//! client. Measured on kernel 6.18: on a veth whose peer has no XDP program,
//! XDP_TX in native (driver) mode is silently lost, while generic (skb) mode
//! delivers it. CoreDNS pods sit on veth (or ipvlan/macvlan, which have no
//! native XDP) in nearly every CNI, so auto means generic there, and native
//! with a generic fallback on a real NIC.

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

/// The kernel driver behind an interface, as `ethtool -i` reports it.
pub fn driver_name(interface: &str) -> io::Result<String> {
    // struct ethtool_drvinfo from <linux/ethtool.h>; only the head is read.
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        version: [u8; 32],
        fw_version: [u8; 32],
        bus_info: [u8; 32],
        erom_version: [u8; 32],
        reserved2: [u8; 12],
        n_priv_flags: u32,
        n_stats: u32,
        testinfo_len: u32,
        eedump_len: u32,
        regdump_len: u32,
    }
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        data: *mut DrvInfo,
        _pad: [u8; 16],
    }
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_GDRVINFO: u32 = 0x3;

    let name = CString::new(interface).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let bytes = name.as_bytes_with_nul();
    if bytes.len() > libc::IFNAMSIZ {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    // SAFETY: all-zero is a valid DrvInfo.
    let mut info: DrvInfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    let mut req = IfReq { name: [0; libc::IFNAMSIZ], data: &mut info, _pad: [0; 16] };
    req.name[..bytes.len()].copy_from_slice(bytes);

    // SAFETY: plain socket(2); the fd is owned and closed below.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: sock is a fresh fd we own.
    let sock = unsafe { OwnedFd::from_raw_fd(sock) };
    // SAFETY: SIOCETHTOOL reads req and writes through req.data, both live.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL, &mut req) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let end = info.driver.iter().position(|&b| b == 0).unwrap_or(info.driver.len());
    Ok(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

/// Drivers on which native XDP_TX is lost or native XDP is absent.
pub fn prefers_generic(driver: &str) -> bool {
    matches!(driver, "veth" | "ipvlan" | "macvlan" | "bridge" | "dummy" | "tun" | "vxlan" | "geneve")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_has_no_ethtool_driver_but_does_not_panic() {
        // `lo` answers GDRVINFO with EOPNOTSUPP on most kernels; either way
        // the call must return, not crash, and never name a driver that
        // would push `auto` to generic mode.
        assert!(!driver_name("lo").is_ok_and(|d| prefers_generic(&d)));
    }

    #[test]
    fn veth_prefers_generic() {
        assert!(prefers_generic("veth"));
        assert!(!prefers_generic("mlx5_core"));
    }

    #[test]
    fn bad_names_are_rejected() {
        assert!(driver_name("a-name-that-is-far-too-long-for-ifnamsiz").is_err());
    }
}
