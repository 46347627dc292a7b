//! The validating forwarder. CoreDNS's `forward . 127.0.0.1:5353` points
//! here; queries go on to the real upstreams and only answers that pass
//! the checks in `checks` come back, so nothing forged reaches the cache.
//!
//! The listeners are plain tokio sockets rather than hickory-server: its
//! 0.26 UDP loop spawns one task per datagram with no bound and logs every
//! request at info, and its response builder cannot carry a raw EDE
//! option. Parsing and encoding are hickory-proto's.

pub mod checks;
pub mod dname;
pub mod dnssec;
pub mod expansion;
pub mod fuzzing;
pub mod handler;
pub mod positive_proof;
pub mod proof_ledger;
pub mod response;
pub mod tls;
pub mod upstream;

use std::{
    io,
    net::SocketAddr,
    sync::Arc,
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
    sync::Semaphore,
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;
use tokio_rustls::rustls::ClientConfig;
use tracing::debug;

use crate::{
    admin::Shutdown,
    config::{Config, DnssecMode, RebindingConfig, ResolvConfError, SpoofConfig, Upstream, XdpAction},
    ebpf::events::SharedRuleIndex,
    metrics::{Metrics, VerdictLabels},
    dynblock::DynBlocks,
    verdict::{Verdict, VerdictLog},
};
use dnssec::{AnchorError, AnchorSet, Validator};
use handler::{Handler, Transport};
use tls::TlsConfigError;
use upstream::Upstreams;

/// Queries being answered at once, UDP and TCP together. hickory-server
/// has no such bound; without one a flood of slow upstream lookups grows
/// memory without limit. Past it the UDP loop stops reading and the
/// kernel's socket buffer absorbs (and then drops) the excess.
pub const MAX_INFLIGHT: usize = 4096;
/// Open client TCP connections; more are closed on accept.
pub const MAX_TCP_CONNECTIONS: usize = 256;
/// An idle client TCP connection is closed after this (RFC 7766 §6.2.3).
pub const TCP_IDLE: Duration = Duration::from_secs(10);
/// Queries answered at once on one client TCP connection; the next is read
/// when one of them is done.
pub const TCP_PIPELINE: usize = 64;
/// Queries from all client TCP connections together, read and not yet
/// answered: a quarter of `MAX_INFLIGHT`, so TCP clients cannot take the
/// slots UDP needs, and at most 64 MiB of 64 KiB requests held.
pub const MAX_TCP_INFLIGHT: usize = MAX_INFLIGHT / 4;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot bind the proxy's {proto} listener on {addr}: {source}; set proxy.listen in guard.yaml to a free address")]
    Bind { proto: &'static str, addr: SocketAddr, source: io::Error },
    #[error(transparent)]
    Upstreams(#[from] ResolvConfError),
    #[error(transparent)]
    TrustAnchor(#[from] AnchorError),
    #[error(transparent)]
    TlsCa(#[from] TlsConfigError),
}

/// The proxy's view of the config.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    pub listen: SocketAddr,
    pub upstreams: Vec<Upstream>,
    /// The TLS client for `tls://` upstreams; `None` when there are none.
    pub tls: Option<Arc<ClientConfig>>,
    /// Upstreams asked in lower case (`proxy.no_0x20`).
    pub no_0x20: Vec<SocketAddr>,
    pub dnssec: DnssecMode,
    /// `proxy.trust_anchor` as read; empty: the IANA root keys.
    pub anchors: AnchorSet,
    pub rebinding: RebindingConfig,
    pub spoof: SpoofConfig,
    pub paranoid: bool,
    /// One upstream attempt.
    pub timeout: Duration,
    /// One client query, whole.
    pub query_timeout: Duration,
    pub allow_sample: f64,
    /// `xdp.action: log`: the blocklist check only logs (a dry run).
    pub block_dry_run: bool,
}

impl ProxySettings {
    /// Reads `proxy:` and `log:`; resolv.conf when no upstreams are set.
    pub fn from_config(cfg: &Config) -> Result<Self, ProxyError> {
        let p = &cfg.proxy;
        let upstreams = p.effective_upstreams()?;
        let tls = if upstreams.iter().any(|u| matches!(u, Upstream::Tls { .. })) {
            Some(tls::client_config(p.tls_ca.as_deref())?)
        } else {
            None
        };
        let anchors = match (&p.trust_anchor, p.dnssec) {
            (Some(path), DnssecMode::Validate) => AnchorSet::from_file(path)?,
            _ => AnchorSet::default(),
        };
        Ok(ProxySettings {
            listen: p.listen,
            upstreams,
            tls,
            no_0x20: p.no_0x20.clone(),
            dnssec: p.dnssec,
            anchors,
            rebinding: p.rebinding.clone(),
            spoof: p.spoof.clone(),
            paranoid: p.paranoid,
            timeout: Duration::from_millis(p.timeout_ms),
            query_timeout: Duration::from_millis(p.query_timeout_ms),
            allow_sample: cfg.log.allow_sample,
            block_dry_run: cfg.xdp.action == XdpAction::Log,
        })
    }
}

/// The verdict log and the metrics, as the proxy writes them.
pub struct Telemetry {
    pub log: Arc<VerdictLog>,
    pub metrics: Metrics,
    /// Fraction of `allow` verdicts written to the log (all are counted).
    pub allow_sample: f64,
}

impl Telemetry {
    /// Counts `v` and writes it (allows only at the sampling rate).
    pub fn emit(&self, v: Verdict, label: &'static str, upstream: &str) {
        self.count(label, upstream);
        if label != "allow" || (self.allow_sample > 0.0 && rand::random::<f64>() < self.allow_sample) {
            self.log.emit(v);
        }
    }

    pub fn count(&self, label: &'static str, upstream: &str) {
        self.metrics
            .verdicts
            .get_or_create(&VerdictLabels { layer: "proxy", verdict: label, upstream: upstream.to_string() })
            .inc();
    }
}

/// A running proxy; dropping it stops the listeners.
pub struct ProxyHandle {
    pub local_addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for ProxyHandle {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Binds UDP and TCP on `settings.listen` (the same port for both, also
/// when it is 0) and starts serving. Returns once both are bound.
///
/// When `shutdown.token` is cancelled (SIGTERM) the listeners stop taking
/// new queries; each query already read runs on `shutdown.tracker`, so the
/// drain waits for its answer to go out.
pub async fn start(
    settings: ProxySettings,
    index: SharedRuleIndex,
    dynblocks: Arc<DynBlocks>,
    log: Arc<VerdictLog>,
    metrics: Metrics,
    shutdown: Shutdown,
) -> Result<ProxyHandle, ProxyError> {
    let (udp, tcp, local_addr) = bind_pair(settings.listen).await?;

    let tel = Arc::new(Telemetry { log, metrics, allow_sample: settings.allow_sample });
    let upstreams = Arc::new(Upstreams::new(
        &settings.upstreams,
        &settings.no_0x20,
        settings.tls.as_ref(),
        settings.spoof.clone(),
        settings.timeout,
        settings.paranoid,
        tel.clone(),
    ));
    let validator = (settings.dnssec == DnssecMode::Validate)
        .then(|| Arc::new(Validator::new(upstreams.clone(), settings.anchors.clone(), &tel.metrics)));
    let handler = Arc::new(Handler {
        upstreams: upstreams.clone(),
        validator,
        index,
        tel,
        rebinding: settings.rebinding.clone(),
        dnssec: settings.dnssec,
        dynblocks: dynblocks.clone(),
        block_dry_run: settings.block_dry_run,
        query_timeout: settings.query_timeout,
    });
    let inflight = Arc::new(Semaphore::new(MAX_INFLIGHT));
    let tasks = vec![
        tokio::spawn(until_cancelled(shutdown.token.clone(), dynblocks.expire_forever())),
        tokio::spawn(serve_udp(Arc::new(udp), handler.clone(), inflight.clone(), shutdown.clone())),
        tokio::spawn(serve_tcp(tcp, handler, inflight, shutdown.clone())),
        tokio::spawn(until_cancelled(shutdown.token, upstreams.probe_forever())),
    ];
    Ok(ProxyHandle { local_addr, tasks })
}

/// UDP and TCP on one port. With port 0 the kernel picks the UDP port,
/// which TCP may already use elsewhere: then another pick is tried.
async fn bind_pair(listen: SocketAddr) -> Result<(UdpSocket, TcpListener, SocketAddr), ProxyError> {
    let mut tries = 0;
    loop {
        let udp = UdpSocket::bind(listen).await.map_err(|source| ProxyError::Bind { proto: "UDP", addr: listen, source })?;
        let local_addr = udp.local_addr().map_err(|source| ProxyError::Bind { proto: "UDP", addr: listen, source })?;
        match TcpListener::bind(local_addr).await {
            Ok(tcp) => return Ok((udp, tcp, local_addr)),
            Err(e) if listen.port() == 0 && e.kind() == io::ErrorKind::AddrInUse && tries < 8 => tries += 1,
            Err(source) => return Err(ProxyError::Bind { proto: "TCP", addr: local_addr, source }),
        }
    }
}

/// Runs `f` until the token is cancelled.
async fn until_cancelled(token: CancellationToken, f: impl std::future::Future<Output = ()>) {
    tokio::select! {
        _ = token.cancelled() => {}
        _ = f => {}
    }
}

async fn serve_udp(sock: Arc<UdpSocket>, handler: Arc<Handler>, inflight: Arc<Semaphore>, shutdown: Shutdown) {
    let mut buf = vec![0u8; 65535];
    loop {
        let received = tokio::select! {
            // biased: once draining, a datagram already queued is not taken.
            biased;
            _ = shutdown.token.cancelled() => {
                debug!("proxy UDP listener draining: no new queries");
                return;
            }
            r = sock.recv_from(&mut buf) => r,
        };
        let (n, from) = match received {
            Ok(r) => r,
            Err(e) => {
                // ICMP errors from earlier replies surface here; not fatal.
                debug!(error = %e, "proxy UDP receive failed");
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
        };
        let Ok(permit) = inflight.clone().acquire_owned().await else { return };
        let data = buf[..n].to_vec();
        let (sock, handler) = (sock.clone(), handler.clone());
        shutdown.tracker.spawn(async move {
            let _permit = permit;
            if let Some(out) = handler.handle(&data, from, Transport::Udp).await {
                if let Err(e) = sock.send_to(&out, from).await {
                    debug!(error = %e, %from, "cannot send proxy reply");
                }
            }
        });
    }
}

async fn serve_tcp(listener: TcpListener, handler: Arc<Handler>, inflight: Arc<Semaphore>, shutdown: Shutdown) {
    let conns = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    let tcp_inflight = Arc::new(Semaphore::new(MAX_TCP_INFLIGHT));
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.token.cancelled() => return,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(r) => r,
            Err(e) => {
                debug!(error = %e, "proxy TCP accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(conn) = conns.clone().try_acquire_owned() else {
            debug!(%peer, "too many TCP clients; closing");
            continue;
        };
        let (handler, inflight, token) = (handler.clone(), inflight.clone(), shutdown.token.clone());
        let tcp_inflight = tcp_inflight.clone();
        shutdown.tracker.spawn(async move {
            let _conn = conn;
            if let Err(e) = serve_tcp_conn(stream, peer, handler, inflight, tcp_inflight, token).await {
                debug!(%peer, error = %e, "proxy TCP connection ended");
            }
        });
    }
}

/// RFC 7766: length-prefixed messages until the client closes or idles,
/// or the drain starts. Pipelined queries are answered concurrently, each
/// as soon as it is ready (§6.2.1.1: out of order, matched by id), so one
/// slow name does not hold up the queries behind it; at most
/// `TCP_PIPELINE` per connection. The connection ends only after every
/// query it read has had its answer written (or the client stopped
/// reading them).
async fn serve_tcp_conn(
    stream: TcpStream,
    peer: SocketAddr,
    handler: Arc<Handler>,
    inflight: Arc<Semaphore>,
    tcp_inflight: Arc<Semaphore>,
    token: CancellationToken,
) -> io::Result<()> {
    let (mut reader, writer) = stream.into_split();
    // Taken (and so shut) at the first reply that cannot be written: the
    // client is gone or not reading, and after a frame cut short no later
    // one would be read right.
    let writer = Arc::new(tokio::sync::Mutex::new(Some(writer)));
    let broken = CancellationToken::new();
    let mut answering = tokio::task::JoinSet::new();
    let result = loop {
        while answering.len() >= TCP_PIPELINE {
            answering.join_next().await;
        }
        // Reap what finished, so the set holds only queries in flight.
        while answering.try_join_next().is_some() {}
        let read = tokio::select! {
            biased;
            _ = token.cancelled() => break Ok(()),
            _ = broken.cancelled() => break Ok(()),
            r = tokio::time::timeout(TCP_IDLE, reader.read_u16()) => r,
        };
        let len = match read {
            Ok(Ok(n)) => n as usize,
            Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => break Ok(()),
            Ok(Err(e)) => break Err(e),
            Err(_) => break Ok(()),
        };
        // Before the body is read: the slot bounds the memory it takes.
        let slot = tokio::select! {
            biased;
            _ = token.cancelled() => break Ok(()),
            _ = broken.cancelled() => break Ok(()),
            s = tcp_inflight.clone().acquire_owned() => s,
        };
        let Ok(slot) = slot else { break Ok(()) };
        let mut buf = vec![0u8; len];
        match tokio::time::timeout(TCP_IDLE, reader.read_exact(&mut buf)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => break Err(e),
            Err(_) => break Err(io::Error::new(io::ErrorKind::TimedOut, "request body")),
        }
        let (handler, inflight, writer, broken) = (handler.clone(), inflight.clone(), writer.clone(), broken.clone());
        answering.spawn(async move {
            // The in-flight slots cover the answering, not the write: a
            // client that stops reading must not hold one.
            let answered = {
                let _slot = slot;
                let Ok(_permit) = inflight.acquire().await else { return };
                handler.handle(&buf, peer, Transport::Tcp).await
            };
            drop(buf);
            let Some(out) = answered else { return };
            let Ok(n) = u16::try_from(out.len()) else { return };
            let mut framed = n.to_be_bytes().to_vec();
            framed.extend_from_slice(&out);
            let mut w = writer.lock().await;
            let Some(stream) = w.as_mut() else { return };
            if !matches!(tokio::time::timeout(TCP_IDLE, stream.write_all(&framed)).await, Ok(Ok(()))) {
                debug!(%peer, "TCP reply not written; closing the connection");
                w.take();
                broken.cancel();
            }
        });
    };
    while answering.join_next().await.is_some() {}
    result
}

#[cfg(test)]
mod tests;
