//! Streams the kernel's verdict events (the `guard_events` ring buffer)
//! into the verdict log.
//!
//! The kernel reports the key of the rule that matched, not its text; the
//! rule and the list line it came from are recovered here by hashing the
//! event's qname suffix by suffix with the active table's seed.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::{Arc, RwLock},
    time::Instant,
};

use aya::maps::{MapData, RingBuf};
use guard_ebpf::{
    abi::{guard_event, guard_reason, guard_rule_flags, GUARD_EVENTS_RING_BYTES, GUARD_FAMILY_IPV4},
    table::suffix_keys,
};
use tokio::io::unix::AsyncFd;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::{
    coalesce::{self, Coalescer},
    stats::{action_name, reason_from_u8, reason_name, verdict_name},
};
use crate::{
    lists::RuleSet,
    verdict::{qtype_name, rfc3339, Verdict, VerdictLog},
};

/// What the event reader needs to name the rule behind a key.
pub struct RuleIndex {
    pub seed: u64,
    pub rules: Arc<RuleSet>,
    /// The table this one replaced, for events still in the ring buffer
    /// from before the swap. The event reader drops it once the ring has
    /// been drained after the swap, so a reload does not hold two rule
    /// sets in memory for long.
    pub previous: Option<(u64, Arc<RuleSet>)>,
}

impl RuleIndex {
    pub fn new(seed: u64, rules: Arc<RuleSet>) -> Self {
        RuleIndex { seed, rules, previous: None }
    }

    /// A cheap copy for the event reader (the rule sets are shared).
    fn snapshot(&self) -> Self {
        RuleIndex { seed: self.seed, rules: Arc::clone(&self.rules), previous: self.previous.clone() }
    }
}

pub type SharedRuleIndex = Arc<RwLock<Option<RuleIndex>>>;

/// An event as decoded from the ring buffer.
#[derive(Debug, Clone, PartialEq)]
pub struct XdpEvent {
    pub ts_ns: u64,
    pub rule_id: u64,
    pub client: IpAddr,
    pub client_port: u16,
    pub qtype: u16,
    pub wire_qname: Vec<u8>,
    pub verdict: u8,
    pub action: u8,
    pub reason: u8,
}

impl XdpEvent {
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < std::mem::size_of::<guard_event>() {
            return None;
        }
        // SAFETY: length checked; guard_event is Pod and read unaligned.
        let e: guard_event = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        let client = if e.family == GUARD_FAMILY_IPV4 as u8 {
            IpAddr::V4(Ipv4Addr::new(e.client_addr[0], e.client_addr[1], e.client_addr[2], e.client_addr[3]))
        } else {
            IpAddr::V6(Ipv6Addr::from(e.client_addr))
        };
        let len = (e.qname_len as usize).min(e.qname.len());
        Some(Self {
            ts_ns: e.ts_ns,
            rule_id: e.rule_id,
            client,
            client_port: e.client_port,
            qtype: e.qtype,
            wire_qname: e.qname[..len].to_vec(),
            verdict: e.verdict,
            action: e.action,
            reason: e.reason,
        })
    }

    /// The qname in dotted form, lower case, no trailing dot; `.` for the
    /// root. Non-printable bytes are escaped as `\DDD` (RFC 4343).
    pub fn qname(&self) -> Option<String> {
        let w = &self.wire_qname;
        if w.is_empty() {
            return None;
        }
        let mut out = String::new();
        let mut off = 0;
        while let Some(&len) = w.get(off) {
            if len == 0 {
                break;
            }
            let Some(label) = w.get(off + 1..off + 1 + len as usize) else { break };
            if !out.is_empty() {
                out.push('.');
            }
            for &b in label {
                if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                    out.push(b as char);
                } else {
                    out.push_str(&format!("\\{b:03}"));
                }
            }
            off += 1 + len as usize;
        }
        Some(if out.is_empty() { ".".into() } else { out })
    }
}

/// The rule text and "list:line" behind a matched key, if still known:
/// looked up in the active table, then in the one it replaced.
pub fn describe_rule(event: &XdpEvent, index: &RuleIndex) -> (Option<String>, Option<String>) {
    if event.rule_id == 0 {
        return (None, None);
    }
    let current = (index.seed, &index.rules);
    let previous = index.previous.as_ref().map(|(seed, rules)| (*seed, rules));
    for (seed, rules) in std::iter::once(current).chain(previous) {
        if let Some(found) = describe_in(event, seed, rules) {
            return found;
        }
    }
    (Some(format!("{:#018x}", event.rule_id)), None)
}

fn describe_in(event: &XdpEvent, seed: u64, rules: &RuleSet) -> Option<(Option<String>, Option<String>)> {
    let keys = suffix_keys(&event.wire_qname, seed)?;
    let i = keys.iter().position(|&k| k == event.rule_id)?;
    let qname = event.qname().unwrap_or_default();
    let suffix = qname.splitn(i + 1, '.').last().unwrap_or_default().to_string();
    let self_bit = guard_rule_flags::GUARD_RULE_BLOCK_SELF as u8;
    let sub_bit = guard_rule_flags::GUARD_RULE_BLOCK_SUB as u8;
    Some(match rules.rules.get(suffix.as_str()) {
        Some(info) => {
            // The qname itself matched a rule on the name; a shorter suffix
            // matched a rule on its subdomains. Name the rule that gave
            // that kind, which is not the first one when two rules share
            // the name (`x` in one list, `*.x` in another).
            let kind = if i == 0 { self_bit } else { sub_bit };
            let (f, origin) = match rules.later_origins.get(suffix.as_str()) {
                Some((f, o)) if info.origin_flags & kind == 0 && f & kind != 0 => (*f, o),
                _ => (info.origin_flags, &info.origin),
            };
            let rule = match (f & self_bit != 0, f & sub_bit != 0) {
                (true, true) => format!("||{suffix}^"),
                (false, true) => format!("*.{suffix}"),
                _ => suffix,
            };
            (Some(rule), Some(format!("{}:{}", origin.list.display(), origin.line)))
        }
        None => (Some(suffix), None),
    })
}

/// Wall-clock time of a kernel timestamp (bpf_ktime_get_ns is
/// CLOCK_MONOTONIC): events queued while dns-guard restarted keep the time
/// they happened, not the time they were read.
fn wall_clock(ts_ns: u64) -> std::time::SystemTime {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    let mono_now = now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64;
    let age = std::time::Duration::from_nanos(mono_now.saturating_sub(ts_ns));
    std::time::SystemTime::now().checked_sub(age).unwrap_or_else(std::time::SystemTime::now)
}

pub fn to_verdict(event: &XdpEvent, index: Option<&RuleIndex>) -> Verdict {
    let (mut rule, mut list) = index.map(|ix| describe_rule(event, ix)).unwrap_or((None, None));
    if event.reason == guard_reason::GUARD_REASON_BLOCK_DYNAMIC as u8 {
        // Not a list rule: a zone the proxy saw flooded (crate::dynblock).
        // The key names the zone, as a suffix of the qname.
        rule = rule.filter(|z| !z.starts_with("0x")).map(|z| format!("*.{z}"));
        list = Some("random-subdomain".into());
    }
    Verdict {
        ts: rfc3339(wall_clock(event.ts_ns)),
        layer: "xdp",
        verdict: verdict_name(event.verdict).into(),
        action: action_name(event.action).into(),
        reason: reason_from_u8(event.reason).map_or("unknown", reason_name).into(),
        rule,
        list,
        client: Some(event.client),
        client_port: Some(event.client_port),
        // The verdict log names the pod (guard/src/k8s.rs).
        pod_namespace: None,
        pod_name: None,
        qname: event.qname(),
        qtype: (!event.wire_qname.is_empty()).then(|| qtype_name(event.qtype)),
        count: 1,
        upstream: None,
        rcode: None,
        dnssec: None,
        latency_ms: None,
    }
}

impl super::XdpGuard {
    /// Takes the event ring buffer out of the object for the reader task.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, aya::maps::MapError> {
        let map = self.ebpf.take_map("guard_events").ok_or(aya::maps::MapError::InvalidName { name: "guard_events".into() })?;
        RingBuf::try_from(map)
    }
}

/// Reads events until the ring buffer fails or `stop` is cancelled (a
/// SIGTERM). Repeats of one decision are folded into counted lines (see
/// `coalesce`); the rest is one line each. On the way out the ring is read
/// to its end and every fold still open is written, so a shutdown loses no
/// decision that reached the ring.
pub async fn stream_events(ring: RingBuf<MapData>, index: SharedRuleIndex, log: Arc<VerdictLog>, stop: CancellationToken) {
    // SAFETY: the ring buffer owns its fd for as long as the AsyncFd
    // holds it, and nothing else closes or re-registers that fd.
    let mut fd = match unsafe { AsyncFd::register(ring) } {
        Ok(fd) => fd,
        Err(e) => {
            warn!(error = %e, "cannot poll the event ring buffer; verdict events will not be logged");
            return;
        }
    };
    let mut folds = Coalescer::default();
    // Folded lines are written within a quarter window of their window closing.
    let mut tick = tokio::time::interval(coalesce::WINDOW / 4);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // A snapshot, so a slow stdout never holds up a reload's write lock;
    // taken once there is something to read, so events of a table swapped
    // in while the reader slept find their rules.
    let snapshot = || index.read().unwrap_or_else(|p| p.into_inner()).as_ref().map(RuleIndex::snapshot);
    loop {
        let (ix, read) = tokio::select! {
            ready = fd.readable_mut() => {
                let mut ready = match ready {
                    Ok(r) => r,
                    Err(e) => {
                        warn!(error = %e, "event ring buffer poll failed");
                        break;
                    }
                };
                let ix = snapshot();
                let read = drain(ready.get_inner_mut(), &mut folds, &log, ix.as_ref());
                // Left ready when not emptied: the loop comes straight back.
                if read < BATCH {
                    ready.clear_ready();
                }
                (ix, read)
            }
            _ = stop.cancelled() => {
                let ix = snapshot();
                // Bounded: a flood still going would never let the ring empty.
                for _ in 0..STOP_BATCHES {
                    if drain(fd.get_mut(), &mut folds, &log, ix.as_ref()) < BATCH {
                        break;
                    }
                }
                write_folded(&log, folds.flush(), ix.as_ref());
                return;
            }
            _ = tick.tick() => {
                // Also drains, so the previous table is let go soon after a reload
                // even when no event wakes the reader.
                let ix = snapshot();
                let read = drain(fd.get_mut(), &mut folds, &log, ix.as_ref());
                let due = folds.due(Instant::now());
                if !due.is_empty() {
                    write_folded(&log, due, ix.as_ref());
                }
                (ix, read)
            }
        };
        // Every event from before the swap has been read, so the old table
        // can go: the drain either emptied the ring or read a full batch,
        // which is more than the ring held when the snapshot was taken
        // (events are read in order). So a flood that never lets the ring
        // empty still lets it go.
        if let Some(seed) = ix.as_ref().filter(|ix| ix.previous.is_some()).map(|ix| ix.seed) {
            let mut current = index.write().unwrap_or_else(|p| p.into_inner());
            if let Some(cur) = current.as_mut().filter(|cur| cur.seed == seed) {
                cur.previous = None;
            }
        }
        if read == BATCH {
            // A flood queues an event per packet: let the proxy's tasks,
            // which share the two workers, run between batches.
            tokio::task::yield_now().await;
        }
    }
    write_folded(&log, folds.flush(), None);
}

/// Events read in one go before the reader yields: more than the ring
/// holds, which the old table's release relies on.
const BATCH: usize = 4096;
/// The most events the ring holds: each is a `guard_event` and an 8-byte
/// record header.
const RING_EVENTS: usize = GUARD_EVENTS_RING_BYTES as usize / (std::mem::size_of::<guard_event>() + 8);
const _: () = assert!(BATCH > RING_EVENTS);
/// Batches read at shutdown, at most.
const STOP_BATCHES: usize = 16;

/// Reads up to [`BATCH`] queued events; repeats fold, the rest become
/// lines. How many it read: fewer than `BATCH` once the ring is empty.
fn drain(ring: &mut RingBuf<MapData>, folds: &mut Coalescer, log: &VerdictLog, ix: Option<&RuleIndex>) -> usize {
    let now = Instant::now();
    for read in 0..BATCH {
        let Some(item) = ring.next() else { return read };
        match XdpEvent::decode(&item) {
            Some(ev) => {
                if let Some(ev) = folds.offer(ev, now) {
                    log.emit(to_verdict(&ev, ix));
                }
            }
            None => warn!(len = item.len(), "short event in ring buffer"),
        }
    }
    BATCH
}

fn write_folded(log: &VerdictLog, due: Vec<(XdpEvent, u64)>, ix: Option<&RuleIndex>) {
    for (ev, n) in due {
        let mut v = to_verdict(&ev, ix);
        v.count = n;
        log.emit(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(wire: &[u8]) -> XdpEvent {
        XdpEvent {
            ts_ns: 0,
            rule_id: 0,
            client: IpAddr::V4(Ipv4Addr::LOCALHOST),
            client_port: 1,
            qtype: 1,
            wire_qname: wire.to_vec(),
            verdict: 1,
            action: 1,
            reason: 5,
        }
    }

    #[test]
    fn qname_renders_dotted_and_escapes() {
        assert_eq!(event(b"\x03www\x07example\x03com\x00").qname().as_deref(), Some("www.example.com"));
        assert_eq!(event(b"\x00").qname().as_deref(), Some("."));
        assert_eq!(event(b"\x03a b\x00").qname().as_deref(), Some("a\\032b"));
        assert_eq!(event(b"").qname(), None);
        // A label running past the end is cut, not a panic.
        assert_eq!(event(b"\x03ab").qname().as_deref(), Some("."));
    }

    #[test]
    fn kernel_timestamps_map_to_the_past() {
        let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
        let two_s_ago = (now.tv_sec as u64 - 2) * 1_000_000_000 + now.tv_nsec as u64;
        let age = std::time::SystemTime::now().duration_since(wall_clock(two_s_ago)).unwrap();
        // The two clocks drift apart by microseconds (NTP slews the wall
        // clock only): allow for that, not for a mapping that is off.
        let slack = std::time::Duration::from_millis(50);
        assert!(age >= std::time::Duration::from_secs(2) - slack && age < std::time::Duration::from_secs(3), "{age:?}");
    }

    fn rules(text: &str, file: &str) -> Arc<RuleSet> {
        let mut set = RuleSet::default();
        crate::lists::parse_str(text, std::path::Path::new(file), crate::lists::ListKind::Block, &mut set);
        Arc::new(set)
    }

    #[test]
    fn events_from_before_a_reload_name_the_rule_of_the_old_table() {
        let (old_seed, new_seed) = (11, 22);
        let wire = b"\x03www\x03bad\x07example\x00";
        let mut ev = event(wire);
        // The kernel matched `bad.example` (suffix 1) under the old table's seed.
        ev.rule_id = suffix_keys(wire, old_seed).unwrap()[1];
        let old = rules("||bad.example^\n", "old.txt");
        let new = rules("other.example\n", "new.txt");
        let mut ix = RuleIndex::new(new_seed, new);
        assert_eq!(describe_rule(&ev, &ix), (Some(format!("{:#018x}", ev.rule_id)), None));
        ix.previous = Some((old_seed, old));
        assert_eq!(describe_rule(&ev, &ix), (Some("||bad.example^".into()), Some("old.txt:1".into())));
    }

    #[test]
    fn a_name_with_rules_from_two_lists_logs_the_rule_that_matched() {
        let mut set = RuleSet::default();
        crate::lists::parse_str("x.example\n", std::path::Path::new("a.txt"), crate::lists::ListKind::Block, &mut set);
        crate::lists::parse_str("# subdomains\n*.x.example\n", std::path::Path::new("b.txt"), crate::lists::ListKind::Block, &mut set);
        let ix = RuleIndex::new(7, Arc::new(set));
        let mut apex = event(b"\x01x\x07example\x00");
        apex.rule_id = suffix_keys(&apex.wire_qname, 7).unwrap()[0];
        assert_eq!(describe_rule(&apex, &ix), (Some("x.example".into()), Some("a.txt:1".into())));
        let mut sub = event(b"\x01a\x01x\x07example\x00");
        sub.rule_id = suffix_keys(&sub.wire_qname, 7).unwrap()[1];
        assert_eq!(describe_rule(&sub, &ix), (Some("*.x.example".into()), Some("b.txt:2".into())));
    }

    #[test]
    fn decode_rejects_short_buffers() {
        assert!(XdpEvent::decode(&[0u8; 10]).is_none());
    }
}
