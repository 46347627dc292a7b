//! The random-subdomain ("water torture") defence. A flood of random names
//! under one zone misses every cache, so each query costs CoreDNS, the
//! proxy, the upstream and the zone's servers a full lookup, and the
//! per-client rate limit cannot tell it from a busy cluster when it comes
//! through many sources. What gives it away is the answers: one zone failing
//! (NXDOMAIN, SERVFAIL, or no answer) for many different names at once.
//!
//! The proxy reports every failed lookup here with its zone. A zone over
//! `proxy.random_subdomain.threshold` failures within `window_s` gets its
//! subdomains blocked for `block_s`, as dnsdist's suffix-match dynamic
//! blocks do: in the kernel (`guard_dynblock`, so the flood stops at XDP
//! before CoreDNS sees it) when XDP is on, and in the proxy always (TCP
//! clients, proxy-only mode). The zone apex keeps resolving, and neither a
//! zone in `exempt`, nor one on an allowlist, nor a public suffix is ever
//! blocked.

use std::{
    collections::HashMap,
    path::Path,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex, RwLock,
    },
    time::{Duration, Instant},
};

use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData, MapError};
use dashmap::DashMap;
use guard_ebpf::{
    abi::{guard_action, guard_config, guard_dynblock, GUARD_DYNBLOCK_MAX},
    table::name_key,
};
use tracing::{debug, warn};

use crate::{
    config::{DynBlockAction, RandomSubdomainConfig},
    metrics::Metrics,
    verdict::{Verdict, VerdictLog},
};

/// Zones tracked in the failure windows; past it, stale windows are swept
/// and a still-full table stops tracking new zones until the next sweep.
const MAX_TRACKED_ZONES: usize = 65_536;
/// Zones blocked at once. The kernel map holds each under up to two seeds
/// (during a list reload), so this is half of its size.
pub const MAX_BLOCKED_ZONES: usize = GUARD_DYNBLOCK_MAX as usize / 2;

#[derive(Debug, thiserror::Error)]
pub enum DynBlockError {
    #[error("cannot open the pinned map {path}: {source}; restart dns-guard so it re-creates its pins")]
    Open { path: String, source: MapError },
    #[error("cannot update the kernel's dynamic blocks: {0}")]
    Update(#[from] MapError),
}

/// Failures of one zone in its current window.
struct Window {
    start: Instant,
    failures: u32,
}

/// A zone under a block.
#[derive(Debug, Clone, Copy)]
struct Block {
    until: Instant,
}

pub struct DynBlocks {
    cfg: RandomSubdomainConfig,
    windows: DashMap<String, Window>,
    blocked: RwLock<HashMap<String, Block>>,
    /// `blocked.len()`, read without the lock on every proxied query.
    nblocked: AtomicUsize,
    kernel: Mutex<Option<KernelBlocks>>,
    log: Arc<VerdictLog>,
    metrics: Metrics,
}

impl DynBlocks {
    /// `dry_run` (`xdp.action: log`) makes every block a `log` block, in
    /// the kernel entry, the proxy's answer and the line that starts it,
    /// whatever `cfg.action` says: a dry run blocks nothing.
    pub fn new(mut cfg: RandomSubdomainConfig, dry_run: bool, log: Arc<VerdictLog>, metrics: Metrics) -> Self {
        if dry_run {
            cfg.action = DynBlockAction::Log;
        }
        DynBlocks {
            cfg,
            windows: DashMap::new(),
            blocked: RwLock::new(HashMap::new()),
            nblocked: AtomicUsize::new(0),
            kernel: Mutex::new(None),
            log,
            metrics,
        }
    }

    pub fn enabled(&self) -> bool {
        self.cfg.threshold > 0
    }

    pub fn action(&self) -> DynBlockAction {
        self.cfg.action
    }

    /// Enforces blocks in the kernel too, once a table's seed is added.
    /// Entries an earlier run left behind are cleared: they are keyed by
    /// a seed no table of this run will use.
    pub fn attach_kernel(&self, pin_root: &Path) -> Result<(), DynBlockError> {
        let mut k = KernelBlocks::open(pin_root)?;
        k.clear()?;
        *self.kernel.lock().unwrap_or_else(|p| p.into_inner()) = Some(k);
        Ok(())
    }

    /// Before a new name table goes live: every block is keyed under its
    /// seed too, so there is no moment in which the kernel checks keys it
    /// does not hold.
    pub fn add_seed(&self, seed: u64) {
        // The zones are read under the kernel lock: a block started
        // meanwhile either is in this list or inserts under the new seed
        // itself once it gets the lock.
        let mut kernel = self.kernel.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = kernel.as_mut() {
            k.seeds.push(seed);
            for (zone, until) in &self.live_zones() {
                if let Err(e) = k.insert_under(zone, *until, seed, self.cfg.action) {
                    warn!(zone, error = %e, "cannot key a dynamic block under the new table's seed");
                }
            }
            k.update_count();
        }
    }

    /// After the table swap: the old table's keys go, those of blocks that
    /// ran out but are not swept yet too (`expire` removes keys only under
    /// the seeds still in use).
    pub fn retire_seed(&self, seed: u64) {
        let mut kernel = self.kernel.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = kernel.as_mut() {
            k.seeds.retain(|&s| s != seed);
            let zones: Vec<String> = self.blocked.read().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect();
            for zone in &zones {
                k.remove_under(zone, seed);
            }
            k.update_count();
        }
    }

    /// The blocked zone `qname` is a proper subdomain of, if any.
    pub fn blocked_zone(&self, qname: &str) -> Option<String> {
        if self.nblocked.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let now = Instant::now();
        let blocked = self.blocked.read().unwrap_or_else(|p| p.into_inner());
        proper_suffixes(qname).find(|z| blocked.get(*z).is_some_and(|b| b.until > now)).map(str::to_string)
    }

    /// One failed lookup under `zone`. `allowlisted` says whether the zone
    /// is covered by an allowlist (which always wins over a block).
    pub fn note_failure(&self, zone: &str, allowlisted: impl FnOnce(&str) -> bool) {
        if !self.enabled() || is_public_suffix(zone) || self.is_exempt(zone) {
            return;
        }
        let now = Instant::now();
        let window = Duration::from_secs(self.cfg.window_s);
        if self.windows.len() >= MAX_TRACKED_ZONES && !self.windows.contains_key(zone) {
            self.windows.retain(|_, w| now.duration_since(w.start) < window);
            if self.windows.len() >= MAX_TRACKED_ZONES {
                return;
            }
        }
        let failures = {
            let mut w = self.windows.entry(zone.to_string()).or_insert(Window { start: now, failures: 0 });
            if now.duration_since(w.start) >= window {
                *w = Window { start: now, failures: 0 };
            }
            w.failures += 1;
            w.failures
        };
        if failures <= self.cfg.threshold || self.blocked_zone_exact(zone, now) || allowlisted(zone) {
            return;
        }
        self.start(zone, failures, now);
    }

    fn blocked_zone_exact(&self, zone: &str, now: Instant) -> bool {
        let blocked = self.blocked.read().unwrap_or_else(|p| p.into_inner());
        blocked.get(zone).is_some_and(|b| b.until > now)
    }

    fn is_exempt(&self, zone: &str) -> bool {
        self.cfg.exempt.iter().any(|e| zone == e || zone.strip_suffix(e.as_str()).is_some_and(|p| p.ends_with('.')))
    }

    fn start(&self, zone: &str, failures: u32, now: Instant) {
        let until = now + Duration::from_secs(self.cfg.block_s);
        // The kernel lock first, as `add_seed` and `retire_seed` take it: a
        // block and its keys change together, so no reload falls between.
        let mut kernel = self.kernel.lock().unwrap_or_else(|p| p.into_inner());
        let lifted = {
            let mut blocked = self.blocked.write().unwrap_or_else(|p| p.into_inner());
            if blocked.get(zone).is_some_and(|b| b.until > now) {
                return; // another task got here first
            }
            let mut lifted = Vec::new();
            if blocked.len() >= MAX_BLOCKED_ZONES {
                lifted.extend(blocked.iter().filter(|(_, b)| b.until <= now).map(|(z, _)| z.clone()));
                for z in &lifted {
                    blocked.remove(z);
                }
            }
            let room = blocked.len() < MAX_BLOCKED_ZONES;
            if room {
                blocked.insert(zone.to_string(), Block { until });
            }
            self.nblocked.store(blocked.len(), Ordering::Relaxed);
            (lifted, room)
        };
        // Swept here, their kernel keys go here too: `expire` no longer sees them.
        let (lifted, room) = lifted;
        if let Some(k) = kernel.as_mut() {
            for z in &lifted {
                k.remove(z);
            }
        }
        if !room {
            drop(kernel);
            warn!(zone, "too many zones under dynamic blocks; not blocking this one");
            return;
        }
        let in_kernel = match kernel.as_mut() {
            Some(k) => match k.insert(zone, until, self.cfg.action) {
                Ok(()) => "xdp+proxy",
                Err(e) => {
                    warn!(zone, error = %e, "dynamic block not set in the kernel; the proxy still enforces it");
                    "proxy"
                }
            },
            None => "proxy",
        };
        drop(kernel);
        self.metrics.dynblocks_started.inc();
        self.metrics.dynblocks_active.set(self.nblocked.load(Ordering::Relaxed) as i64);
        let mut v = Verdict::new("proxy", "random-subdomain", self.cfg.action.as_str(), "failed-lookups");
        v.rule = Some(format!("*.{zone}"));
        v.list = Some(in_kernel.into());
        v.qname = Some(zone.to_string());
        v.count = u64::from(failures);
        warn!(
            zone,
            failures,
            window_s = self.cfg.window_s,
            block_s = self.cfg.block_s,
            enforced_in = in_kernel,
            "random-subdomain flood: blocking the zone's subdomains"
        );
        self.log.emit(v);
    }

    /// Lifts blocks whose time is up and forgets idle windows. Called
    /// about once a second; the kernel also ignores expired entries by
    /// itself, so a late sweep only costs a map slot.
    pub fn expire(&self) {
        let now = Instant::now();
        let window = Duration::from_secs(self.cfg.window_s);
        self.windows.retain(|_, w| now.duration_since(w.start) < window);
        // Kernel first, as in `start`: a reload's `retire_seed` sees the
        // block with its keys or neither.
        let mut kernel = self.kernel.lock().unwrap_or_else(|p| p.into_inner());
        let lifted: Vec<String> = {
            let mut blocked = self.blocked.write().unwrap_or_else(|p| p.into_inner());
            let gone: Vec<String> = blocked.iter().filter(|(_, b)| b.until <= now).map(|(z, _)| z.clone()).collect();
            for z in &gone {
                blocked.remove(z);
            }
            self.nblocked.store(blocked.len(), Ordering::Relaxed);
            gone
        };
        if lifted.is_empty() {
            return;
        }
        if let Some(k) = kernel.as_mut() {
            for z in &lifted {
                k.remove(z);
            }
        }
        drop(kernel);
        self.metrics.dynblocks_active.set(self.nblocked.load(Ordering::Relaxed) as i64);
        for z in lifted {
            debug!(zone = %z, "dynamic block lifted");
        }
    }

    /// Runs [`expire`](Self::expire) every second, forever.
    pub async fn expire_forever(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            self.expire();
        }
    }

    fn live_zones(&self) -> Vec<(String, Instant)> {
        let now = Instant::now();
        let blocked = self.blocked.read().unwrap_or_else(|p| p.into_inner());
        blocked.iter().filter(|(_, b)| b.until > now).map(|(z, b)| (z.clone(), b.until)).collect()
    }
}

/// Never a zone to block: a TLD, the root, or any other public suffix
/// (`co.uk`, `github.io`; the Public Suffix List, via the psl crate).
/// Otherwise a flood of random names under `co.uk` would block every
/// domain in it: an attacker could aim the defence at everyone else.
pub(crate) fn is_public_suffix(zone: &str) -> bool {
    zone.split('.').count() < 2 || psl::suffix_str(zone).is_some_and(|s| s.len() == zone.len())
}

/// `a.b.example.com` -> `b.example.com`, `example.com`, `com`.
fn proper_suffixes(name: &str) -> impl Iterator<Item = &str> {
    name.char_indices().filter(|&(_, c)| c == '.').map(move |(i, _)| &name[i + 1..]).filter(|s| !s.is_empty())
}

/// The zone a failed lookup is charged to: the owner of the SOA record a
/// negative answer carries (RFC 2308 §3), when it is a proper ancestor of
/// the name with at least two labels; otherwise the name's parent.
pub fn failure_zone(qname: &str, soa_owner: Option<&str>) -> Option<String> {
    if let Some(soa) = soa_owner {
        let soa = soa.trim_end_matches('.').to_ascii_lowercase();
        if soa.split('.').count() >= 2 && proper_suffixes(qname).any(|s| s == soa) {
            return Some(soa);
        }
    }
    proper_suffixes(qname).next().map(str::to_string)
}

/// The kernel half: `guard_dynblock` and the `dynblocks` count in
/// `guard_config`, both opened from their pins.
struct KernelBlocks {
    map: BpfHashMap<MapData, u64, guard_dynblock>,
    config: Array<MapData, guard_config>,
    /// Seeds of the live table (and, during a reload, of the next one).
    seeds: Vec<u64>,
}

impl KernelBlocks {
    fn open(pin_root: &Path) -> Result<Self, DynBlockError> {
        let open = |name: &str| {
            let path = pin_root.join(name);
            MapData::from_pin(&path)
                .and_then(Map::from_map_data)
                .map_err(|source| DynBlockError::Open { path: path.display().to_string(), source })
        };
        let map = BpfHashMap::try_from(open("guard_dynblock")?)?;
        let config = Array::try_from(open("guard_config")?)?;
        Ok(KernelBlocks { map, config, seeds: Vec::new() })
    }

    fn clear(&mut self) -> Result<(), DynBlockError> {
        let keys: Vec<u64> = self.map.keys().filter_map(Result::ok).collect();
        for k in keys {
            let _ = self.map.remove(&k);
        }
        self.set_count()
    }

    fn insert(&mut self, zone: &str, until: Instant, action: DynBlockAction) -> Result<(), DynBlockError> {
        for seed in self.seeds.clone() {
            self.insert_under(zone, until, seed, action)?;
        }
        self.set_count()
    }

    fn insert_under(&mut self, zone: &str, until: Instant, seed: u64, action: DynBlockAction) -> Result<(), DynBlockError> {
        let left = until.saturating_duration_since(Instant::now());
        let value = guard_dynblock { expires_ns: monotonic_ns() + left.as_nanos() as u64, action: kernel_action(action) as u8, _pad: [0; 7] };
        self.map.insert(name_key(zone, seed), value, 0)?;
        Ok(())
    }

    fn remove(&mut self, zone: &str) {
        for seed in self.seeds.clone() {
            self.remove_under(zone, seed);
        }
        self.update_count();
    }

    fn update_count(&mut self) {
        if let Err(e) = self.set_count() {
            warn!(error = %e, "cannot update the kernel's dynamic block count");
        }
    }

    fn remove_under(&mut self, zone: &str, seed: u64) {
        // Already gone is fine: the entry may never have been inserted.
        let _ = self.map.remove(&name_key(zone, seed));
    }

    /// The kernel skips its lookups while this is 0.
    fn set_count(&mut self) -> Result<(), DynBlockError> {
        let n = self.map.keys().filter(Result::is_ok).count() as u32;
        let mut c = self.config.get(&0, 0)?;
        if c.dynblocks != n {
            c.dynblocks = n;
            self.config.set(0, c, 0)?;
        }
        Ok(())
    }
}

fn kernel_action(a: DynBlockAction) -> guard_action {
    match a {
        DynBlockAction::Refused => guard_action::GUARD_ACTION_REFUSED,
        DynBlockAction::Drop => guard_action::GUARD_ACTION_DROP,
        DynBlockAction::Nxdomain => guard_action::GUARD_ACTION_NXDOMAIN,
        DynBlockAction::Log => guard_action::GUARD_ACTION_LOG,
    }
}

/// CLOCK_MONOTONIC in ns, the clock of bpf_ktime_get_ns().
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocks(threshold: u32) -> DynBlocks {
        let cfg = RandomSubdomainConfig { threshold, window_s: 10, block_s: 60, ..RandomSubdomainConfig::default() };
        DynBlocks::new(cfg, false, Arc::new(VerdictLog::to_writer(Box::new(std::io::sink()))), Metrics::new())
    }

    /// The log's bytes, readable after the writer is handed over.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_dry_run_starts_log_blocks_and_its_line_says_log() {
        for (dry_run, want) in [(false, "drop"), (true, "log")] {
            let cfg = RandomSubdomainConfig {
                threshold: 1,
                action: DynBlockAction::Drop,
                ..RandomSubdomainConfig::default()
            };
            let out = Captured::default();
            let d = DynBlocks::new(cfg, dry_run, Arc::new(VerdictLog::to_writer(Box::new(out.clone()))), Metrics::new());
            d.note_failure("victim.test", |_| false);
            d.note_failure("victim.test", |_| false);
            assert_eq!(d.action().as_str(), want, "dry_run {dry_run}");
            let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
            let line: serde_json::Value = serde_json::from_str(text.lines().next().expect("a line")).unwrap();
            assert_eq!((line["verdict"].as_str(), line["action"].as_str()), (Some("random-subdomain"), Some(want)));
        }
    }

    #[test]
    fn a_zone_over_the_threshold_blocks_its_subdomains_not_itself() {
        let d = blocks(3);
        for _ in 0..3 {
            d.note_failure("victim.test", |_| false);
        }
        assert_eq!(d.blocked_zone("x.victim.test"), None, "at the threshold: not yet");
        d.note_failure("victim.test", |_| false);
        assert_eq!(d.blocked_zone("x.victim.test").as_deref(), Some("victim.test"));
        assert_eq!(d.blocked_zone("a.b.victim.test").as_deref(), Some("victim.test"));
        assert_eq!(d.blocked_zone("victim.test"), None, "the apex keeps resolving");
        assert_eq!(d.blocked_zone("x.othervictim.test"), None);
        assert_eq!(d.blocked_zone("x.test"), None);
        assert_eq!(d.metrics.dynblocks_started.get(), 1);
    }

    #[test]
    fn tlds_exempt_and_allowlisted_zones_are_never_blocked() {
        let d = blocks(1);
        for zone in ["test", "co.uk", "github.io", "cluster.local", "svc.cluster.local", "10.in-addr.arpa", "allowed.test"] {
            for _ in 0..5 {
                d.note_failure(zone, |z| z == "allowed.test");
            }
        }
        for name in ["x.test", "x.co.uk", "x.github.io", "x.svc.cluster.local", "x.10.in-addr.arpa", "x.allowed.test"] {
            assert_eq!(d.blocked_zone(name), None, "{name}");
        }
        assert_eq!(d.metrics.dynblocks_started.get(), 0);
    }

    #[test]
    fn registrable_domains_and_their_subzones_can_be_blocked() {
        for zone in ["victim.test", "example.co.uk", "user.github.io", "deep.victim.example"] {
            assert!(!is_public_suffix(zone), "{zone}");
        }
        for zone in ["com", "co.uk", "github.io", "", "test"] {
            assert!(is_public_suffix(zone), "{zone}");
        }
    }

    #[test]
    fn off_when_the_threshold_is_zero() {
        let d = blocks(0);
        for _ in 0..1000 {
            d.note_failure("victim.test", |_| false);
        }
        assert_eq!(d.blocked_zone("x.victim.test"), None);
    }

    #[test]
    fn blocks_expire() {
        let d = blocks(1);
        d.note_failure("victim.test", |_| false);
        d.note_failure("victim.test", |_| false);
        assert!(d.blocked_zone("x.victim.test").is_some());
        // Age the block instead of sleeping a minute.
        d.blocked.write().unwrap().get_mut("victim.test").unwrap().until = Instant::now();
        d.expire();
        assert_eq!(d.blocked_zone("x.victim.test"), None);
        assert_eq!(d.nblocked.load(Ordering::Relaxed), 0);
        assert_eq!(d.metrics.dynblocks_active.get(), 0);
    }

    #[test]
    fn failures_are_charged_to_the_soa_zone_or_the_parent() {
        assert_eq!(failure_zone("rnd.victim.test", Some("victim.test.")).as_deref(), Some("victim.test"));
        assert_eq!(failure_zone("a.rnd.victim.test", Some("Victim.Test")).as_deref(), Some("victim.test"));
        // A TLD's SOA (the name's parent does not exist either) is no zone to block.
        assert_eq!(failure_zone("rnd.nothere.test", Some("test.")).as_deref(), Some("nothere.test"));
        // An SOA that is not an ancestor (out of bailiwick) is ignored.
        assert_eq!(failure_zone("rnd.victim.test", Some("evil.example.")).as_deref(), Some("victim.test"));
        assert_eq!(failure_zone("rnd.victim.test", None).as_deref(), Some("victim.test"));
        assert_eq!(failure_zone("test", None), None);
    }
}
