//! Removes the pins of CoreDNS pods that are gone.
//!
//! Each pod's pins live in `<pin_dir>/<iface>-netns<inode>` on the node's
//! bpffs, so they outlive the pod, and its name tables with them (up to
//! about 12 B per listed name). When a pod's network namespace is torn
//! down its eth0 goes, and the kernel reports ifindex 0 for the XDP link
//! that was attached to it (`bpf_xdp_link_fill_link_info`). Only such a
//! directory is removed: a live pod's link always has its device, and a
//! directory without a link pin may be a pod that is starting right now.

use std::{
    ffi::CString,
    fs, io,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use aya_obj::generated::{bpf_link_info, bpf_link_type};
use guard_ebpf::abi::GUARD_PIN_LINK;
use tracing::{info, warn};

/// `enum bpf_cmd` values from the kernel's uapi linux/bpf.h.
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

/// The `BPF_OBJ_*` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    /// Named so that it is zeroed: the kernel rejects (EINVAL) an attr
    /// with any non-zero byte past its last field, and the compiler's
    /// implicit padding here held whatever was on the stack.
    _pad: u32,
}

/// The `info` member of `union bpf_attr`.
#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

fn bpf(cmd: libc::c_long, attr: *mut libc::c_void, size: usize) -> io::Result<libc::c_long> {
    // SAFETY: `attr` points at a live, initialized attr of `size` bytes.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr, size) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// The ifindex an XDP link pinned at `path` is attached to (0: its device
/// is gone), or `None` when the pin is not an XDP link.
pub fn xdp_link_ifindex(path: &Path) -> io::Result<Option<u32>> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    let mut get = ObjGetAttr { pathname: c_path.as_ptr() as u64, ..Default::default() };
    let fd = bpf(BPF_OBJ_GET, (&mut get as *mut ObjGetAttr).cast(), std::mem::size_of::<ObjGetAttr>())?;
    // SAFETY: BPF_OBJ_GET returned a new fd that we now own.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
    // SAFETY: bpf_link_info is plain old data; all zeroes is a valid value.
    let mut link: bpf_link_info = unsafe { std::mem::zeroed() };
    let mut attr = InfoAttr {
        bpf_fd: std::os::fd::AsRawFd::as_raw_fd(&fd) as u32,
        info_len: std::mem::size_of::<bpf_link_info>() as u32,
        info: (&mut link as *mut bpf_link_info) as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, (&mut attr as *mut InfoAttr).cast(), std::mem::size_of::<InfoAttr>())?;
    if link.type_ != bpf_link_type::BPF_LINK_TYPE_XDP as u32 {
        return Ok(None);
    }
    // SAFETY: the kernel filled the `xdp` member for an XDP link.
    Ok(Some(unsafe { link.__bindgen_anon_1.xdp.ifindex }))
}

/// `<iface>-netns<digits>`: the shape of [`super::pin_root`]'s names.
fn is_pod_dir(name: &str) -> bool {
    name.rsplit_once("-netns").is_some_and(|(iface, ino)| {
        !iface.is_empty() && !ino.is_empty() && ino.bytes().all(|b| b.is_ascii_digit())
    })
}

/// Removes every pod directory under `pin_dir` (other than `own`) whose
/// pinned XDP link has lost its device. Returns the directories removed.
/// Errors are logged and skipped: sweeping is housekeeping, never a reason
/// not to start.
pub fn sweep_gone_pods(pin_dir: &Path, own: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let entries = match fs::read_dir(pin_dir) {
        Ok(e) => e,
        Err(e) => {
            warn!(dir = %pin_dir.display(), error = %e, "cannot list the pin directory; not sweeping");
            return removed;
        }
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        let is_candidate = entry.file_type().is_ok_and(|t| t.is_dir())
            && dir != own
            && entry.file_name().to_str().is_some_and(is_pod_dir);
        if !is_candidate {
            continue;
        }
        let link = dir.join(super::loader::pin_file(GUARD_PIN_LINK));
        match xdp_link_ifindex(&link) {
            Ok(Some(0)) => match fs::remove_dir_all(&dir) {
                Ok(()) => {
                    info!(pins = %dir.display(), "removed the pins of a pod that is gone (its XDP link has no device)");
                    removed.push(dir);
                }
                Err(e) => warn!(pins = %dir.display(), error = %e, "cannot remove the pins of a gone pod"),
            },
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => warn!(link = %link.display(), error = %e, "cannot inspect a pinned link; leaving it"),
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_pod_directories_are_candidates() {
        assert!(is_pod_dir("eth0-netns4026532301"));
        assert!(is_pod_dir("ens-5-netns1"));
        assert!(!is_pod_dir("eth0-netns"));
        assert!(!is_pod_dir("-netns12"));
        assert!(!is_pod_dir("eth0-netns12a"));
        assert!(!is_pod_dir("maps.debug"));
    }

    #[test]
    fn a_missing_pin_is_not_found() {
        let e = xdp_link_ifindex(Path::new("/sys/fs/bpf/dns-guard-test-no-such-pin")).unwrap_err();
        // ENOENT on bpffs; without bpffs or privileges some other error, never a value.
        assert!(matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied), "{e}");
    }
}
