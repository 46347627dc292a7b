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

/// How XDP is attached to an interface now, as `ip link` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attached {
    None,
    Native,
    Generic,
    Offload,
    /// Programs in more than one mode at once.
    Multiple,
    /// A value this build does not know.
    Unknown,
}

/// Asks the kernel (rtnetlink, IFLA_XDP_ATTACHED) how XDP is attached to
/// `interface`. A pinned bpf_link does not record its mode, and a restart
/// keeps whatever mode the link was made with.
pub fn attached(interface: &str) -> io::Result<Attached> {
    use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_REQUEST};
    use netlink_packet_route::{
        link::{LinkAttribute, LinkMessage, LinkXdp, XdpAttached},
        RouteNetlinkMessage,
    };
    use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

    let name = CString::new(interface).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: plain libc call on a NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(io::Error::last_os_error());
    }
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut request = LinkMessage::default();
    request.header.index = index;
    let mut packet = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(RouteNetlinkMessage::GetLink(request)));
    packet.header.flags = NLM_F_REQUEST;
    packet.header.sequence_number = 1;
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    socket.send(&buf, 0)?;

    let mut reply = vec![0; 64 * 1024];
    let size = socket.recv(&mut &mut reply[..], 0)?;
    let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply[..size])
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    let link = match message.payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => link,
        NetlinkPayload::Error(e) => return Err(e.to_io()),
        other => return Err(io::Error::new(io::ErrorKind::InvalidData, format!("unexpected reply {other:?}"))),
    };
    let xdp = link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Xdp(xdp) => xdp.iter().find_map(|x| match x {
            LinkXdp::Attached(mode) => Some(*mode),
            _ => None,
        }),
        _ => None,
    });
    Ok(match xdp {
        None | Some(XdpAttached::None) => Attached::None,
        Some(XdpAttached::Driver) => Attached::Native,
        Some(XdpAttached::SocketBuffer) => Attached::Generic,
        Some(XdpAttached::Hardware) => Attached::Offload,
        Some(XdpAttached::Multiple) => Attached::Multiple,
        Some(_) => Attached::Unknown,
    })
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
    fn loopback_without_xdp_reads_as_none() {
        // A GETLINK needs no privilege; nothing attaches XDP to lo where
        // the unit tests run (the lab tests cover the attached modes).
        assert_eq!(attached("lo").expect("GETLINK lo"), Attached::None);
        assert!(attached("no-such-if0").is_err());
    }

    #[test]
    fn bad_names_are_rejected() {
        assert!(driver_name("a-name-that-is-far-too-long-for-ifnamsiz").is_err());
    }
}
