//! The verdict log: one JSON object per line on stdout, one line per
//! decision, so an operator can always answer "why was this blocked?".
//! Diagnostics go to stderr through `tracing` and are never mixed in.

use std::borrow::Cow;
use std::io::{self, Write};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::counter::Counter;
use serde::Serialize;
use time::macros::format_description;
use time::OffsetDateTime;

use crate::k8s::PodIndex;

/// One decision. Field order is the JSON key order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    /// RFC 3339 UTC with milliseconds, e.g. `2026-11-28T15:04:05.123Z`.
    pub ts: String,
    /// `"xdp"` or `"proxy"`.
    pub layer: &'static str,
    /// xdp: block|ratelimit|malformed|allow; proxy: allow|block|rebind|bogus|
    /// spoof|poisoning-attempt|random-subdomain|servfail.
    pub verdict: String,
    pub action: String,
    pub reason: String,
    pub rule: Option<String>,
    pub list: Option<String>,
    pub client: Option<IpAddr>,
    pub client_port: Option<u16>,
    // The pod holding `client`, when the pod watch (`kubernetes.enrich`)
    // knows it; filled in by [`VerdictLog::emit`], omitted otherwise.
    // Shared with the pod cache: naming the pod copies no string.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_namespace: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<Arc<str>>,
    pub qname: Option<String>,
    /// `"A"`, `"AAAA"`, `"TYPE65534"`: see [`qtype_name`].
    pub qtype: Option<String>,
    /// How many decisions this line stands for: 1, or more when the XDP
    /// layer folded repeats of one decision into it (see `ebpf::coalesce`).
    pub count: u64,
    // Proxy-only: omitted from XDP lines rather than written as null.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rcode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dnssec: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
}

impl Default for Verdict {
    fn default() -> Self {
        Verdict {
            ts: String::new(),
            layer: "",
            verdict: String::new(),
            action: String::new(),
            reason: String::new(),
            rule: None,
            list: None,
            client: None,
            client_port: None,
            pod_namespace: None,
            pod_name: None,
            qname: None,
            qtype: None,
            count: 1,
            upstream: None,
            rcode: None,
            dnssec: None,
            latency_ms: None,
        }
    }
}

impl Verdict {
    /// A verdict stamped now, other fields empty.
    pub fn new(
        layer: &'static str,
        verdict: impl Into<String>,
        action: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Verdict {
            ts: rfc3339_now(),
            layer,
            verdict: verdict.into(),
            action: action.into(),
            reason: reason.into(),
            ..Default::default()
        }
    }
}

impl From<Verdict> for Cow<'_, Verdict> {
    fn from(v: Verdict) -> Self {
        Cow::Owned(v)
    }
}

impl<'v> From<&'v Verdict> for Cow<'v, Verdict> {
    fn from(v: &'v Verdict) -> Self {
        Cow::Borrowed(v)
    }
}

/// Thread-safe, line-atomic verdict writer.
///
/// Lines go into a buffer under a mutex and are flushed by the last writer
/// out (group commit): one write per line when quiet, batches under load,
/// and `tail -f` never waits for a timer. On stdout a flush is a hand-off
/// to a thread of its own (`Handoff`), so a reader that falls behind (a
/// container log pipe on a slow disk) costs lines, never a stalled answer.
pub struct VerdictLog {
    inner: Mutex<Inner>,
    /// Emitters between "about to lock" and "done"; the one that sees it
    /// drop to zero flushes.
    waiting: AtomicUsize,
    tally: Arc<Tally>,
    /// stdout's writer thread; `None` writes `Inner::out` in place.
    handoff: Option<Arc<Handoff>>,
    /// Client IP → pod, when Kubernetes enrichment is on.
    pods: Option<PodIndex>,
}

struct Inner {
    out: Box<dyn Write + Send>,
    buf: Vec<u8>,
    lines: u64,
}

/// Flush early past this size so a burst cannot grow the buffer unbounded.
const FLUSH_AT: usize = 64 * 1024;

/// Bytes waiting for stdout's writer thread; a batch that would go past
/// this is dropped and counted. About 14,000 lines, or a few seconds of a
/// flood's worth of log, for a reader that stalls.
const HANDOFF_MAX: usize = 4 << 20;

/// How long a shutdown waits for stdout's writer thread to write out what
/// is queued; what is left then is counted as dropped.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// What became of the lines, wherever they were written.
#[derive(Default)]
struct Tally {
    emitted: AtomicU64,
    dropped: AtomicU64,
    /// Set on EPIPE: the reader is gone for good, so stop making syscalls.
    broken: AtomicBool,
    /// `dns_guard_verdict_log_dropped`, for the process's log.
    metric: Option<Counter>,
}

impl Tally {
    fn lose(&self, lines: u64) {
        self.dropped.fetch_add(lines, Ordering::Relaxed);
        if let Some(c) = &self.metric {
            c.inc_by(lines);
        }
    }

    /// The outcome of writing `lines` lines out.
    fn wrote(&self, result: io::Result<()>, lines: u64) {
        match result {
            Ok(()) => {
                self.emitted.fetch_add(lines, Ordering::Relaxed);
            }
            Err(e) => {
                // Part of the batch may have gone out; count it all as
                // dropped, which errs toward "something is missing".
                self.lose(lines);
                if e.kind() == io::ErrorKind::BrokenPipe {
                    if !self.broken.swap(true, Ordering::Relaxed) {
                        tracing::warn!("verdict log reader went away (EPIPE); dropping verdicts from now on");
                    }
                } else {
                    tracing::warn!(error = %e, "cannot write verdict log");
                }
            }
        }
    }
}

/// The bytes waiting for stdout's writer thread.
#[derive(Default)]
struct Handoff {
    queue: Mutex<Queued>,
    /// The writer waits here for bytes, or for the close.
    ready: Condvar,
    /// `close` waits here for the writer to have written everything.
    drained: Condvar,
}

#[derive(Default)]
struct Queued {
    bytes: Vec<u8>,
    lines: u64,
    /// The writer has taken a batch and not finished writing it.
    writing: bool,
    closed: bool,
    /// `push` has refused a batch since the queue was last empty.
    refusing: bool,
}

impl Handoff {
    /// Queues a batch for the writer; `false` when the queue has no room.
    fn push(&self, batch: &[u8], lines: u64) -> bool {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        // After `close`, the shutdown's own count of what is lost stands.
        if q.closed {
            return false;
        }
        if q.bytes.len() + batch.len() > HANDOFF_MAX {
            if !std::mem::replace(&mut q.refusing, true) {
                tracing::warn!("the verdict log's reader is behind and its queue is full; dropping verdicts until it catches up");
            }
            return false;
        }
        q.bytes.extend_from_slice(batch);
        q.lines += lines;
        self.ready.notify_one();
        true
    }

    /// The writer thread: writes out whatever is queued, until closed.
    fn write_out(&self, mut out: impl Write, tally: &Tally) {
        loop {
            let (bytes, lines) = {
                let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                q.writing = false;
                self.drained.notify_all();
                while q.bytes.is_empty() && !q.closed {
                    q.refusing = false;
                    q = self.ready.wait(q).unwrap_or_else(|e| e.into_inner());
                }
                if q.bytes.is_empty() {
                    return;
                }
                q.writing = true;
                (std::mem::take(&mut q.bytes), std::mem::take(&mut q.lines))
            };
            tally.wrote(out.write_all(&bytes).and_then(|()| out.flush()), lines);
        }
    }

    /// Stops taking batches and waits, at most `CLOSE_WAIT`, for the
    /// writer to write out the rest. Never joins the thread: it may be
    /// blocked on a reader that stalled. Returns the lines left unwritten.
    fn close(&self) -> u64 {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if std::mem::replace(&mut q.closed, true) {
            return 0;
        }
        self.ready.notify_one();
        let (mut q, _) = self
            .drained
            .wait_timeout_while(q, CLOSE_WAIT, |q| !q.bytes.is_empty() || q.writing)
            .unwrap_or_else(|e| e.into_inner());
        q.bytes = Vec::new();
        std::mem::take(&mut q.lines)
    }
}

impl VerdictLog {
    /// The verdict log on stdout, written by a thread of its own; lines it
    /// loses are counted in `dropped_metric` too.
    pub fn stdout(dropped_metric: Counter) -> Self {
        Self::threaded(io::stdout, Some(dropped_metric))
    }

    /// A log whose writer thread writes to `out()`.
    fn threaded<W: Write + Send + 'static>(out: fn() -> W, metric: Option<Counter>) -> Self {
        let tally = Arc::new(Tally { metric, ..Tally::default() });
        let handoff = Arc::new(Handoff::default());
        let spawned = {
            let (handoff, tally) = (Arc::clone(&handoff), Arc::clone(&tally));
            std::thread::Builder::new().name("verdict-log".into()).spawn(move || handoff.write_out(out(), &tally))
        };
        // Written in place only if the thread could not start.
        let mut log = Self::to_writer(Box::new(out()));
        log.tally = tally;
        match spawned {
            Ok(_) => log.handoff = Some(handoff),
            Err(e) => tracing::warn!(error = %e, "no thread for the verdict log; stdout is written in place"),
        }
        log
    }

    pub fn to_writer(w: Box<dyn Write + Send>) -> Self {
        VerdictLog {
            inner: Mutex::new(Inner {
                out: w,
                buf: Vec::with_capacity(FLUSH_AT),
                lines: 0,
            }),
            waiting: AtomicUsize::new(0),
            tally: Arc::default(),
            handoff: None,
            pods: None,
        }
    }

    /// Names the client's pod in every line whose client `pods` knows.
    pub fn with_pods(mut self, pods: PodIndex) -> Self {
        self.pods = Some(pods);
        self
    }

    /// Writes what is batched and waits (at most `CLOSE_WAIT`) for stdout's
    /// writer to write it out: at shutdown, so the last verdicts are not
    /// lost. Lines emitted after it are dropped.
    pub fn close(&self) {
        self.flush_locked(&mut self.inner.lock().unwrap_or_else(|e| e.into_inner()));
        if let Some(h) = &self.handoff {
            self.tally.lose(h.close());
        }
    }

    /// Writes `v` as one line. Never panics and never blocks on a dead
    /// reader: a line that cannot be written is counted in [`dropped`].
    ///
    /// Takes `&Verdict` or `Verdict`; the hot paths pass theirs by value, so
    /// naming the pod does not copy the line (measured: a copy costs about
    /// half as much as encoding it).
    ///
    /// [`dropped`]: VerdictLog::dropped
    pub fn emit<'v>(&self, v: impl Into<Cow<'v, Verdict>>) {
        if self.tally.broken.load(Ordering::Relaxed) {
            self.tally.lose(1);
            return;
        }
        let mut v = v.into();
        // A map read, never an API call: an unknown or unreachable pod only
        // means a line without pod fields.
        if let (Some(pods), Some(ip), None) = (&self.pods, v.client, &v.pod_name) {
            if let Some(pod) = pods.lookup(ip) {
                let v = v.to_mut();
                v.pod_namespace = Some(Arc::clone(&pod.namespace));
                v.pod_name = Some(Arc::clone(&pod.name));
            }
        }
        // Serialize outside the lock; a String field cannot fail to encode.
        let mut line = match serde_json::to_vec(&*v) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot encode verdict");
                self.tally.lose(1);
                return;
            }
        };
        line.push(b'\n');

        self.waiting.fetch_add(1, Ordering::AcqRel);
        // A panic elsewhere while holding the lock leaves plain bytes behind;
        // keep logging rather than poison every later verdict.
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.buf.extend_from_slice(&line);
        inner.lines += 1;
        let last = self.waiting.fetch_sub(1, Ordering::AcqRel) == 1;
        if last || inner.buf.len() >= FLUSH_AT {
            self.flush_locked(&mut inner);
        }
    }

    fn flush_locked(&self, inner: &mut Inner) {
        if inner.buf.is_empty() {
            return;
        }
        let Inner { out, buf, lines } = inner;
        match &self.handoff {
            // Counted as emitted once the writer thread has written it.
            Some(h) => {
                if !h.push(buf, *lines) {
                    self.tally.lose(*lines);
                }
            }
            None => self.tally.wrote(out.write_all(buf).and_then(|()| out.flush()), *lines),
        }
        buf.clear();
        *lines = 0;
    }

    /// Lines written out successfully.
    pub fn emitted(&self) -> u64 {
        self.tally.emitted.load(Ordering::Relaxed)
    }

    /// Lines lost: the reader fell behind or went away (EPIPE), or a write
    /// failed.
    pub fn dropped(&self) -> u64 {
        self.tally.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for VerdictLog {
    fn drop(&mut self) {
        self.close();
    }
}

/// Mnemonic for a query type; unknown types use the RFC 3597 §5 form
/// `TYPE<n>` so every value round-trips through zone-file syntax.
pub fn qtype_name(qtype: u16) -> String {
    use hickory_proto::rr::RecordType;
    match RecordType::from(qtype) {
        RecordType::Unknown(n) => format!("TYPE{n}"),
        known => known.to_string(),
    }
}

/// Now, as RFC 3339 UTC with milliseconds: `2026-11-28T15:04:05.123Z`.
pub fn rfc3339_now() -> String {
    rfc3339(SystemTime::now())
}

/// `t` as RFC 3339 UTC with milliseconds.
pub fn rfc3339(t: SystemTime) -> String {
    let fmt =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    // Formatting only fails for years past 9999; never worth a panic.
    OffsetDateTime::from(t)
        .format(fmt)
        .unwrap_or_else(|_| "9999-12-31T23:59:59.999Z".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex as StdMutex};
    use std::time::Duration;

    /// A writer whose bytes the test can read back.
    #[derive(Clone, Default)]
    struct Shared(Arc<StdMutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    struct Broken;

    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A reader that stalls until `OPEN` is set: a container log pipe on a
    /// slow disk.
    static OPEN: (StdMutex<bool>, std::sync::Condvar) = (StdMutex::new(false), std::sync::Condvar::new());
    struct Stalled;
    impl Write for Stalled {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            let open = OPEN.1.wait_while(OPEN.0.lock().unwrap(), |open| !*open).unwrap();
            drop(open);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_reader_that_stalls_costs_lines_never_a_wait() {
        let metric = Counter::default();
        let log = VerdictLog::threaded(|| Stalled, Some(metric.clone()));
        let v = Verdict::new("proxy", "allow", "forward", "ok");
        // About 12 MiB of lines, every emit returning. The queue holds
        // 4 MiB, and the writer may have taken up to as much again as its
        // batch before it stalled (how much depends on when its thread
        // woke), so at least 4 MiB, 20,000 lines, find no room.
        const LINES: u64 = 60_000;
        for _ in 0..LINES {
            log.emit(&v);
        }
        assert!(log.dropped() > 10_000, "dropped {}", log.dropped());
        assert_eq!(metric.get(), log.dropped());
        assert_eq!(log.emitted(), 0);
        // The shutdown waits for the stalled writer a bounded time, and
        // counts what it could not write as dropped.
        let refused = log.dropped();
        let started = std::time::Instant::now();
        log.close();
        assert!(started.elapsed() < Duration::from_secs(5), "close waited {:?}", started.elapsed());
        // All but the batch the writer holds.
        assert!(log.dropped() > refused + 10_000 && log.dropped() < LINES, "{} then {}", refused, log.dropped());
        *OPEN.0.lock().unwrap() = true;
        OPEN.1.notify_all();
    }

    #[test]
    fn a_reader_that_goes_away_on_the_writer_thread_is_noticed() {
        let log = VerdictLog::threaded(|| Broken, None);
        let v = Verdict::new("xdp", "block", "nxdomain", "blocklist_exact");
        log.emit(&v);
        log.close(); // waits for the writer to have tried
        assert!(log.tally.broken.load(Ordering::Relaxed));
        assert_eq!((log.emitted(), log.dropped()), (0, 1));
        log.emit(&v);
        assert_eq!(log.dropped(), 2);
    }

    fn keys(line: &str) -> Vec<String> {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        // serde_json without preserve_order sorts keys; compare as sets.
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    }

    fn sorted(k: &[&str]) -> Vec<String> {
        let mut k: Vec<String> = k.iter().map(|s| s.to_string()).collect();
        k.sort();
        k
    }

    const COMMON: &[&str] = &[
        "ts",
        "layer",
        "verdict",
        "action",
        "reason",
        "rule",
        "list",
        "client",
        "client_port",
        "qname",
        "qtype",
        "count",
    ];

    #[test]
    fn xdp_verdict_json_shape() {
        let v = Verdict {
            ts: "2026-11-28T15:04:05.123Z".into(),
            layer: "xdp",
            verdict: "block".into(),
            action: "nxdomain".into(),
            reason: "blocklist".into(),
            rule: Some("evil.example".into()),
            list: Some("malware.txt".into()),
            client: Some("10.0.0.7".parse().unwrap()),
            client_port: Some(40000),
            qname: Some("www.evil.example".into()),
            qtype: Some(qtype_name(1)),
            ..Default::default()
        };
        let line = serde_json::to_string(&v).unwrap();
        assert_eq!(keys(&line), sorted(COMMON));
        // Key order follows the struct, which is what a human reads first.
        assert_eq!(
            line,
            r#"{"ts":"2026-11-28T15:04:05.123Z","layer":"xdp","verdict":"block","action":"nxdomain","reason":"blocklist","rule":"evil.example","list":"malware.txt","client":"10.0.0.7","client_port":40000,"qname":"www.evil.example","qtype":"A","count":1}"#
        );
        let empty =
            serde_json::to_string(&Verdict::new("xdp", "malformed", "drop", "short-header"))
                .unwrap();
        assert_eq!(keys(&empty), sorted(COMMON));
        assert!(empty.contains(r#""client":null"#), "{empty}");
    }

    #[test]
    fn proxy_verdict_json_shape() {
        let v = Verdict {
            upstream: Some("9.9.9.9:53".into()),
            rcode: Some("NOERROR".into()),
            dnssec: Some("secure".into()),
            latency_ms: Some(12.5),
            ..Verdict::new("proxy", "allow", "forward", "ok")
        };
        let line = serde_json::to_string(&v).unwrap();
        let mut all = COMMON.to_vec();
        all.extend(["upstream", "rcode", "dnssec", "latency_ms"]);
        assert_eq!(keys(&line), sorted(&all));
        assert!(
            line.ends_with(
                r#""upstream":"9.9.9.9:53","rcode":"NOERROR","dnssec":"secure","latency_ms":12.5}"#
            ),
            "{line}"
        );
    }

    #[test]
    fn timestamps_are_rfc3339_utc_millis() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_878_245_123);
        assert_eq!(rfc3339(t), "2026-11-28T15:04:05.123Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let now = rfc3339_now();
        assert_eq!(now.len(), 24, "{now}");
        let b = now.as_bytes();
        for (i, c) in [
            (4, b'-'),
            (7, b'-'),
            (10, b'T'),
            (13, b':'),
            (16, b':'),
            (19, b'.'),
            (23, b'Z'),
        ] {
            assert_eq!(b[i], c, "{now}");
        }
    }

    #[test]
    fn qtype_names() {
        assert_eq!(qtype_name(1), "A");
        assert_eq!(qtype_name(28), "AAAA");
        assert_eq!(qtype_name(65), "HTTPS");
        assert_eq!(qtype_name(255), "ANY");
        assert_eq!(qtype_name(65534), "TYPE65534");
    }

    #[test]
    fn emit_writes_whole_lines_from_many_threads() {
        let sink = Shared::default();
        let log = Arc::new(VerdictLog::to_writer(Box::new(sink.clone())));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for i in 0..200 {
                        let mut v = Verdict::new("proxy", "allow", "forward", "ok");
                        v.qname = Some(format!("t{t}-{i}.example"));
                        log.emit(&v);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // Every emit is visible without an explicit flush.
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1600);
        for l in lines {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["layer"], "proxy");
        }
        assert_eq!(log.emitted(), 1600);
        assert_eq!(log.dropped(), 0);
    }

    #[test]
    fn lines_name_the_clients_pod_when_known() {
        use crate::k8s::{PodCache, PodIndex};
        use k8s_openapi::api::core::v1::{Pod, PodIP, PodStatus};
        let mut pod = Pod::default();
        pod.metadata.namespace = Some("shop".into());
        pod.metadata.name = Some("cart-5f9c7-qwert".into());
        pod.status = Some(PodStatus {
            phase: Some("Running".into()),
            pod_ips: Some(vec![PodIP { ip: "10.244.1.20".into() }]),
            ..Default::default()
        });
        let pods = PodIndex::default();
        PodCache::new(pods.clone()).handle(kube::runtime::watcher::Event::Apply(pod));

        let sink = Shared::default();
        let log = VerdictLog::to_writer(Box::new(sink.clone())).with_pods(pods);
        for client in ["10.244.1.20", "10.244.9.9"] {
            let mut v = Verdict::new("xdp", "block", "nxdomain", "blocklist");
            v.client = Some(client.parse().unwrap());
            v.client_port = Some(40000);
            v.qname = Some("evil.example".into());
            log.emit(&v);
        }
        log.emit(Verdict::new("xdp", "malformed", "drop", "short-header"));
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        // Next to the client it names, in struct order.
        assert!(
            lines[0].contains(r#""client":"10.244.1.20","client_port":40000,"pod_namespace":"shop","pod_name":"cart-5f9c7-qwert","qname":"evil.example""#),
            "{}",
            lines[0]
        );
        // Unknown client, or none: the fields are absent, not null.
        assert_eq!(keys(lines[1]), sorted(COMMON));
        assert_eq!(keys(lines[2]), sorted(COMMON));
    }

    #[test]
    fn closed_reader_counts_and_drops() {
        let log = VerdictLog::to_writer(Box::new(Broken));
        for _ in 0..5 {
            log.emit(Verdict::new("xdp", "block", "drop", "blocklist"));
        }
        assert_eq!(log.dropped(), 5);
        assert_eq!(log.emitted(), 0);
    }
}
