//! Folds repeats of one XDP decision into one verdict line with a `count`,
//! so a flood costs the log about one line per second per client and name
//! rather than one per packet. BIND RRL logs a limited client the same
//! way. Nothing is lost: every packet is still in the kernel's counters,
//! and the counts of the folded lines add up to the events read.
//!
//! The first event of a kind is written at once, so a single blocked query
//! shows up in `kubectl logs -f` without delay. Repeats within [`WINDOW`]
//! are counted; when the window closes they are written as one line (the
//! last event, `count` = how many were folded) and a new window opens.

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use guard_ebpf::abi::guard_verdict;

use super::events::XdpEvent;

/// How long repeats are folded before their line is written.
pub const WINDOW: Duration = Duration::from_secs(1);
/// Kinds tracked at once. Past it, events of new kinds are written one by
/// one: a spray of distinct names costs log lines, never lost verdicts.
pub const MAX_KINDS: usize = 16_384;

/// What makes two events "the same decision". Rate-limited queries fold
/// per client whatever their names: a random-name flood (2b/2c in the
/// benchmarks) would otherwise be one kind per packet.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Kind {
    verdict: u8,
    action: u8,
    reason: u8,
    client: IpAddr,
    qtype: u16,
    qname: Vec<u8>,
    rule_id: u64,
}

impl Kind {
    fn of(ev: &XdpEvent) -> Self {
        let per_client = ev.verdict == guard_verdict::GUARD_VERDICT_RATELIMIT as u8;
        Kind {
            verdict: ev.verdict,
            action: ev.action,
            reason: ev.reason,
            client: ev.client,
            qtype: if per_client { 0 } else { ev.qtype },
            qname: if per_client { Vec::new() } else { ev.wire_qname.clone() },
            rule_id: if per_client { 0 } else { ev.rule_id },
        }
    }
}

struct Window {
    opened: Instant,
    /// Events folded since the window opened (not yet written).
    folded: u64,
    last: Option<XdpEvent>,
}

#[derive(Default)]
pub struct Coalescer {
    open: HashMap<Kind, Window>,
}

impl Coalescer {
    /// The event to write now, or `None` when it was folded into a window.
    pub fn offer(&mut self, ev: XdpEvent, now: Instant) -> Option<XdpEvent> {
        let kind = Kind::of(&ev);
        if let Some(w) = self.open.get_mut(&kind) {
            w.folded += 1;
            w.last = Some(ev);
            return None;
        }
        if self.open.len() < MAX_KINDS {
            self.open.insert(kind, Window { opened: now, folded: 0, last: None });
        }
        Some(ev)
    }

    /// Lines due at `now`: each window that closed with repeats in it, as
    /// its last event and how many it stands for. A window that closed
    /// empty is forgotten; one with repeats opens again, so a steady flood
    /// is one line per window.
    pub fn due(&mut self, now: Instant) -> Vec<(XdpEvent, u64)> {
        let mut out = Vec::new();
        self.open.retain(|_, w| {
            if now.duration_since(w.opened) < WINDOW {
                return true;
            }
            match w.last.take() {
                Some(ev) => {
                    out.push((ev, w.folded));
                    *w = Window { opened: now, folded: 0, last: None };
                    true
                }
                None => false,
            }
        });
        out.sort_by_key(|(ev, _)| ev.ts_ns);
        out
    }

    /// Writes out everything still folded (on shutdown).
    pub fn flush(&mut self) -> Vec<(XdpEvent, u64)> {
        let mut out: Vec<_> =
            self.open.drain().filter_map(|(_, w)| w.last.map(|ev| (ev, w.folded))).collect();
        out.sort_by_key(|(ev, _)| ev.ts_ns);
        out
    }

    pub fn kinds(&self) -> usize {
        self.open.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use guard_ebpf::abi::guard_action;
    use std::net::Ipv4Addr;

    fn ev(verdict: guard_verdict, client: u8, qname: &[u8], ts_ns: u64) -> XdpEvent {
        XdpEvent {
            ts_ns,
            rule_id: 7,
            client: IpAddr::V4(Ipv4Addr::new(198, 18, 0, client)),
            client_port: 4000 + ts_ns as u16,
            qtype: 1,
            wire_qname: qname.to_vec(),
            verdict: verdict as u8,
            action: guard_action::GUARD_ACTION_DROP as u8,
            reason: 5,
        }
    }

    const BLOCK: guard_verdict = guard_verdict::GUARD_VERDICT_BLOCK;
    const RATELIMIT: guard_verdict = guard_verdict::GUARD_VERDICT_RATELIMIT;

    #[test]
    fn first_event_is_written_repeats_fold_into_one_counted_line() {
        let mut c = Coalescer::default();
        let t0 = Instant::now();
        assert!(c.offer(ev(BLOCK, 11, b"\x03bad\x00", 1), t0).is_some());
        for i in 2..=100 {
            assert!(c.offer(ev(BLOCK, 11, b"\x03bad\x00", i), t0 + Duration::from_millis(i)).is_none());
        }
        assert!(c.due(t0 + Duration::from_millis(500)).is_empty(), "window still open");
        let due = c.due(t0 + WINDOW);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].1, 99, "the 99 repeats after the first line");
        assert_eq!(due[0].0.ts_ns, 100, "the line carries the last event");
        // A steady flood keeps folding: the next window writes one more line.
        for i in 101..=150 {
            assert!(c.offer(ev(BLOCK, 11, b"\x03bad\x00", i), t0 + WINDOW + Duration::from_millis(1)).is_none());
        }
        let due = c.due(t0 + WINDOW * 2);
        assert_eq!(due.iter().map(|(_, n)| n).sum::<u64>(), 50);
        // A quiet window is forgotten, and the next event is written at once.
        assert!(c.due(t0 + WINDOW * 3).is_empty());
        assert_eq!(c.kinds(), 0);
        assert!(c.offer(ev(BLOCK, 11, b"\x03bad\x00", 200), t0 + WINDOW * 3).is_some());
    }

    #[test]
    fn different_clients_names_and_verdicts_are_not_folded() {
        let mut c = Coalescer::default();
        let t0 = Instant::now();
        assert!(c.offer(ev(BLOCK, 11, b"\x03bad\x00", 1), t0).is_some());
        assert!(c.offer(ev(BLOCK, 12, b"\x03bad\x00", 2), t0).is_some());
        assert!(c.offer(ev(BLOCK, 11, b"\x04bad2\x00", 3), t0).is_some());
        assert!(c.offer(ev(guard_verdict::GUARD_VERDICT_MALFORMED, 11, b"\x03bad\x00", 4), t0).is_some());
    }

    #[test]
    fn rate_limited_queries_fold_per_client_whatever_the_name() {
        let mut c = Coalescer::default();
        let t0 = Instant::now();
        assert!(c.offer(ev(RATELIMIT, 11, b"\x011\x00", 1), t0).is_some());
        for i in 2..=1000u64 {
            let name = format!("\x04{:04}\x00", i);
            assert!(c.offer(ev(RATELIMIT, 11, name.as_bytes(), i), t0).is_none());
        }
        assert!(c.offer(ev(RATELIMIT, 12, b"\x011\x00", 1001), t0).is_some());
        let due = c.flush();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].1, 999);
    }

    #[test]
    fn past_the_kind_limit_events_are_written_not_lost() {
        let mut c = Coalescer::default();
        let t0 = Instant::now();
        let mut written = 0;
        for i in 0..(MAX_KINDS as u64 + 100) {
            let name = format!("\x08{:08}\x00", i);
            written += c.offer(ev(BLOCK, 11, name.as_bytes(), i), t0).is_some() as u64;
        }
        assert_eq!(written, MAX_KINDS as u64 + 100);
        assert_eq!(c.kinds(), MAX_KINDS);
        // An untracked kind's repeat is written too.
        assert!(c.offer(ev(BLOCK, 11, format!("\x08{:08}\x00", MAX_KINDS + 5).as_bytes(), 0), t0).is_some());
    }
}
