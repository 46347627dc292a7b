//! DNS over TLS (RFC 7858) to one upstream. A handshake per query would
//! cost two extra round trips, so each upstream keeps one connection and
//! pipelines queries on it (RFC 7858 §3.4, RFC 7766 §6.2.1.1), matching
//! replies to queries by txid; a broken connection is replaced on demand.

use std::{
    collections::HashMap,
    io,
    net::SocketAddr,
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use hickory_proto::{op::Message, rr::rdata::opt::EdnsOption};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf},
    net::TcpStream,
    sync::oneshot,
    time::{timeout_at, Instant},
};
use tokio_rustls::{
    client::TlsStream,
    rustls::{
        self,
        pki_types::{pem::PemObject, CertificateDer, ServerName},
        ClientConfig, RootCertStore,
    },
    TlsConnector,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// After a failed connect, queries fail at once for this long instead of
/// each paying for a handshake that will fail the same way. Shorter than
/// the health probe's period, so every probe really dials.
const CONNECT_BACKOFF: Duration = Duration::from_secs(2);
/// RFC 8467 §4.1: queries padded to a multiple of 128 octets (RFC 7830),
/// so their length says little about the name asked.
const PAD_BLOCK: usize = 128;
/// Queries in flight on one connection; each needs its own txid.
const MAX_PENDING: usize = 16_384;

/// Why the TLS settings cannot be built: `proxy.tls_ca` is unusable.
#[derive(Debug, thiserror::Error)]
#[error("proxy.tls_ca: {0}")]
pub struct TlsConfigError(String);

/// Why one exchange over TLS failed.
#[derive(Debug, thiserror::Error)]
pub enum DotError {
    /// TCP connect, or its timeout.
    #[error("TLS connection failed: {0}")]
    Connect(String),
    /// The TLS handshake, certificate checks included.
    #[error("TLS connection failed: {0}")]
    Handshake(String),
    #[error("TLS connection failed {ago:.1}s ago ({reason}); not redialing yet")]
    Backoff { ago: f64, reason: String },
    #[error("TLS connection closed before the answer")]
    Closed,
    #[error("no answer within the timeout")]
    Timeout,
    #[error("too many queries in flight on the TLS connection")]
    Busy,
    #[error("TLS write failed: {0}")]
    Io(#[from] io::Error),
    #[error("cannot encode the query: {0}")]
    Encode(String),
}

/// The client side of rustls with the ring provider. Roots: `ca` (a PEM
/// file, for a private CA) instead of the built-in Mozilla set, which
/// ships in the binary so a distroless image needs no CA bundle.
pub fn client_config(ca: Option<&Path>) -> Result<Arc<ClientConfig>, TlsConfigError> {
    let roots = match ca {
        None => RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() },
        Some(path) => ca_roots(path).map_err(TlsConfigError)?,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The CA certificates in the PEM file `path`; the error says what to fix.
/// Also run by the config check, so `dns-guard check` reports it at the
/// key's line.
pub fn ca_roots(path: &Path) -> Result<RootCertStore, String> {
    const WANT: &str = "give the CA certificate(s) that sign the DNS over TLS servers' certificates, in PEM";
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{} is not PEM ({e}); {WANT}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no CERTIFICATE block found; {WANT}", path.display()));
    }
    let mut roots = RootCertStore::empty();
    for c in certs {
        roots.add(c).map_err(|e| format!("{}: unusable certificate ({e}); {WANT}", path.display()))?;
    }
    Ok(roots)
}

type Pending = Arc<Mutex<HashMap<u16, oneshot::Sender<Vec<u8>>>>>;

/// One established connection: the write half for queries, a reader task
/// that hands each reply to the query with its txid.
struct Conn {
    writer: tokio::sync::Mutex<WriteHalf<TlsStream<TcpStream>>>,
    pending: Pending,
    alive: Arc<AtomicBool>,
    /// Replies read so far. A timeout with none since the query went out
    /// drops the connection: it may be stalled (a middlebox lost its
    /// state), and a new one costs only a handshake.
    reads: Arc<AtomicU64>,
    stop: CancellationToken,
}

impl Conn {
    fn kill(&self) {
        self.alive.store(false, Ordering::Relaxed);
        self.stop.cancel();
    }
}

impl Drop for Conn {
    /// The reader task owns the read half; ending it closes the socket.
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A DNS over TLS upstream: its address, the name its certificate must
/// carry, and the connection currently in use.
pub struct DotClient {
    addr: SocketAddr,
    server_name: ServerName<'static>,
    label: String,
    connector: TlsConnector,
    /// Held across a connect, so concurrent queries share one handshake.
    conn: tokio::sync::Mutex<Option<Arc<Conn>>>,
    /// The last connect failure: when, and why (logged once per reason).
    failure: Mutex<Option<(Instant, String)>>,
}

impl DotClient {
    pub fn new(addr: SocketAddr, server_name: &str, label: String, config: Arc<ClientConfig>) -> Self {
        // The config parser lets only names rustls accepts through; should
        // one slip by anyway, no certificate can match `invalid.` (RFC 6761).
        let server_name = ServerName::try_from(server_name.to_string())
            .unwrap_or_else(|_| ServerName::try_from("invalid.".to_string()).expect("a valid name"));
        DotClient {
            addr,
            server_name,
            label,
            connector: TlsConnector::from(config),
            conn: tokio::sync::Mutex::new(None),
            failure: Mutex::new(None),
        }
    }

    /// Sends `msg` and returns the raw reply with its txid. The txid may be
    /// changed first, when it is already pending on this connection.
    /// `cut_short`: the client query's budget, not this upstream's timeout,
    /// ends the exchange, so running out of time is no sign of a bad server
    /// or connection: no connect backoff, and the connection stays.
    pub async fn exchange(&self, msg: &mut Message, deadline: Instant, cut_short: bool) -> Result<Vec<u8>, DotError> {
        pad(msg);
        let (conn, fresh) = self.connection(deadline, cut_short).await?;
        match self.send(&conn, msg, deadline, cut_short).await {
            // RFC 7766 §6.2.1: the server may close an idle connection at
            // any time; a reused one that closed under us is retried once
            // on a fresh connection.
            Err(DotError::Closed | DotError::Io(_)) if !fresh => {
                debug!(upstream = %self.label, "TLS connection closed by the server; reconnecting");
                let (conn, _) = self.connection(deadline, cut_short).await?;
                self.send(&conn, msg, deadline, cut_short).await
            }
            r => r,
        }
    }

    async fn send(&self, conn: &Arc<Conn>, msg: &mut Message, deadline: Instant, cut_short: bool) -> Result<Vec<u8>, DotError> {
        let rx = {
            let mut pending = conn.pending.lock().unwrap_or_else(|p| p.into_inner());
            // The reader marks the connection dead before it empties this
            // map under the same lock: a query added after that would wait
            // for its whole timeout.
            if !conn.alive.load(Ordering::Relaxed) {
                return Err(DotError::Closed);
            }
            if pending.len() >= MAX_PENDING {
                return Err(DotError::Busy);
            }
            while pending.contains_key(&msg.metadata.id) {
                msg.metadata.id = rand::random();
            }
            let (tx, rx) = oneshot::channel();
            pending.insert(msg.metadata.id, tx);
            rx
        };
        let id = msg.metadata.id;
        let forget = || {
            conn.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        };
        let bytes = match msg.to_vec() {
            Ok(b) if b.len() <= usize::from(u16::MAX) => b,
            Ok(_) => {
                forget();
                return Err(DotError::Encode("query over 65535 bytes".into()));
            }
            Err(e) => {
                forget();
                return Err(DotError::Encode(e.to_string()));
            }
        };
        // One write per message: length and body in the same TLS record.
        let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&bytes);
        let reads_before = conn.reads.load(Ordering::Relaxed);
        // Waiting for the writer (other queries' frames) says nothing about
        // the connection; only a frame begun and not finished breaks it.
        let Ok(mut w) = timeout_at(deadline, conn.writer.lock()).await else {
            forget();
            return Err(DotError::Timeout);
        };
        let write = async {
            w.write_all(&framed).await?;
            w.flush().await
        };
        match timeout_at(deadline, write).await {
            Ok(Ok(())) => drop(w),
            Ok(Err(e)) => {
                forget();
                conn.kill();
                return Err(e.into());
            }
            Err(_) => {
                // A half-written frame would desynchronise the stream.
                forget();
                conn.kill();
                return Err(DotError::Timeout);
            }
        }
        match timeout_at(deadline, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(DotError::Closed),
            Err(_) => {
                forget();
                if !cut_short && conn.reads.load(Ordering::Relaxed) == reads_before {
                    debug!(upstream = %self.label, "no reply on the TLS connection within the timeout; dropping it");
                    conn.kill();
                }
                Err(DotError::Timeout)
            }
        }
    }

    /// The live connection, or a new one; `true` when it is new.
    async fn connection(&self, deadline: Instant, cut_short: bool) -> Result<(Arc<Conn>, bool), DotError> {
        let mut slot = timeout_at(deadline, self.conn.lock()).await.map_err(|_| DotError::Timeout)?;
        if let Some(c) = slot.as_ref().filter(|c| c.alive.load(Ordering::Relaxed)) {
            return Ok((c.clone(), false));
        }
        *slot = None;
        if let Some((at, reason)) = self.failure.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            if at.elapsed() < CONNECT_BACKOFF {
                return Err(DotError::Backoff { ago: at.elapsed().as_secs_f64(), reason: reason.clone() });
            }
        }
        let result = match timeout_at(deadline, self.connect()).await {
            Ok(r) => r,
            Err(_) if cut_short => return Err(DotError::Timeout),
            Err(_) => Err(DotError::Connect(format!("no TCP connection and TLS handshake with {} within the timeout", self.addr))),
        };
        let mut failure = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(conn) => {
                if failure.take().is_some() {
                    info!(upstream = %self.label, "DNS over TLS connection established again");
                }
                debug!(upstream = %self.label, "DNS over TLS connection established");
                let conn = Arc::new(conn);
                *slot = Some(conn.clone());
                Ok((conn, true))
            }
            Err(e) => {
                let reason = match &e {
                    DotError::Connect(r) | DotError::Handshake(r) => r.clone(),
                    other => other.to_string(),
                };
                // Once per reason, not once per query: a bad certificate
                // would otherwise log a line for every lookup.
                if failure.as_ref().map(|(_, r)| r != &reason).unwrap_or(true) {
                    if matches!(e, DotError::Handshake(_)) {
                        warn!(upstream = %self.label, error = %reason,
                              "DNS over TLS upstream unusable; check the server name after '@' and proxy.tls_ca");
                    } else {
                        warn!(upstream = %self.label, error = %reason, "DNS over TLS upstream unusable");
                    }
                }
                *failure = Some((Instant::now(), reason));
                Err(e)
            }
        }
    }

    async fn connect(&self) -> Result<Conn, DotError> {
        let tcp = TcpStream::connect(self.addr)
            .await
            .map_err(|e| DotError::Connect(format!("TCP connect to {}: {e}", self.addr)))?;
        // Small messages, one write each: no Nagle delay.
        let _ = tcp.set_nodelay(true);
        // The certificate must carry server_name (SNI and verification).
        let tls = self
            .connector
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| DotError::Handshake(format!("TLS handshake with {}: {e}", self.addr)))?;
        let (rd, wr) = tokio::io::split(tls);
        let conn = Conn {
            writer: tokio::sync::Mutex::new(wr),
            pending: Pending::default(),
            alive: Arc::new(AtomicBool::new(true)),
            reads: Arc::new(AtomicU64::new(0)),
            stop: CancellationToken::new(),
        };
        tokio::spawn(read_replies(
            rd,
            conn.pending.clone(),
            conn.alive.clone(),
            conn.reads.clone(),
            conn.stop.clone(),
            self.label.clone(),
        ));
        Ok(conn)
    }
}

/// Reads length-prefixed replies until the connection ends, and hands
/// each to the query waiting on its txid. Then every query still waiting
/// learns at once (its sender is dropped) instead of at its timeout.
async fn read_replies(
    mut rd: ReadHalf<TlsStream<TcpStream>>,
    pending: Pending,
    alive: Arc<AtomicBool>,
    reads: Arc<AtomicU64>,
    stop: CancellationToken,
    label: String,
) {
    let ended = tokio::select! {
        _ = stop.cancelled() => Ok(()),
        r = read_loop(&mut rd, &pending, &reads, &label) => r,
    };
    if let Err(e) = ended {
        debug!(upstream = %label, error = %e, "TLS connection ended");
    }
    alive.store(false, Ordering::Relaxed);
    pending.lock().unwrap_or_else(|p| p.into_inner()).clear();
}

async fn read_loop(
    rd: &mut ReadHalf<TlsStream<TcpStream>>,
    pending: &Pending,
    reads: &AtomicU64,
    label: &str,
) -> io::Result<()> {
    loop {
        let n = rd.read_u16().await? as usize;
        let mut buf = vec![0u8; n];
        rd.read_exact(&mut buf).await?;
        reads.fetch_add(1, Ordering::Relaxed);
        let [hi, lo, ..] = buf.as_slice() else { continue };
        let id = u16::from_be_bytes([*hi, *lo]);
        let waiter = pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        match waiter {
            Some(tx) => {
                let _ = tx.send(buf);
            }
            // Inside TLS nobody off-path can inject: this is a late reply
            // to a query that already timed out.
            None => debug!(upstream = %label, id, "TLS reply for no pending query"),
        }
    }
}

/// Adds an EDNS(0) Padding option (RFC 7830) so the encoded query is a
/// multiple of `PAD_BLOCK` octets.
fn pad(msg: &mut Message) {
    let Some(edns) = msg.edns.as_mut() else { return };
    // Padding code 12; any earlier padding is replaced.
    edns.options_mut().remove(hickory_proto::rr::rdata::opt::EdnsCode::Padding);
    let Ok(len) = msg.to_vec().map(|b| b.len()) else { return };
    // The option's own header is 4 octets.
    let fill = (PAD_BLOCK - (len + 4) % PAD_BLOCK) % PAD_BLOCK;
    if let Some(edns) = msg.edns.as_mut() {
        edns.options_mut().insert(EdnsOption::Unknown(12, vec![0; fill]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::{
        op::{Edns, MessageType, OpCode, Query},
        rr::{Name, RecordType},
    };

    #[test]
    fn queries_are_padded_to_128_octets() {
        for qname in ["a.", "www.example.com.", "a-much-longer-label-than-usual.subdomain.example.org."] {
            let mut m = Message::new(1, MessageType::Query, OpCode::Query);
            m.add_query(Query::query(Name::from_ascii(qname).unwrap(), RecordType::A));
            m.set_edns(Edns::new());
            pad(&mut m);
            assert_eq!(m.to_vec().unwrap().len() % PAD_BLOCK, 0, "{qname}");
            pad(&mut m);
            assert_eq!(m.to_vec().unwrap().len() % PAD_BLOCK, 0, "{qname}, padded twice");
        }
    }

    #[test]
    fn ca_file_errors_name_the_key_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let e = client_config(Some(&missing)).unwrap_err().to_string();
        assert!(e.starts_with("proxy.tls_ca: cannot read") && e.contains("nope.pem"), "{e}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "just text\n").unwrap();
        let e = client_config(Some(&empty)).unwrap_err().to_string();
        assert!(e.contains("no CERTIFICATE block found"), "{e}");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").unwrap();
        let e = client_config(Some(&junk)).unwrap_err().to_string();
        assert!(e.contains("unusable certificate"), "{e}");
        assert!(client_config(None).is_ok());
    }
}
