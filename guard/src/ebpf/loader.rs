//! Loads the XDP program, pins it with its link and maps, and attaches it.
//!
//! Pinning is what lets the kernel keep enforcing while the sidecar
//! restarts: a restart finds the pinned maps (aya reuses pins by name) and
//! the pinned link, and swaps the freshly loaded program into that link
//! with one `bpf_link_update`, so there is no moment without a program.
//! Needs kernel >= 5.17: bpf_loop (the name walk); also bpf_link for XDP
//! (5.9), BPF_F_INNER_MAP (5.10) and bpf_ktime_get_coarse_ns (5.11).

use std::{
    fs, io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use aya::{
    maps::{Array, MapError},
    programs::{links::FdLink, links::PinnedLink, ProgramError, Xdp, XdpMode},
    EbpfError, EbpfLoader,
};
use guard_ebpf::abi::{guard_action, guard_config, GUARD_ABI_VERSION, GUARD_MAX_PORTS, GUARD_PIN_LINK, GUARD_PIN_PROG};
use tracing::{info, warn};

use super::attach_mode;

const PROGRAM: &str = "dns_guard";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    Auto,
    Native,
    Generic,
}

#[derive(Clone, Debug)]
pub struct RateLimitSettings {
    pub qps: u32,
    pub burst: u32,
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
    pub action: guard_action,
    pub max_clients: u32,
}

/// What the loader needs from the config, decoupled from its YAML shape.
#[derive(Clone, Debug)]
pub struct XdpSettings {
    pub interface: String,
    pub mode: AttachMode,
    pub ports: Vec<u16>,
    pub block_action: guard_action,
    pub ratelimit: RateLimitSettings,
    pub pin_dir: PathBuf,
    /// Fraction of allowed queries also logged (`log.allow_sample`).
    pub allow_sample: f64,
}

impl XdpSettings {
    /// Settings for a program loaded without attaching, for
    /// BPF_PROG_TEST_RUN in tests and benchmarks: NXDOMAIN for blocked
    /// names, rate limit off, nothing sampled.
    pub fn unattached(pin_dir: PathBuf) -> Self {
        Self {
            interface: "lo".into(),
            mode: AttachMode::Generic,
            ports: vec![53],
            block_action: guard_action::GUARD_ACTION_NXDOMAIN,
            ratelimit: RateLimitSettings {
                qps: 0,
                burst: 1,
                ipv4_prefix: 32,
                ipv6_prefix: 64,
                action: guard_action::GUARD_ACTION_DROP,
                max_clients: 1024,
            },
            pin_dir,
            allow_sample: 0.0,
        }
    }
}

/// `log.allow_sample` as the kernel's threshold for a random u32.
fn sample_threshold(fraction: f64) -> u32 {
    if fraction >= 1.0 {
        u32::MAX
    } else if fraction <= 0.0 {
        0
    } else {
        ((fraction * 4_294_967_296.0) as u32).max(1)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error("interface {0} not found in this network namespace; set `interface:` in the config (in a pod: eth0)")]
    NoInterface(String),
    #[error("{path} is not on a bpf filesystem; mount one (`mount -t bpf bpf /sys/fs/bpf`) or, in Kubernetes, mount the host's /sys/fs/bpf into the sidecar")]
    NotBpfFs { path: PathBuf },
    #[error("creating pin directory {path}: {source}")]
    PinDir { path: PathBuf, source: io::Error },
    #[error("loading the XDP object (are you root, with CAP_BPF and CAP_NET_ADMIN?): {0}")]
    Load(#[from] EbpfError),
    #[error("XDP program: {0}")]
    Program(#[from] ProgramError),
    #[error("map {name}: {source}")]
    Map { name: &'static str, source: MapError },
    #[error("map {0} missing from the XDP object")]
    MissingMap(&'static str),
    #[error("pinned state in {path} is from ABI version {found}, this build uses {ours}; run `dns-guard detach --config FILE` first")]
    AbiMismatch { path: PathBuf, found: u32, ours: u32 },
    #[error("the pinned map {path} ({found}) is another build's, this one's is {ours}; run `dns-guard detach --config FILE` first")]
    PinnedLayout { path: PathBuf, found: String, ours: String },
    #[error("pinning {what} at {path}: {reason}")]
    Pin { what: &'static str, path: PathBuf, reason: String },
    #[error("attaching XDP to {interface} in {mode:?} mode: {source}")]
    Attach { interface: String, mode: XdpMode, source: ProgramError },
}

/// The rate-limit map keeps the size it was pinned with (the loader reuses
/// a pin as it is), so a changed `xdp.ratelimit.max_clients` would be
/// ignored until `dns-guard detach`. Such a pin is dropped here and the
/// load makes a new map of the new size: every client's bucket starts full
/// again, as after a restart with no pins. The attached program keeps the
/// old map until the new one replaces it.
fn resize_pinned_ratelimit(pin_root: &Path, max_clients: u32) {
    let path = pin_root.join(RATELIMIT_MAP);
    let Ok(pinned) = aya::maps::MapInfo::from_pin(&path) else { return };
    if pinned.max_entries() != max_clients {
        info!(was = pinned.max_entries(), now = max_clients, "xdp.ratelimit.max_clients changed: a new rate-limit map, every bucket full again");
        if let Err(e) = fs::remove_file(&path) {
            warn!(path = %path.display(), error = %e, "cannot unpin the rate-limit map; it keeps its old size");
        }
    }
}

/// Refuses pins another build made (a rollback after an upgrade, say): a
/// map whose type or key or value size differs from this object's. aya
/// reuses a pin as it is and sizes its reads by our definition, so reading
/// a larger value would overrun our buffer before the ABI version check
/// could say no; a smaller one would fail verification with no hint why.
fn check_pinned_layouts(pin_root: &Path, object: &[u8]) -> Result<(), LoaderError> {
    let obj = aya_obj::Object::parse(object).map_err(EbpfError::from)?;
    for (name, def) in &obj.maps {
        let path = pin_root.join(name);
        let Ok(pinned) = aya::maps::MapInfo::from_pin(&path) else { continue };
        let kind = pinned.map_type().map(|t| t as u32).unwrap_or(u32::MAX);
        let (found, ours) = (
            (kind, pinned.key_size(), pinned.value_size()),
            (def.map_type(), def.key_size(), def.value_size()),
        );
        if found != ours {
            let show = |(t, k, v): (u32, u32, u32)| format!("map type {t}, {k}-byte keys, {v}-byte values");
            return Err(LoaderError::PinnedLayout { path, found: show(found), ours: show(ours) });
        }
    }
    Ok(())
}

/// The rate-limit map's name in the object, and its pin's.
const RATELIMIT_MAP: &str = "guard_ratelimit";

/// A pin file name from the ABI header (bindgen makes it a C string).
pub(crate) fn pin_file(c_name: &'static [u8]) -> &'static str {
    std::str::from_utf8(c_name.strip_suffix(&[0]).unwrap_or(c_name)).expect("ASCII pin names")
}

/// The directory that holds this interface's pins: one per pod network
/// namespace and interface, so CoreDNS replicas on one node never share.
pub fn pin_root(pin_dir: &Path, interface: &str) -> io::Result<PathBuf> {
    let netns = fs::metadata("/proc/self/ns/net")?.ino();
    Ok(pin_dir.join(format!("{interface}-netns{netns}")))
}

/// A loaded, attached and pinned guard.
pub struct XdpGuard {
    pub(crate) ebpf: aya::Ebpf,
    pub pin_root: PathBuf,
    /// "native", "generic", or "reused" when a pinned link was taken over.
    pub attach: &'static str,
}

impl XdpGuard {
    /// Loads the program, reusing any pinned state, and attaches it.
    pub fn start(settings: &XdpSettings) -> Result<Self, LoaderError> {
        let interface = &settings.interface;
        let c_name = std::ffi::CString::new(interface.as_str()).map_err(|_| LoaderError::NoInterface(interface.clone()))?;
        // SAFETY: plain libc call on a NUL-terminated string.
        if unsafe { libc::if_nametoindex(c_name.as_ptr()) } == 0 {
            return Err(LoaderError::NoInterface(interface.clone()));
        }
        ensure_bpffs(&settings.pin_dir)?;
        let pin_root = pin_root(&settings.pin_dir, interface)
            .map_err(|source| LoaderError::PinDir { path: settings.pin_dir.clone(), source })?;
        fs::create_dir_all(&pin_root).map_err(|source| LoaderError::PinDir { path: pin_root.clone(), source })?;

        check_pinned_layouts(&pin_root, guard_ebpf::XDP_OBJECT)?;
        resize_pinned_ratelimit(&pin_root, settings.ratelimit.max_clients);
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&pin_root)
            .map_max_entries(RATELIMIT_MAP, settings.ratelimit.max_clients)
            .load(guard_ebpf::XDP_OBJECT)?;

        write_config(&mut ebpf, settings, &pin_root)?;

        let prog: &mut Xdp = ebpf
            .program_mut(PROGRAM)
            .expect("the object defines dns_guard")
            .try_into()?;
        prog.load()?;

        let link_path = pin_root.join(pin_file(GUARD_PIN_LINK));
        let attach = match take_over_pinned_link(prog, &link_path) {
            Some(()) => {
                warn_if_mode_differs(settings);
                "reused"
            }
            None => attach_fresh(prog, settings, &link_path)?,
        };

        // The program pin is for operators (bpftool prog show pinned ...);
        // the link pin is what keeps the program attached.
        let prog_path = pin_root.join(pin_file(GUARD_PIN_PROG));
        let _ = fs::remove_file(&prog_path);
        prog.pin(&prog_path).map_err(|e| LoaderError::Pin { what: "program", path: prog_path, reason: e.to_string() })?;

        info!(interface = %interface, attach, pins = %pin_root.display(), "XDP program attached");
        super::sweep::sweep_gone_pods(&settings.pin_dir, &pin_root);
        Ok(Self { ebpf, pin_root, attach })
    }

    /// Loads and configures the program without attaching it, pinning maps
    /// under `pin_root`: for BPF_PROG_TEST_RUN in tests and benchmarks.
    pub fn load_detached(settings: &XdpSettings, pin_root: &Path) -> Result<Self, LoaderError> {
        Self::load_detached_object(settings, pin_root, guard_ebpf::XDP_OBJECT)
    }

    /// [`Self::load_detached`] with another build of the program (same
    /// maps and ABI): lets the benchmark run variants side by side.
    pub fn load_detached_object(settings: &XdpSettings, pin_root: &Path, object: &[u8]) -> Result<Self, LoaderError> {
        fs::create_dir_all(pin_root).map_err(|source| LoaderError::PinDir { path: pin_root.into(), source })?;
        check_pinned_layouts(pin_root, object)?;
        resize_pinned_ratelimit(pin_root, settings.ratelimit.max_clients);
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_root)
            .map_max_entries(RATELIMIT_MAP, settings.ratelimit.max_clients)
            .load(object)?;
        write_config(&mut ebpf, settings, pin_root)?;
        let prog: &mut Xdp = ebpf.program_mut(PROGRAM).expect("the object defines dns_guard").try_into()?;
        prog.load()?;
        Ok(Self { ebpf, pin_root: pin_root.into(), attach: "detached" })
    }

    /// The loaded program, for `test_run`.
    pub fn program(&self) -> &Xdp {
        self.ebpf.program(PROGRAM).expect("the object defines dns_guard").try_into().expect("an XDP program")
    }

    /// Rewrites the runtime knobs (actions, ports, rate limit) in place.
    pub fn configure(&mut self, settings: &XdpSettings) -> Result<(), LoaderError> {
        write_config(&mut self.ebpf, settings, &self.pin_root)
    }
}

fn ensure_bpffs(dir: &Path) -> Result<(), LoaderError> {
    // The pin dir itself may not exist yet; its nearest existing ancestor
    // must be on bpffs, or pins would silently land on tmpfs and vanish.
    let mut probe = dir.to_path_buf();
    while !probe.exists() {
        if !probe.pop() {
            break;
        }
    }
    let c = std::ffi::CString::new(probe.as_os_str().as_encoded_bytes()).map_err(|_| LoaderError::NotBpfFs { path: dir.into() })?;
    // SAFETY: statfs writes into the zeroed struct we own.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is NUL-terminated; st is a valid out-pointer.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 || st.f_type as i64 != BPF_FS_MAGIC {
        return Err(LoaderError::NotBpfFs { path: dir.into() });
    }
    Ok(())
}

fn write_config(ebpf: &mut aya::Ebpf, settings: &XdpSettings, pin_root: &Path) -> Result<(), LoaderError> {
    let map = ebpf.map_mut("guard_config").ok_or(LoaderError::MissingMap("guard_config"))?;
    let mut config: Array<_, guard_config> =
        Array::try_from(map).map_err(|source| LoaderError::Map { name: "guard_config", source })?;
    let old = config.get(&0, 0).map_err(|source| LoaderError::Map { name: "guard_config", source })?;
    if old.abi_version != 0 && old.abi_version != GUARD_ABI_VERSION {
        return Err(LoaderError::AbiMismatch { path: pin_root.into(), found: old.abi_version, ours: GUARD_ABI_VERSION });
    }
    let mut ports = [0u16; GUARD_MAX_PORTS as usize];
    for (slot, port) in ports.iter_mut().zip(&settings.ports) {
        *slot = *port;
    }
    let rl = &settings.ratelimit;
    let new = guard_config {
        abi_version: GUARD_ABI_VERSION,
        block_action: settings.block_action as u8,
        rl_action: rl.action as u8,
        ipv4_prefix: rl.ipv4_prefix,
        ipv6_prefix: rl.ipv6_prefix,
        rl_qps: rl.qps,
        rl_burst: rl.burst.max(1),
        ports,
        nports: settings.ports.len().min(GUARD_MAX_PORTS as usize) as u32,
        allow_sample: sample_threshold(settings.allow_sample),
        // Owned by crate::dynblock, which keeps it equal to the entries
        // of guard_dynblock: a reconfigure must not hide live blocks.
        dynblocks: if old.abi_version == GUARD_ABI_VERSION { old.dynblocks } else { 0 },
    };
    config.set(0, new, 0).map_err(|source| LoaderError::Map { name: "guard_config", source })
}

/// Swaps the new program into a link pinned by an earlier run. Returns
/// `None` when there is no usable link (clean node, or the interface it was
/// attached to is gone), and removes a stale pin.
fn take_over_pinned_link(prog: &mut Xdp, link_path: &Path) -> Option<()> {
    if !link_path.exists() {
        return None;
    }
    let result = PinnedLink::from_pin(link_path)
        .map_err(|e| e.to_string())
        .and_then(|pinned| {
            let fd_link: FdLink = pinned.into();
            let link = aya::programs::xdp::XdpLink::try_from(fd_link).map_err(|e| e.to_string())?;
            prog.attach_to_link(link).map_err(|e| e.to_string())
        });
    match result {
        Ok(_) => {
            info!(link = %link_path.display(), "re-using the pinned XDP link: no gap in enforcement");
            Some(())
        }
        Err(e) => {
            // The pin stays until a fresh attach has succeeded: if the old
            // link still enforces, that attach fails (EBUSY) and the old
            // program keeps running rather than leaving eth0 unguarded.
            warn!(link = %link_path.display(), error = %e, "pinned XDP link unusable; attaching afresh");
            None
        }
    }
}

/// A reused link keeps the mode it was made with, whatever `xdp.mode` says
/// now: say so when they differ, since in native mode on a veth the
/// synthesized replies are lost. Auto accepts generic anywhere (its own
/// fallback), but not native where it would have chosen generic.
fn warn_if_mode_differs(settings: &XdpSettings) {
    let interface = &settings.interface;
    let attached = match attach_mode::attached(interface) {
        Ok(mode) => mode,
        Err(e) => {
            warn!(interface = %interface, error = %e, "cannot read the XDP attach mode of the pinned link");
            return;
        }
    };
    let prefers_generic = || attach_mode::prefers_generic(&attach_mode::driver_name(interface).unwrap_or_default());
    use attach_mode::Attached;
    let differs = match (settings.mode, attached) {
        (AttachMode::Native, Attached::Generic) | (AttachMode::Generic, Attached::Native) => true,
        (AttachMode::Auto, Attached::Native) => prefers_generic(),
        // Just after taking over a link, nothing (or something else too) on
        // the interface means another tool is at work there.
        (_, Attached::None | Attached::Multiple | Attached::Unknown) => {
            warn!(interface = %interface, attached = ?attached, "unexpected XDP state after taking over the pinned link");
            return;
        }
        _ => false,
    };
    if differs {
        warn!(
            interface = %interface,
            configured = ?settings.mode,
            pinned = ?attached,
            "xdp.mode differs from the pinned link's mode, which a restart keeps; \
             to change it, stop dns-guard, run `dns-guard detach --config FILE`, and start it again"
        );
    } else {
        info!(interface = %interface, mode = ?attached, "the pinned link's attach mode");
    }
}

fn attach_fresh(prog: &mut Xdp, settings: &XdpSettings, link_path: &Path) -> Result<&'static str, LoaderError> {
    let interface = &settings.interface;
    let (first, fallback) = match settings.mode {
        AttachMode::Generic => (XdpMode::Skb, None),
        AttachMode::Native => {
            let driver = attach_mode::driver_name(interface).unwrap_or_default();
            if driver == "veth" {
                warn!(
                    interface = %interface,
                    "native XDP on a veth: synthesized replies (XDP_TX) are silently lost unless the peer \
                     has an XDP program; use `mode: auto` or `generic` unless you have arranged that"
                );
            }
            (XdpMode::Driver, None)
        }
        AttachMode::Auto => {
            let driver = attach_mode::driver_name(interface).unwrap_or_default();
            if attach_mode::prefers_generic(&driver) {
                info!(interface = %interface, driver = %driver, "auto: generic mode, where XDP_TX replies are delivered on this driver");
                (XdpMode::Skb, None)
            } else {
                (XdpMode::Driver, Some(XdpMode::Skb))
            }
        }
    };
    let (id, mode) = match prog.attach(interface, first) {
        Ok(id) => (id, first),
        Err(e) => match fallback {
            Some(mode) => {
                warn!(interface = %interface, error = %e, "native XDP unavailable; falling back to generic mode");
                let id = prog
                    .attach(interface, mode)
                    .map_err(|source| LoaderError::Attach { interface: interface.clone(), mode, source })?;
                (id, mode)
            }
            None => return Err(LoaderError::Attach { interface: interface.clone(), mode: first, source: e }),
        },
    };
    let link = prog.take_link(id)?;
    let fd_link = FdLink::try_from(link).map_err(|e| LoaderError::Pin {
        what: "link",
        path: link_path.into(),
        reason: format!("the kernel attached XDP through netlink, not a bpf_link, so it cannot be pinned: {e}"),
    })?;
    // Only now is the old pin (a link whose interface is gone) replaced.
    let _ = fs::remove_file(link_path);
    fd_link
        .pin(link_path)
        .map_err(|e| LoaderError::Pin { what: "link", path: link_path.into(), reason: e.to_string() })?;
    Ok(if mode == XdpMode::Skb { "generic" } else { "native" })
}

/// What `detach` removed.
#[derive(Debug, Default)]
pub struct DetachReport {
    pub pin_root: PathBuf,
    pub link_removed: bool,
    pub pins_removed: usize,
}

/// Detaches the program and removes every pin of this interface. A running
/// `dns-guard run` keeps its own link fd: stop it first.
pub fn detach(pin_dir: &Path, interface: &str) -> io::Result<DetachReport> {
    let root = pin_root(pin_dir, interface)?;
    let mut report = DetachReport { pin_root: root.clone(), ..Default::default() };
    let link_path = root.join(pin_file(GUARD_PIN_LINK));
    if link_path.exists() {
        match PinnedLink::from_pin(&link_path) {
            // Unpinning drops the last reference: the kernel detaches.
            Ok(link) => {
                link.unpin()?;
                report.link_removed = true;
            }
            Err(e) => {
                warn!(link = %link_path.display(), error = %e, "removing unreadable link pin");
                fs::remove_file(&link_path)?;
            }
        }
    }
    if root.exists() {
        for entry in fs::read_dir(&root)? {
            fs::remove_file(entry?.path())?;
            report.pins_removed += 1;
        }
        fs::remove_dir(&root)?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs root and bpffs, as the kernel fixtures do.
    fn privileged(test: &str) -> bool {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 && Path::new("/sys/fs/bpf").exists() {
            return true;
        }
        assert!(std::env::var_os("CI").is_none(), "privileged test cannot run in CI: needs root and bpffs");
        // Straight to fd 2: the test harness captures eprintln!.
        let _ = io::Write::write_all(&mut io::stderr(), format!("\n*** SKIPPED: needs root and bpffs: {test} ***\n").as_bytes());
        false
    }

    /// A rollback after an upgrade finds the newer build's pins: a
    /// `guard_config` with larger values is refused before it is read, and
    /// the pins of this build's own are reused as before.
    #[test]
    fn pins_of_another_layout_are_refused_before_anything_reads_them() {
        if !privileged("pins_of_another_layout_are_refused_before_anything_reads_them") {
            return;
        }
        let pin_root = PathBuf::from(format!("/sys/fs/bpf/dg-layout-test-{}", std::process::id()));
        let settings = XdpSettings::unattached(pin_root.clone());
        let result = std::panic::catch_unwind(|| {
            fs::create_dir_all(&pin_root).unwrap();
            let config = pin_root.join("guard_config");
            let made = std::process::Command::new("bpftool")
                .args(["map", "create"])
                .arg(&config)
                .args(["type", "array", "key", "4", "value", "96", "entries", "1", "name", "guard_config"])
                .status()
                .expect("bpftool");
            assert!(made.success(), "bpftool map create");
            let err = XdpGuard::load_detached(&settings, &pin_root).err().expect("a foreign pin must be refused");
            let text = err.to_string();
            assert!(matches!(err, LoaderError::PinnedLayout { .. }), "{text}");
            assert!(text.contains("guard_config") && text.contains("96-byte values") && text.contains("44-byte values"), "{text}");
            fs::remove_file(&config).unwrap();
            drop(XdpGuard::load_detached(&settings, &pin_root).expect("fresh pins"));
            drop(XdpGuard::load_detached(&settings, &pin_root).expect("our own pins, reused"));
        });
        let _ = fs::remove_dir_all(&pin_root);
        if let Err(e) = result {
            std::panic::resume_unwind(e);
        }
    }
}
