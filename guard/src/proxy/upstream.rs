//! Talking to the real upstreams: one fresh socket per query (random
//! source port), a random txid, 0x20 mixed case, checks 1-4 on every
//! datagram, TCP on truncation, failover in health order, and the spoof
//! accounting that moves an attacked upstream to TCP for a while. DNS over
//! TLS upstreams (`tls`) share the failover and checks, not the rest.

use std::{
    cell::RefCell,
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use hickory_proto::{
    op::{Edns, Message, MessageType, OpCode, Query, ResponseCode},
    rr::{Name, RecordType},
};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::{
    io::{unix::AsyncFd, AsyncReadExt, AsyncWriteExt, Interest},
    net::TcpStream,
    time::{timeout_at, Instant},
};
use tokio_rustls::rustls::ClientConfig;
use tracing::{debug, warn};

use super::{
    checks::{expect, truncated_head, verify_response, Expected, Rejection},
    response::EDNS_PAYLOAD,
    tls::{DotClient, DotError},
    Telemetry,
};
use crate::{
    config::{SpoofConfig, Upstream},
    metrics::{SpoofLabels, UpstreamLabels},
    verdict::Verdict,
};

/// Upstreams tried per query before giving up with SERVFAIL.
const MAX_ATTEMPTS: usize = 3;
/// Paranoid mode (Hold-On, Duan et al.): how long to keep listening after
/// the first acceptable answer for a second, different one.
pub const HOLD_ON: Duration = Duration::from_millis(50);
/// How often an upstream marked down is probed.
const PROBE_EVERY: Duration = Duration::from_secs(5);
/// Failed exchanges in a row, over all queries, that mark an upstream
/// down, as CoreDNS's `forward` counts `max_fails` (default 2): one lost
/// datagram does not move all traffic to the next upstream for a probe
/// interval. A DNS over TLS upstream in its redial backoff fails each
/// attempt at once, and each counts.
const MAX_FAILS: u32 = 2;

tokio::task_local! {
    /// When the client query being answered runs out of time
    /// (`proxy.query_timeout_ms`). Every exchange made for it, the
    /// validator's sub-queries too, ends by then; none starts after.
    pub static QUERY_DEADLINE: Instant;
}

/// Why one exchange with one upstream failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("no answer within the timeout")]
    Timeout,
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
    #[error("TCP answer failed the checks ({})", .0.reason())]
    TcpRejected(Rejection),
    #[error("TLS answer failed the checks ({})", .0.reason())]
    TlsRejected(Rejection),
    #[error("{0}")]
    Tls(DotError),
    #[error("cannot encode the query: {0}")]
    Encode(String),
    #[error("the answer has the right id and question but does not parse")]
    Unreadable,
    /// Over UDP only once the deadline passed with no answer after it.
    #[error("only {0} without a question came back, which matches no query")]
    ErrorWithoutQuestion(ResponseCode),
}

impl ExchangeError {
    /// A failure of this process, not of the upstream: out of sockets or
    /// buffers (EMFILE, ENFILE, ENOBUFS, ENOMEM). It does not mark the
    /// upstream down.
    fn is_local(&self) -> bool {
        match self {
            ExchangeError::Io(e) => {
                matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
            }
            _ => false,
        }
    }

    /// The upstream answered, right id, question and case, with data this
    /// process cannot read (hickory reads some types strictly): the name's
    /// fault, not the upstream's. A client asking for such a name again and
    /// again must not mark every upstream down in turn.
    fn is_the_answers(&self) -> bool {
        matches!(self, ExchangeError::Unreadable | ExchangeError::TcpRejected(Rejection::Unreadable) | ExchangeError::TlsRejected(Rejection::Unreadable))
    }
}

/// Why a query got no upstream answer at all.
#[derive(Debug, thiserror::Error)]
#[error("{tried} upstream(s) failed, last {upstream}: {source}")]
pub struct ForwardError {
    pub tried: usize,
    pub upstream: String,
    pub source: ExchangeError,
}

/// Who asked, for the spoof lines of the verdict log.
#[derive(Debug, Clone, Default)]
pub struct QueryCtx {
    pub client: Option<SocketAddr>,
    pub qname: Option<String>,
    pub qtype: Option<String>,
}

/// An accepted upstream answer.
#[derive(Debug)]
pub struct Answer {
    pub msg: Message,
    /// The qname as sent (0x20 case), to undo the case in the reply.
    pub sent: Name,
    pub upstream: String,
    pub latency: Duration,
    pub via: Via,
    /// Paranoid mode saw a second acceptable answer that differed.
    pub differing: bool,
}

/// The transport an answer came over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Udp,
    Tcp,
    Tls,
}

impl From<DotError> for ExchangeError {
    fn from(e: DotError) -> Self {
        match e {
            DotError::Timeout => ExchangeError::Timeout,
            other => ExchangeError::Tls(other),
        }
    }
}

/// Spoofed responses of one upstream in the current window.
struct SpoofWindow {
    start: Instant,
    counts: BTreeMap<&'static str, u32>,
    total: u32,
    /// Datagrams from another address: logged, never toward the threshold.
    strays: u32,
    alerted: bool,
    tcp_until: Option<Instant>,
}

pub struct UpstreamState {
    pub addr: SocketAddr,
    pub label: String,
    /// 0x20 mixed case for this upstream (`proxy.no_0x20` turns it off;
    /// always off over TLS, where no off-path forger can answer).
    pub mixed_case: bool,
    /// Set for a DNS over TLS upstream: its connection.
    dot: Option<DotClient>,
    healthy: AtomicBool,
    /// Failed exchanges since the last answer.
    failures: AtomicU32,
    spoof: Mutex<SpoofWindow>,
}

impl UpstreamState {
    fn labels(&self) -> UpstreamLabels {
        UpstreamLabels { upstream: self.label.clone() }
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }
}

/// The upstream set and the forwarding policy.
pub struct Upstreams {
    list: Vec<Arc<UpstreamState>>,
    spoof: SpoofConfig,
    timeout: Duration,
    paranoid: bool,
    tel: Arc<Telemetry>,
}

impl Upstreams {
    /// `no_0x20`: upstreams queried in lower case (they mangle the case).
    /// `tls`: the client config for `tls://` upstreams (needed if any).
    pub fn new(
        upstreams: &[Upstream],
        no_0x20: &[SocketAddr],
        tls: Option<&Arc<ClientConfig>>,
        spoof: SpoofConfig,
        timeout: Duration,
        paranoid: bool,
        tel: Arc<Telemetry>,
    ) -> Self {
        let list = upstreams
            .iter()
            .map(|up| {
                let label = up.to_string();
                let (addr, mixed_case, dot) = match up {
                    Upstream::Plain(addr) => (*addr, !no_0x20.contains(addr), None),
                    Upstream::Tls { addr, server_name } => {
                        let config = tls.cloned().expect("a TLS client config for tls:// upstreams");
                        (*addr, false, Some(DotClient::new(*addr, server_name, label.clone(), config)))
                    }
                };
                let u = Arc::new(UpstreamState {
                    addr,
                    label,
                    mixed_case,
                    dot,
                    healthy: AtomicBool::new(true),
                    failures: AtomicU32::new(0),
                    spoof: Mutex::new(SpoofWindow {
                        start: Instant::now(),
                        counts: BTreeMap::new(),
                        total: 0,
                        strays: 0,
                        alerted: false,
                        tcp_until: None,
                    }),
                });
                tel.metrics.upstream_healthy.get_or_create(&u.labels()).set(1);
                tel.metrics.upstream_tcp_forced.get_or_create(&u.labels()).set(0);
                u
            })
            .collect();
        Upstreams { list, spoof, timeout, paranoid, tel }
    }

    pub fn states(&self) -> &[Arc<UpstreamState>] {
        &self.list
    }

    /// Healthy upstreams first, each group in configured order.
    fn order(&self) -> Vec<Arc<UpstreamState>> {
        let (mut up, down): (Vec<_>, Vec<_>) = self.list.iter().cloned().partition(|u| u.is_healthy());
        up.extend(down);
        up
    }

    /// An exchange with `u` failed: the `MAX_FAILS`th in a row marks it down.
    fn failed(&self, u: &UpstreamState, why: &ExchangeError) {
        if u.failures.fetch_add(1, Ordering::Relaxed).saturating_add(1) >= MAX_FAILS {
            self.set_health(u, false, Some(why));
        }
    }

    /// `u` answered: healthy, and its count of failures starts over.
    fn answered(&self, u: &UpstreamState) {
        u.failures.store(0, Ordering::Relaxed);
        self.set_health(u, true, None);
    }

    /// `why`: the failure that marks it down, logged with the change.
    fn set_health(&self, u: &UpstreamState, ok: bool, why: Option<&ExchangeError>) {
        if u.healthy.swap(ok, Ordering::Relaxed) != ok {
            if ok {
                warn!(upstream = %u.label, "upstream answers again");
            } else {
                let error = why.map(ToString::to_string).unwrap_or_default();
                warn!(upstream = %u.label, %error, "upstream failed; trying it last until a probe succeeds");
            }
        }
        self.tel.metrics.upstream_healthy.get_or_create(&u.labels()).set(ok as i64);
    }

    /// Forwards `query` (the client's question; its case is replaced by a
    /// random one) and returns the first answer that passes checks 1-4.
    pub async fn forward(&self, query: &Query, cd: bool, dnssec_ok: bool, ctx: &QueryCtx) -> Result<Answer, ForwardError> {
        let mut last = None;
        let mut tried = 0;
        let budget = QUERY_DEADLINE.try_with(|d| *d).ok();
        for u in self.order().into_iter().take(MAX_ATTEMPTS) {
            let started = Instant::now();
            if budget.is_some_and(|b| started >= b) {
                break;
            }
            tried += 1;
            let own = started + self.timeout;
            let deadline = budget.map_or(own, |b| b.min(own));
            // A timeout says little about an upstream that the query's budget
            // left under half its own timeout.
            let cut_short = deadline.duration_since(started) < self.timeout / 2;
            match self.exchange(&u, query, cd, dnssec_ok, deadline, cut_short, ctx).await {
                Ok(mut a) => {
                    a.latency = started.elapsed();
                    self.tel.metrics.upstream_latency.get_or_create(&u.labels()).observe(a.latency.as_secs_f64());
                    self.answered(&u);
                    return Ok(a);
                }
                Err(e) => {
                    debug!(upstream = %u.label, error = %e, "upstream exchange failed");
                    let budget_timeout = cut_short && matches!(e, ExchangeError::Timeout);
                    if !(e.is_local() || e.is_the_answers() || budget_timeout) {
                        self.failed(&u, &e);
                    }
                    last = Some((u.label.clone(), e));
                }
            }
        }
        let (upstream, source) = last.unwrap_or_else(|| ("none".into(), ExchangeError::Timeout));
        Err(ForwardError { tried, upstream, source })
    }

    /// One upstream: UDP (or TCP while forced), then TCP if truncated;
    /// or its TLS connection.
    #[allow(clippy::too_many_arguments, reason = "the query's flags and its deadline, passed on as they are")]
    async fn exchange(
        &self,
        u: &UpstreamState,
        query: &Query,
        cd: bool,
        dnssec_ok: bool,
        deadline: Instant,
        cut_short: bool,
        ctx: &QueryCtx,
    ) -> Result<Answer, ExchangeError> {
        let (mut msg, sent) = build_query(query, cd, dnssec_ok, u.mixed_case);
        let first = self.exchange_msg(u, &mut msg, &sent, deadline, ctx, cut_short).await;
        // RFC 6891 §7: a server that does not implement EDNS answers a
        // query with an OPT record FORMERR, without an OPT of its own; it is
        // asked once more without one, on a new id. A FORMERR with an OPT
        // comes from a server that knows EDNS and objects to something
        // else. Not when DO is wanted (validating, or the client asked):
        // without EDNS no signature comes back. Not over TLS: its padding is
        // EDNS (RFC 8467), and a DoT server knows EDNS.
        let edns_refused =
            first.as_ref().is_ok_and(|a| a.msg.metadata.response_code == ResponseCode::FormErr && a.msg.edns.is_none());
        if !edns_refused || dnssec_ok || u.dot.is_some() || msg.edns.is_none() {
            return first;
        }
        debug!(upstream = %u.label, "FORMERR to a query with EDNS; asking again without it");
        msg.edns = None;
        msg.metadata.id = rand::random();
        self.exchange_msg(u, &mut msg, &sent, deadline, ctx, cut_short).await
    }

    /// One query message to one upstream, as `exchange` describes.
    async fn exchange_msg(
        &self,
        u: &UpstreamState,
        msg: &mut Message,
        sent: &Name,
        deadline: Instant,
        ctx: &QueryCtx,
        cut_short: bool,
    ) -> Result<Answer, ExchangeError> {
        let sent = sent.clone();
        if let Some(dot) = &u.dot {
            // Spoof counting and the TCP switch have nothing to do here:
            // an answer on an authenticated connection is the server's.
            // Checks 2-4 still run: a confused server is a failed upstream.
            let raw = dot.exchange(msg, deadline, cut_short).await?;
            let expected = Expected { match_case: false, ..expect(u.addr, msg.metadata.id, &msg.queries[0]) };
            let reply = verify_response(&expected, u.addr, &raw).map_err(|r| rejected(r, ExchangeError::TlsRejected))?;
            return Ok(Answer { msg: reply, sent, upstream: u.label.clone(), latency: Duration::ZERO, via: Via::Tls, differing: false });
        }
        let expected = Expected { match_case: u.mixed_case, ..expect(u.addr, msg.metadata.id, &msg.queries[0]) };
        let mut tcp = self.tcp_forced(u);
        let (reply, differing) = if tcp {
            (tcp_exchange(msg, &expected, deadline).await?, false)
        } else {
            self.udp_exchange(u, msg, &expected, deadline, ctx).await?
        };
        let (reply, differing) = if reply.metadata.truncation && !tcp {
            // RFC 7766 §5: a truncated UDP answer is retried over TCP,
            // with a new id: the first one has been on the wire.
            tcp = true;
            let mut retry = msg.clone();
            retry.metadata.id = rand::random();
            let expected = Expected { id: retry.metadata.id, ..expected };
            (tcp_exchange(&retry, &expected, deadline).await?, false)
        } else {
            (reply, differing)
        };
        let via = if tcp { Via::Tcp } else { Via::Udp };
        Ok(Answer { msg: reply, sent, upstream: u.label.clone(), latency: Duration::ZERO, via, differing })
    }

    /// Sends once, then reads until an acceptable answer or the deadline.
    /// A datagram that fails checks 1-4 is counted and ignored: a forgery
    /// must not end the wait for the real answer (that would be a cheap
    /// way to make us fail, and a timing oracle for the forger).
    async fn udp_exchange(
        &self,
        u: &UpstreamState,
        msg: &Message,
        expected: &Expected,
        deadline: Instant,
        ctx: &QueryCtx,
    ) -> Result<(Message, bool), ExchangeError> {
        let bytes = msg.to_vec().map_err(|e| ExchangeError::Encode(e.to_string()))?;
        let sock = send_on_fresh_socket(u.addr, &bytes)?;
        let mut unmatched = None;
        let first = loop {
            let Ok(received) = timeout_at(deadline, recv_datagram(&sock)).await else {
                return Err(unmatched.map_or(ExchangeError::Timeout, ExchangeError::ErrorWithoutQuestion));
            };
            let (datagram, from) = received?;
            match verify_response(expected, from, &datagram) {
                Ok(m) => break m,
                Err(Rejection::Unreadable) => match truncated_head(&datagram) {
                    Some(head) => break head,
                    None => return Err(ExchangeError::Unreadable),
                },
                Err(Rejection::ErrorWithoutQuestion(rcode)) => {
                    debug!(upstream = %u.label, %rcode, "an error without a question; waiting on for the answer");
                    unmatched.get_or_insert(rcode);
                }
                Err(rej) => self.on_spoof(u, rej, from, ctx),
            }
        };
        if !self.paranoid {
            return Ok((first, false));
        }
        let until = deadline.min(Instant::now() + HOLD_ON);
        let mut differing = false;
        while let Ok(r) = timeout_at(until, recv_datagram(&sock)).await {
            let (datagram, from) = r?;
            match verify_response(expected, from, &datagram) {
                Ok(m) if !same_answer(&first, &m) => differing = true,
                Ok(_) | Err(Rejection::Unreadable | Rejection::ErrorWithoutQuestion(_)) => {}
                Err(rej) => self.on_spoof(u, rej, from, ctx),
            }
        }
        Ok((first, differing))
    }

    /// Counts one rejected datagram; past the threshold, moves the
    /// upstream to TCP (PowerDNS Recursor does so after one near miss;
    /// a threshold keeps stray late answers from costing a TCP handshake).
    ///
    /// A datagram from another address than the upstream's is counted and
    /// logged, but not toward the threshold: it could never have been
    /// accepted, and the socket is open to anyone who can reach the pod, so
    /// any pod spraying the ephemeral ports (no spoofing needed) would keep
    /// the upstream on TCP. A forger who means it spoofs the source.
    fn on_spoof(&self, u: &UpstreamState, rej: Rejection, from: SocketAddr, ctx: &QueryCtx) {
        self.tel.metrics.spoof_responses.get_or_create(&SpoofLabels { upstream: u.label.clone(), kind: rej.kind() }).inc();
        debug!(upstream = %u.label, %from, kind = rej.kind(), "response failed the checks");
        let now = Instant::now();
        let window = Duration::from_secs(self.spoof.window_s);
        let (log_each, alert) = {
            let mut w = u.spoof.lock().unwrap_or_else(|p| p.into_inner());
            if now.duration_since(w.start) >= window {
                w.start = now;
                w.counts.clear();
                w.total = 0;
                w.strays = 0;
                w.alerted = false;
            }
            if rej == Rejection::WrongSource {
                w.strays = w.strays.saturating_add(1);
                (w.strays <= self.spoof.threshold, None)
            } else {
                *w.counts.entry(rej.kind()).or_default() += 1;
                w.total += 1;
                let over = w.total > self.spoof.threshold;
                let alert = (over && !w.alerted).then(|| {
                    w.alerted = true;
                    if self.spoof.tcp_cooldown_s > 0 {
                        w.tcp_until = Some(now + Duration::from_secs(self.spoof.tcp_cooldown_s));
                    }
                    let kinds: Vec<String> = w.counts.iter().map(|(k, n)| format!("{k}={n}")).collect();
                    format!("{} spoofed responses within {}s ({})", w.total, self.spoof.window_s, kinds.join(","))
                });
                // Past the threshold only the summary is logged, so a flood of
                // forgeries cannot flood the verdict log too.
                (!over, alert)
            }
        };
        let line = |verdict: &'static str, action: &str, reason: String| {
            let mut v = Verdict::new("proxy", verdict, action, reason);
            v.client = ctx.client.map(|c| c.ip());
            v.client_port = ctx.client.map(|c| c.port());
            v.qname = ctx.qname.clone();
            v.qtype = ctx.qtype.clone();
            v.upstream = Some(u.label.clone());
            v
        };
        if log_each {
            self.tel.emit(line("spoof", "drop", rej.reason().to_string()), "spoof", &u.label);
        } else {
            self.tel.count("spoof", &u.label);
        }
        if let Some(summary) = alert {
            let action = if self.spoof.tcp_cooldown_s > 0 { "tcp" } else { "log" };
            warn!(upstream = %u.label, "{summary}; querying it over TCP for {}s", self.spoof.tcp_cooldown_s);
            if self.spoof.tcp_cooldown_s > 0 {
                self.tel.metrics.upstream_tcp_forced.get_or_create(&u.labels()).set(1);
            }
            self.tel.emit(line("poisoning-attempt", action, summary), "poisoning-attempt", &u.label);
        }
    }

    /// True while `u` is in its TCP cooldown.
    fn tcp_forced(&self, u: &UpstreamState) -> bool {
        let mut w = u.spoof.lock().unwrap_or_else(|p| p.into_inner());
        match w.tcp_until {
            Some(t) if Instant::now() >= t => {
                // A new window starts with UDP again: an attack that goes
                // on after a cooldown shorter than the window is counted,
                // alerted and answered with TCP afresh.
                w.tcp_until = None;
                w.start = Instant::now();
                w.counts.clear();
                w.total = 0;
                w.strays = 0;
                w.alerted = false;
                self.tel.metrics.upstream_tcp_forced.get_or_create(&u.labels()).set(0);
                false
            }
            Some(_) => true,
            None => false,
        }
    }

    /// Probes upstreams marked down with `. NS` every few seconds, so a
    /// recovered upstream goes back to the front of the order.
    pub async fn probe_forever(self: Arc<Self>) {
        let root = Query::query(Name::root(), RecordType::NS);
        loop {
            tokio::time::sleep(PROBE_EVERY).await;
            // Ends cool-downs that no query would: a backup upstream's
            // dns_guard_upstream_tcp_forced went back to 0 only when used.
            for u in &self.list {
                self.tcp_forced(u);
            }
            for u in self.list.iter().filter(|u| !u.is_healthy()) {
                let deadline = Instant::now() + self.timeout;
                let ok = self.exchange(u, &root, false, false, deadline, false, &QueryCtx::default()).await.is_ok();
                if ok {
                    self.answered(u);
                }
            }
        }
    }
}

/// The upstream query for `query`: random id, the name in random case
/// (draft-vixie-dnsext-dns0x20) unless `mixed_case` is off, then in lower
/// case; RD, EDNS0 at 1232 with DO when wanted.
pub fn build_query(query: &Query, cd: bool, dnssec_ok: bool, mixed_case: bool) -> (Message, Name) {
    let mut name = query.name().to_lowercase();
    name.set_fqdn(true);
    if mixed_case {
        name.randomize_label_case();
    }
    let mut q = query.clone();
    q.set_name(name.clone());
    let mut m = Message::new(rand::random(), MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.metadata.checking_disabled = cd;
    m.add_query(q);
    let mut e = Edns::new();
    e.set_max_payload(EDNS_PAYLOAD);
    e.set_dnssec_ok(dnssec_ok);
    m.set_edns(e);
    (m, name)
}

/// RFC 7766 framing: a 2-byte length, then the message. A fresh
/// connection per query, like the UDP socket.
async fn tcp_exchange(msg: &Message, expected: &Expected, deadline: Instant) -> Result<Message, ExchangeError> {
    let bytes = msg.to_vec().map_err(|e| ExchangeError::Encode(e.to_string()))?;
    let len = u16::try_from(bytes.len()).map_err(|_| ExchangeError::Encode("query over 65535 bytes".into()))?;
    let io = async {
        let mut s = TcpStream::connect(expected.server).await?;
        // Closed with a reset once the answer is read, not a FIN: whoever
        // closes first keeps the port in TIME_WAIT for 60 s, and a
        // connection per query (an upstream on TCP for a spoofing
        // cool-down) would run out of ports near 470 queries a second.
        socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO))?;
        let mut framed = len.to_be_bytes().to_vec();
        framed.extend_from_slice(&bytes);
        s.write_all(&framed).await?;
        let n = s.read_u16().await? as usize;
        let mut buf = vec![0u8; n];
        s.read_exact(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let buf = timeout_at(deadline, io).await.map_err(|_| ExchangeError::Timeout)??;
    // The source is the connection's peer: check 1 holds by construction.
    verify_response(expected, expected.server, &buf).map_err(|r| rejected(r, ExchangeError::TcpRejected))
}

/// A stream answer that failed checks 1-4: the connection's peer is the
/// server, so an unreadable answer is its own, as on UDP.
fn rejected(r: Rejection, wrap: fn(Rejection) -> ExchangeError) -> ExchangeError {
    match r {
        Rejection::Unreadable => ExchangeError::Unreadable,
        Rejection::ErrorWithoutQuestion(rcode) => ExchangeError::ErrorWithoutQuestion(rcode),
        r => wrap(r),
    }
}

/// Same rcode and the same answer records (order and TTL aside).
fn same_answer(a: &Message, b: &Message) -> bool {
    let set = |m: &Message| {
        let mut v: Vec<String> = m
            .answers
            .iter()
            .map(|r| format!("{} {} {}", r.name.to_lowercase(), r.record_type(), r.data))
            .collect();
        v.sort();
        v
    };
    a.metadata.response_code == b.metadata.response_code && set(a) == set(b)
}

/// A new socket per query: the kernel picks a random ephemeral port
/// (RFC 5452 §9.2), so a forger must guess port and txid. The query is sent
/// before the socket is registered with tokio, and it is registered for
/// reads only: a fresh tokio socket is not writable until the I/O driver has
/// polled its first epoll event, so its first send waited a trip through
/// the driver, and the write event itself woke whichever worker was parked
/// in epoll_wait, on every query.
///
/// Two syscalls of the eleven a query cost are not made: the socket is
/// created non-blocking (no `ioctl(FIONBIO)`), and it is not bound: the
/// first send binds it to the wildcard address and a random ephemeral
/// port, the same choice `bind` to port 0 makes (both go through the
/// protocol's `get_port` with port 0).
fn send_on_fresh_socket(upstream: SocketAddr, query: &[u8]) -> std::io::Result<AsyncFd<std::net::UdpSocket>> {
    let sock = Socket::new(Domain::for_address(upstream), Type::DGRAM.nonblocking(), Some(Protocol::UDP))?;
    sock.send_to(query, &upstream.into())?;
    let sock = std::net::UdpSocket::from(sock);
    // SAFETY: the std socket owns its fd, which stays open and the same
    // until the AsyncFd (the socket's only owner from here) is dropped.
    unsafe { AsyncFd::register_with_interest(sock, Interest::READABLE) }.map_err(|e| e.into_parts().1)
}

thread_local! {
    /// One receive buffer per worker thread, zeroed once: a zeroed 64 KiB
    /// buffer per query was 5% of the proxy's CPU, page faults included.
    static RECV_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; 65535].into_boxed_slice());
}

/// The next datagram on an upstream socket, and who sent it.
async fn recv_datagram(sock: &AsyncFd<std::net::UdpSocket>) -> std::io::Result<(Vec<u8>, SocketAddr)> {
    loop {
        let mut ready = sock.readable().await?;
        let received = ready.try_io(|s| {
            RECV_BUF.with_borrow_mut(|buf| s.get_ref().recv_from(buf).map(|(n, from)| (buf[..n].to_vec(), from)))
        });
        if let Ok(r) = received {
            return r;
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use hickory_proto::rr::{rdata::A, RData, Record};
    use std::str::FromStr;

    #[test]
    fn queries_get_random_ids_and_case() {
        let q = Query::query(Name::from_str("abcdefghijklmnop.example.com.").unwrap(), RecordType::A);
        let (m1, n1) = build_query(&q, false, true, true);
        let (m2, n2) = build_query(&q, false, true, true);
        // 2^-16 and 2^-24 chances of a false failure: acceptable.
        assert!(m1.metadata.id != m2.metadata.id || !n1.eq_case(&n2));
        assert!(!n1.eq_case(&n2));
        assert!(n1.eq_ignore_root(q.name()));
        assert!(m1.edns.as_ref().unwrap().flags().dnssec_ok);
        assert_eq!(m1.edns.as_ref().unwrap().max_payload(), 1232);
        assert!(m1.metadata.recursion_desired);
        let (_, plain) = build_query(&q, false, true, false);
        assert_eq!(plain.to_ascii(), "abcdefghijklmnop.example.com.");
    }

    #[test]
    fn answers_compare_by_content() {
        let n = Name::from_str("a.example.").unwrap();
        let mk = |ip: [u8; 4]| {
            let mut m = Message::response(1, OpCode::Query);
            m.add_answer(Record::from_rdata(n.clone(), 60, RData::A(A::from(std::net::Ipv4Addr::from(ip)))));
            m
        };
        assert!(same_answer(&mk([192, 0, 2, 1]), &mk([192, 0, 2, 1])));
        assert!(!same_answer(&mk([192, 0, 2, 1]), &mk([192, 0, 2, 2])));
    }
}
