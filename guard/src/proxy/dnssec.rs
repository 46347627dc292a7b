//! Check 6: DNSSEC validation (RFC 4033-4035, RFC 5155). hickory's
//! `DnssecDnsHandle` walks the chain of trust; underneath it sits
//! `Exchange`, our own upstream path, so the validator's DS and DNSKEY
//! sub-queries pass checks 1-4, 0x20 and the spoof accounting like any
//! client query, and are cached (TTL-bounded) so a query is not a chain walk.
//! In front of hickory, `positive_proof` proves the commonest secure answer
//! with remembered signatures; behind it, `Validator::second_opinion`
//! checks the signatures of an answer hickory calls secure. Both use zone
//! keys proven here (`Validator::prove_keys`), not by hickory. Under it,
//! `proof_ledger` refuses any RRset that hickory's validation cache would
//! serve another RRset's proof.

use std::{
    cell::{Cell, RefCell},
    collections::{HashMap, HashSet},
    io,
    path::{Path, PathBuf},
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use futures_util::{
    future,
    stream::{self, Stream},
};
use hickory_net::{
    dnssec::DnssecDnsHandle, runtime::TokioRuntimeProvider, xfer::FirstAnswer, DnsError, DnsHandle, NetError,
};
use hickory_proto::{
    dnssec::{
        rdata::{DNSSECRData, DNSKEY, DS, NSEC, RRSIG},
        Algorithm, DigestType, DnssecSummary, Proof, PublicKey, PublicKeyBuf, TrustAnchors,
    },
    op::{DnsRequest, DnsRequestOptions, DnsResponse, Message, Query, ResponseCode},
    rr::{DNSClass, LowerName, Name, RData, Record, RecordType},
};
use tokio::sync::Mutex as AsyncMutex;
use tracing::{debug, warn};

use super::{
    checks::dotted,
    dname,
    expansion::{self, Expansions},
    positive_proof::{self, CheckBudget, Decline, OpinionFailure, SignatureMemo},
    proof_ledger::{Collision, ProofLedger},
    upstream::{QueryCtx, Upstreams},
};
use prometheus_client::metrics::{counter::Counter, family::Family};

use crate::{
    metrics::{Metrics, PathLabels},
    verdict::qtype_name,
};

/// Longest a validator sub-answer (DS, DNSKEY, NS) is reused, whatever its
/// TTL: a key rollover or a new DS is picked up within this.
pub const SUB_CACHE_MAX_TTL: Duration = Duration::from_secs(300);
/// Sub-answers kept at most; past it the cache starts over.
const SUB_CACHE_ENTRIES: usize = 4096;
/// The largest sub-answer kept, in wire bytes: a DS set or a DNSKEY set of
/// a few RSA-4096 keys and their signatures fits several times over.
const SUB_CACHE_MAX_BYTES: usize = 16 * 1024;

// ---------------------------------------------------------------------------
// Trust anchors
// ---------------------------------------------------------------------------

#[derive(Debug, thiserror::Error)]
pub enum AnchorError {
    #[error("cannot read trust anchor {path}: {source}; set proxy.trust_anchor to a readable file")]
    Read { path: PathBuf, source: io::Error },
    #[error("bad trust anchor file:\n  {}\nuse DNSKEY or DS records in zone file format, one per line", .issues.join("\n  "))]
    Parse { issues: Vec<String> },
    #[error("trust anchor {path} holds no DNSKEY or DS record; add the root's, or remove proxy.trust_anchor to use the IANA root keys")]
    Empty { path: PathBuf },
}

/// The configured trust anchors, as read: DNSKEYs are trusted directly; a
/// DS is turned into the DNSKEY it covers on first use (RFC 4035 §5.1).
/// Empty with no `source`: the IANA root KSKs hickory ships (20326, 38696).
#[derive(Debug, Clone, Default)]
pub struct AnchorSet {
    pub source: Option<PathBuf>,
    pub dnskeys: Vec<(Name, DNSKEY)>,
    pub ds: Vec<(Name, DS)>,
}

impl AnchorSet {
    /// Reads a trust-anchor file as Unbound's `trust-anchor-file` does:
    /// DNSKEY and/or DS records in zone presentation format, parentheses
    /// allowed. Every bad line is reported, as `file:line: problem`.
    pub fn from_file(path: &Path) -> Result<Self, AnchorError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| AnchorError::Read { path: path.to_path_buf(), source })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, AnchorError> {
        let mut set = AnchorSet { source: Some(path.to_path_buf()), ..Default::default() };
        let mut issues = Vec::new();
        for (line, tokens) in records(text) {
            match parse_record(&tokens) {
                Ok(Anchor::Key(n, k)) => set.dnskeys.push((n, k)),
                Ok(Anchor::Ds(n, d)) => set.ds.push((n, d)),
                Ok(Anchor::Skip) => {}
                Err(msg) => issues.push(format!("{}:{line}: {msg}", path.display())),
            }
        }
        if !issues.is_empty() {
            return Err(AnchorError::Parse { issues });
        }
        if set.dnskeys.is_empty() && set.ds.is_empty() {
            return Err(AnchorError::Empty { path: path.to_path_buf() });
        }
        Ok(set)
    }
}

enum Anchor {
    Key(Name, DNSKEY),
    Ds(Name, DS),
    /// A `$TTL` directive: meaningless for anchors.
    Skip,
}

/// Splits zone-file text into records: comments (`;`) dropped, lines
/// joined inside parentheses; each with the line it starts on.
fn records(text: &str) -> Vec<(usize, Vec<String>)> {
    let mut out = Vec::new();
    let mut cur: Option<(usize, Vec<String>)> = None;
    let mut depth = 0usize;
    for (i, raw) in text.lines().enumerate() {
        let body = raw.split(';').next().unwrap_or("");
        for tok in body.replace('(', " ( ").replace(')', " ) ").split_whitespace() {
            match tok {
                "(" => depth += 1,
                ")" => depth = depth.saturating_sub(1),
                t => cur.get_or_insert_with(|| (i + 1, Vec::new())).1.push(t.to_string()),
            }
        }
        if depth == 0 {
            out.extend(cur.take());
        }
    }
    out.extend(cur);
    out
}

fn parse_record(tokens: &[String]) -> Result<Anchor, String> {
    let [owner, rest @ ..] = tokens else { return Err("empty record".into()) };
    if owner.starts_with('$') {
        return match owner.as_str() {
            "$TTL" => Ok(Anchor::Skip),
            d => Err(format!("directive {d} is not supported; write fully qualified owner names")),
        };
    }
    if !owner.ends_with('.') {
        return Err(format!("owner {owner:?} is not fully qualified; end it with a dot (the root is \".\")"));
    }
    let name = Name::from_ascii(owner).map_err(|e| format!("bad owner {owner:?}: {e}"))?;
    // Optional TTL and class, in either order (RFC 1035 §5.1).
    let mut i = 0;
    while i < rest.len() && i < 2 && (rest[i].parse::<u32>().is_ok() || rest[i].eq_ignore_ascii_case("IN")) {
        i += 1;
    }
    let Some(rtype) = rest.get(i) else { return Err("no record type".into()) };
    let rdata = &rest[i + 1..];
    match rtype.to_ascii_uppercase().as_str() {
        "DNSKEY" => parse_dnskey(rdata).map(|k| Anchor::Key(name, k)),
        "DS" => parse_ds(rdata).map(|d| Anchor::Ds(name, d)),
        t => Err(format!("record type {t} cannot be a trust anchor; use DNSKEY or DS")),
    }
}

fn field<T: std::str::FromStr>(rdata: &[String], i: usize, what: &str) -> Result<T, String> {
    let s = rdata.get(i).ok_or_else(|| format!("{what} missing"))?;
    s.parse().map_err(|_| format!("bad {what} {s:?}"))
}

/// RFC 4034 §2.2: flags, protocol (3), algorithm, base64 key.
fn parse_dnskey(rdata: &[String]) -> Result<DNSKEY, String> {
    let flags: u16 = field(rdata, 0, "DNSKEY flags")?;
    let protocol: u8 = field(rdata, 1, "DNSKEY protocol")?;
    let alg = Algorithm::from_u8(field(rdata, 2, "DNSKEY algorithm")?);
    if protocol != 3 {
        return Err(format!("DNSKEY protocol is {protocol}; RFC 4034 §2.1.2 requires 3"));
    }
    // RFC 4034 §2.1.1: only a zone key (bit 7) signs RRsets.
    if flags & 0x0100 == 0 {
        return Err("DNSKEY is not a zone key (flags bit 7 clear)".into());
    }
    if flags & 0x0080 != 0 {
        return Err("DNSKEY is revoked (RFC 5011 REVOKE bit set)".into());
    }
    if !alg.is_supported() {
        return Err(format!("DNSKEY algorithm {} is not supported", u8::from(alg)));
    }
    let b64: String = rdata.get(3..).unwrap_or_default().concat();
    if b64.is_empty() {
        return Err("DNSKEY public key missing".into());
    }
    let key = data_encoding::BASE64.decode(b64.as_bytes()).map_err(|e| format!("DNSKEY key is not base64: {e}"))?;
    Ok(DNSKEY::with_flags(flags, PublicKeyBuf::new(key, alg)))
}

/// RFC 4034 §5.3: key tag, algorithm, digest type, hex digest.
fn parse_ds(rdata: &[String]) -> Result<DS, String> {
    let tag: u16 = field(rdata, 0, "DS key tag")?;
    let alg = Algorithm::from_u8(field(rdata, 1, "DS algorithm")?);
    let dtype = DigestType::from(field::<u8>(rdata, 2, "DS digest type")?);
    let hex: String = rdata.get(3..).unwrap_or_default().concat();
    let digest = data_encoding::HEXUPPER_PERMISSIVE
        .decode(hex.as_bytes())
        .map_err(|e| format!("DS digest is not hex: {e}"))?;
    let want = match dtype {
        DigestType::SHA1 => 20,
        DigestType::SHA256 => 32,
        DigestType::SHA384 => 48,
        _ => return Err(format!("DS digest type {} is not supported; use 2 (SHA-256)", u8::from(dtype))),
    };
    if digest.len() != want {
        return Err(format!("DS digest is {} bytes; digest type {} needs {want}", digest.len(), u8::from(dtype)));
    }
    if !alg.is_supported() {
        return Err(format!("DS algorithm {} is not supported", u8::from(alg)));
    }
    Ok(DS::new(tag, alg, dtype, digest))
}

// ---------------------------------------------------------------------------
// The exchange under the validator
// ---------------------------------------------------------------------------

tokio::task_local! {
    /// The client's answer, already fetched and checked by the handler: the
    /// first `send` made while it is set (the validator's top-level query)
    /// gets it instead of a second upstream round trip.
    static SEED: Cell<Option<Message>>;
    /// The names of this validation's DS, DNSKEY or other sub-queries that
    /// got no answer from any upstream.
    static SUB_FAILED: RefCell<Vec<Name>>;
    /// A message of this validation that the proof ledger refused.
    static COLLIDED: RefCell<Option<Collision>>;
}

type SubKey = (Name, RecordType);

/// Sub-answers by (lowercased name, type), with their expiry.
#[derive(Default)]
struct SubCache {
    map: Mutex<HashMap<SubKey, (Instant, DnsResponse)>>,
}

impl SubCache {
    /// The answer kept for `key`, and until when.
    fn get(&self, key: &SubKey) -> Option<(Instant, DnsResponse)> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(key).filter(|(exp, _)| Instant::now() < *exp).cloned()
    }

    /// Keeps `resp` while its TTLs allow; returns until when. Answers past
    /// `SUB_CACHE_MAX_BYTES` are not kept: anyone who owns a zone could
    /// otherwise fill the cache with 64 KiB answers over TCP.
    fn put(&self, key: SubKey, resp: &DnsResponse) -> Option<Instant> {
        if resp.as_buffer().len() > SUB_CACHE_MAX_BYTES {
            return None;
        }
        let ttl = cache_ttl(resp)?;
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= SUB_CACHE_ENTRIES {
            let now = Instant::now();
            map.retain(|_, (exp, _)| *exp > now);
            if map.len() >= SUB_CACHE_ENTRIES {
                map.clear();
            }
        }
        let until = Instant::now() + ttl;
        map.insert(key, (until, resp.clone()));
        Some(until)
    }
}

/// How long an answer may be reused: its smallest TTL (a negative answer's
/// is the SOA's TTL capped by its MINIMUM, RFC 2308 §5), at most
/// `SUB_CACHE_MAX_TTL`. Failures and empty answers are not kept.
fn cache_ttl(m: &Message) -> Option<Duration> {
    if !matches!(m.metadata.response_code, ResponseCode::NoError | ResponseCode::NXDomain) {
        return None;
    }
    let ttl = m
        .answers
        .iter()
        .chain(m.authorities.iter())
        .map(|r| match &r.data {
            RData::SOA(soa) => r.ttl.min(soa.minimum),
            _ => r.ttl,
        })
        .min()?;
    Some(Duration::from_secs(ttl.into()).min(SUB_CACHE_MAX_TTL))
}

/// A `DnsHandle` over `Upstreams::forward`.
#[derive(Clone)]
pub struct Exchange {
    upstreams: Arc<Upstreams>,
    cache: Arc<SubCache>,
    /// Under a hickory handle: what that handle's cache may hold
    /// (`proof_ledger`). `None` for the validator's own sub-queries, whose
    /// answers hickory never reads.
    ledger: Option<Arc<ProofLedger>>,
}

impl Exchange {
    /// This exchange for a new hickory handle, with a ledger of its own.
    fn for_handle(&self, ledger: Arc<ProofLedger>) -> Self {
        Exchange { ledger: Some(ledger), ..self.clone() }
    }

    /// What hickory is handed: `resp` unless the ledger refuses it.
    fn hand_over(&self, query: &Query, resp: Result<DnsResponse, NetError>) -> Result<DnsResponse, NetError> {
        // hickory validates (and caches) the records inside this error too;
        // `sub_query` never returns it, and none may pass unrecorded.
        if let (Some(_), Err(NetError::Dns(DnsError::NoRecordsFound(_)))) = (&self.ledger, &resp) {
            return Err(NetError::from("no records (not handed to the validator unrecorded)"));
        }
        let (Some(ledger), Ok(msg)) = (&self.ledger, &resp) else { return resp };
        match ledger.check(query, msg) {
            Ok(()) => resp,
            Err(collision) => {
                warn!(%collision, "an answer would be served another RRset's DNSSEC proof");
                let error = NetError::from(collision.to_string());
                let _ = COLLIDED.try_with(|c| {
                    c.borrow_mut().get_or_insert(*collision);
                });
                Err(error)
            }
        }
    }

    async fn sub_query(self, query: Query) -> Result<DnsResponse, NetError> {
        self.sub_query_until(query).await.map(|(resp, _)| resp)
    }

    /// `sub_query`, and until when its answer may be reused (`None`: it is
    /// not kept, a failure or an empty answer).
    async fn sub_query_until(self, query: Query) -> Result<(DnsResponse, Option<Instant>), NetError> {
        let key = (query.name().to_lowercase(), query.query_type());
        if let Some((until, hit)) = self.cache.get(&key) {
            return Ok((hit, Some(until)));
        }
        let ctx = QueryCtx {
            client: None,
            qname: Some(dotted(query.name())),
            qtype: Some(qtype_name(u16::from(query.query_type()))),
        };
        // CD: an upstream that validates must hand us the data to judge.
        let a = self.upstreams.forward(&query, true, true, &ctx).await.map_err(|e| {
            let _ = SUB_FAILED.try_with(|f| f.borrow_mut().push(query.name().to_lowercase()));
            NetError::from(e.to_string())
        })?;
        if a.differing {
            return Err(NetError::from("differing answers to a validation query (Hold-On)"));
        }
        let resp = DnsResponse::from_message(a.msg).map_err(|e| NetError::from(e.to_string()))?;
        let until = self.cache.put(key, &resp);
        Ok((resp, until))
    }
}

impl DnsHandle for Exchange {
    type Response = Pin<Box<dyn Stream<Item = Result<DnsResponse, NetError>> + Send>>;
    type Runtime = TokioRuntimeProvider;

    fn send(&self, request: DnsRequest) -> Self::Response {
        let Some(query) = request.queries.first().cloned() else {
            return Box::pin(stream::once(future::ready(Err(NetError::from("validation query without a question")))));
        };
        let seed = SEED.try_with(Cell::take).ok().flatten();
        let this = self.clone();
        // Checked when polled, inside the validation's `COLLIDED` scope.
        Box::pin(stream::once(async move {
            let resp = match seed {
                Some(seed) => DnsResponse::from_message(seed).map_err(|e| NetError::from(e.to_string())),
                None => this.clone().sub_query(query.clone()).await,
            };
            this.hand_over(&query, resp)
        }))
    }
}

// ---------------------------------------------------------------------------
// The validator
// ---------------------------------------------------------------------------

/// Why an answer is bogus: `reason` for the verdict log, `detail` for the
/// EDE text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bogus {
    pub reason: &'static str,
    pub detail: String,
}

/// RFC 4035 §4.3 security status of an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Security {
    Secure,
    Insecure,
    Bogus(Bogus),
    /// "Not able to obtain the necessary DNSSEC RRs" (RFC 4035 §4.3): a
    /// sub-query the chain walk needed got no answer, so nothing was
    /// proven, bogus least of all. The detail says what failed.
    Indeterminate(String),
}

impl Security {
    /// The verdict log's `dnssec` field.
    pub fn label(&self) -> &'static str {
        match self {
            Security::Secure => "secure",
            Security::Insecure => "insecure",
            Security::Bogus(_) => "bogus",
            Security::Indeterminate(_) => "indeterminate",
        }
    }
}

fn bogus(reason: &'static str, detail: impl Into<String>) -> Security {
    Security::Bogus(Bogus { reason, detail: detail.into() })
}

/// How long a zone whose chain could not be fetched is remembered: as long
/// as hickory may serve a proof that failed with it from its validation
/// cache (BOGUS_CACHE_TTL in hickory-net 0.26.3), which no sub-query marks.
const UNREACHABLE_MEMORY: Duration = Duration::from_secs(300);
/// Zones remembered at most; past it the memory starts over.
const UNREACHABLE_ENTRIES: usize = 1024;
/// Zones whose proven keys the shortcut keeps at most; past it, over.
const ZONE_KEY_ENTRIES: usize = 1024;
/// How long a zone without proven keys (insecure, or its keys could not be
/// fetched) skips the shortcut before it asks again.
const NO_KEYS_RETRY: Duration = Duration::from_secs(30);
/// Zones whose keys the second opinion takes for one answer (a CNAME chain
/// across zones has one per link); more is a no.
const MAX_OPINION_ZONES: usize = 8;
/// How often a chain built without a DS anchor's keys tries to fetch them
/// again.
const PARTIAL_ANCHORS_RETRY: Duration = Duration::from_secs(60);

/// `Chain::retry_at` for a chain built with every anchor (`complete`) or not.
fn retry_at(complete: bool) -> Option<Instant> {
    (!complete).then(|| Instant::now() + PARTIAL_ANCHORS_RETRY)
}

/// Zones one walk up the chain of trust may prove (`Walk`), over all its
/// branches, and zones above the signer it may climb. Real chains are three
/// to five deep and have one branch (a DS set has one signer).
const MAX_WALK_ZONES: usize = 32;
const MAX_WALK_DEPTH: usize = 16;
/// DNSKEYs a zone may publish for its keys to be proven here (real zones
/// publish fewer than ten). Past it, as past `MAX_DS` or the limits of
/// `positive_proof`, the keys are not proven, and the second opinion calls
/// hickory's "secure" for the zone bogus rather than trust its cache.
const MAX_ZONE_KEYS: usize = 128;
/// DS records of one zone looked at (real zones publish one to four).
const MAX_DS: usize = 16;

/// Why the configured trust anchors could not be put to use.
#[derive(Debug, Clone, thiserror::Error)]
enum AnchorFetchError {
    /// The DNSKEYs a DS anchor covers could not be fetched (no answer, or
    /// SERVFAIL, REFUSED or NOTIMP): nothing is proven either way, RFC 4035
    /// §4.3's indeterminate, and the next query tries again.
    #[error("{0}")]
    Unreachable(String),
    /// They were fetched and none matches, or the answer itself was bad
    /// (differing answers, unparseable, another rcode).
    #[error("{0}")]
    Unusable(String),
}

/// A zone's DNSKEYs proven from the trust anchor, and until when to use them.
type ProvenKeys = (Instant, Arc<[DNSKEY]>);

/// The chain walker and the trust anchors it was built with (the DS
/// anchors resolved to their keys).
struct Chain {
    handle: DnssecDnsHandle<Exchange>,
    /// What `handle`'s validation cache may hold.
    ledger: Arc<ProofLedger>,
    anchors: Arc<TrustAnchors>,
    /// When to try again the DS anchors whose keys could not be fetched
    /// when this chain was built (the anchors that worked serve meanwhile);
    /// `None` once every anchor is in.
    retry_at: Option<Instant>,
}

/// The first builds of the chain that failed: how many, and the last one's
/// error. A query that waited while one failed takes that error instead of
/// fetching again (one outage, one timeout, not one per waiting query).
#[derive(Default)]
struct FirstBuild {
    failures: u64,
    last: Option<AnchorFetchError>,
}

impl Chain {
    /// The same walker, its cache and ledger, to be retried at `retry_at`.
    fn kept(&self, retry_at: Option<Instant>) -> Chain {
        Chain { handle: self.handle.clone(), ledger: self.ledger.clone(), anchors: self.anchors.clone(), retry_at }
    }
}

pub struct Validator {
    exchange: Exchange,
    anchors: AnchorSet,
    chain: std::sync::RwLock<Option<Arc<Chain>>>,
    /// Held by the one task that builds the chain; holds the failure of
    /// the last first build, and how many have failed, for the queries
    /// that waited on it.
    building: AsyncMutex<FirstBuild>,
    /// `FirstBuild::failures`, readable without the lock.
    first_failures: AtomicU64,
    /// Zones at or above a query name whose chain a recent validation could
    /// not fetch, and until when they count as unreachable.
    unreachable: Mutex<HashMap<Name, Instant>>,
    /// The shortcut for signed positive answers (`positive_proof`): the
    /// proven DNSKEYs of the zones it has met, and the signatures verified.
    zone_keys: Mutex<HashMap<Name, ProvenKeys>>,
    /// Zones found without proven keys, until when (apart, so that a flood
    /// of made-up signer names cannot push proven keys out).
    no_keys: Mutex<HashMap<Name, Instant>>,
    signatures: SignatureMemo,
    /// `dnssec_validations` by path.
    validations: Family<PathLabels, Counter>,
    /// Keys a chain's proof ledger holds before the chain is renewed.
    ledger_capacity: usize,
    /// `dnssec_validation_cache_renewals`.
    renewals: Counter,
}

impl Validator {
    pub fn new(upstreams: Arc<Upstreams>, anchors: AnchorSet, metrics: &Metrics) -> Self {
        Validator {
            exchange: Exchange { upstreams, cache: Arc::default(), ledger: None },
            anchors,
            chain: std::sync::RwLock::default(),
            building: AsyncMutex::default(),
            first_failures: AtomicU64::new(0),
            unreachable: Mutex::default(),
            zone_keys: Mutex::default(),
            no_keys: Mutex::default(),
            signatures: SignatureMemo::counted(metrics),
            validations: metrics.dnssec_validations.clone(),
            ledger_capacity: super::proof_ledger::LEDGER_CAPACITY,
            renewals: metrics.dnssec_cache_renewals.clone(),
        }
    }

    /// The chain walker, built on first use: a DS anchor needs the
    /// upstream to fetch the key it covers. A failure is retried by the
    /// next query that did not wait on it; a chain built without some DS anchor's keys, beside
    /// other anchors that work, is built again once they can be fetched
    /// (tried every `PARTIAL_ANCHORS_RETRY` by one query, while the others
    /// use the chain as it is).
    async fn chain(&self) -> Result<Arc<Chain>, AnchorFetchError> {
        let current = self.chain.read().unwrap_or_else(|p| p.into_inner()).clone();
        let current = match current {
            Some(c) if c.ledger.is_full() => Some(self.renew(&c)),
            current => current,
        };
        let mut building = match &current {
            Some(c) if c.retry_at.is_none_or(|at| Instant::now() < at) => return Ok(c.clone()),
            Some(c) => match self.building.try_lock() {
                // Another task may have rebuilt it meanwhile.
                Ok(guard) => match self.chain.read().unwrap_or_else(|p| p.into_inner()).clone() {
                    Some(now) if !Arc::ptr_eq(&now, c) => return Ok(now),
                    _ => guard,
                },
                Err(_) => return Ok(c.clone()),
            },
            None => {
                // Failures so far: any beyond these came while we waited.
                let seen = self.first_failures.load(Ordering::Acquire);
                let guard = self.building.lock().await;
                if let Some(c) = self.chain.read().unwrap_or_else(|p| p.into_inner()).clone() {
                    return Ok(c);
                }
                if guard.failures > seen {
                    if let Some(e) = &guard.last {
                        return Err(e.clone());
                    }
                }
                guard
            }
        };
        let (anchors, complete) = match (self.trust_anchors().await, &current) {
            (Ok(built), _) => built,
            // The partial chain still works: keep it, ask again later.
            (Err(e), Some(c)) => {
                warn!(error = %e, "trust anchors still incomplete");
                return Ok(self.install(current.as_ref(), c.kept(retry_at(false))));
            }
            (Err(e), None) => {
                building.failures += 1;
                building.last = Some(e.clone());
                self.first_failures.store(building.failures, Ordering::Release);
                return Err(e);
            }
        };
        let chain = match &current {
            // Still partial: keep the walker and its caches, ask again later.
            Some(c) if !complete => c.kept(retry_at(false)),
            _ => self.new_chain(Arc::new(anchors), retry_at(complete)),
        };
        Ok(self.install(current.as_ref(), chain))
    }

    /// Puts `chain` in place of `replaced`, unless the slot holds another
    /// chain by now (`renew` gave a full ledger's chain a new walker while
    /// the anchors were fetched): that one is kept and returned.
    fn install(&self, replaced: Option<&Arc<Chain>>, chain: Chain) -> Arc<Chain> {
        let mut slot = self.chain.write().unwrap_or_else(|p| p.into_inner());
        match (slot.as_ref(), replaced) {
            (Some(now), Some(old)) if !Arc::ptr_eq(now, old) => return now.clone(),
            (Some(now), None) => return now.clone(),
            _ => {}
        }
        let chain = Arc::new(chain);
        *slot = Some(chain.clone());
        chain
    }

    /// A chain walker with an empty validation cache and a ledger of its own.
    fn new_chain(&self, anchors: Arc<TrustAnchors>, retry_at: Option<Instant>) -> Chain {
        let ledger = Arc::new(ProofLedger::with_capacity(self.ledger_capacity));
        let handle = DnssecDnsHandle::with_trust_anchor(self.exchange.for_handle(ledger.clone()), anchors.clone());
        Chain { handle, ledger, anchors, retry_at }
    }

    /// `c` with a new walker, once its ledger is full: hickory's cache
    /// starts over with a new ledger (`proof_ledger`). Validations under
    /// way finish on the old one.
    fn renew(&self, c: &Arc<Chain>) -> Arc<Chain> {
        let mut slot = self.chain.write().unwrap_or_else(|p| p.into_inner());
        if let Some(now) = slot.as_ref().filter(|now| !Arc::ptr_eq(now, c)) {
            return now.clone();
        }
        debug!("the proof ledger is full: hickory's validation cache starts over");
        self.renewals.inc();
        let fresh = Arc::new(self.new_chain(c.anchors.clone(), c.retry_at));
        *slot = Some(fresh.clone());
        fresh
    }

    /// The configured anchors as keys, and whether all of them are in (a
    /// DS anchor whose keys cannot be fetched is left out while other
    /// anchors work).
    async fn trust_anchors(&self) -> Result<(TrustAnchors, bool), AnchorFetchError> {
        if self.anchors.source.is_none() {
            return Ok((TrustAnchors::default(), true));
        }
        let mut ta = TrustAnchors::empty();
        let mut count = 0;
        for (name, key) in &self.anchors.dnskeys {
            count += usize::from(ta.insert_with_name(key.public_key(), name.into()));
        }
        let mut owners: Vec<&Name> = self.anchors.ds.iter().map(|(n, _)| n).collect();
        owners.dedup();
        // Whichever anchors work are used, in any order; only when none does
        // is the first failure the answer.
        let mut failures: Vec<(&Name, AnchorFetchError)> = Vec::new();
        for owner in owners {
            match self.keys_for_ds(owner).await {
                Ok(keys) => {
                    for k in keys {
                        count += usize::from(ta.insert_with_name(k.public_key(), owner.into()));
                    }
                }
                Err(e) => failures.push((owner, e)),
            }
        }
        if count == 0 {
            return Err(failures
                .into_iter()
                .next()
                .map_or_else(|| AnchorFetchError::Unusable("no DNSKEY matches the DS trust anchor".into()), |(_, e)| e));
        }
        for (owner, e) in &failures {
            warn!(%owner, error = %e, "DS trust anchor not usable for now; using the other anchors");
        }
        Ok((ta, failures.is_empty()))
    }

    /// RFC 4035 §5.1: the zone's DNSKEY set, keeping only keys whose
    /// digest matches a configured DS. The set's own signature is then
    /// checked by the validator against the key kept here.
    async fn keys_for_ds(&self, owner: &Name) -> Result<Vec<DNSKEY>, AnchorFetchError> {
        let mut fqdn = owner.clone();
        fqdn.set_fqdn(true);
        let unreachable = |e: &dyn std::fmt::Display| {
            AnchorFetchError::Unreachable(format!("cannot fetch the DNSKEYs of {owner} for the DS trust anchor: {e}"))
        };
        // Only an exchange that got no answer is an outage; differing
        // answers (Hold-On) or one that does not parse are not.
        let (resp, no_answer) = SUB_FAILED
            .scope(RefCell::default(), async {
                let resp = self.exchange.clone().sub_query(Query::query(fqdn.clone(), RecordType::DNSKEY)).await;
                (resp, SUB_FAILED.with(|f| !f.borrow().is_empty()))
            })
            .await;
        let resp = match resp {
            Ok(resp) => resp,
            Err(e) if no_answer => return Err(unreachable(&e)),
            Err(e) => {
                return Err(AnchorFetchError::Unusable(format!("the DNSKEYs of {owner} for the DS trust anchor: {e}")))
            }
        };
        match resp.metadata.response_code {
            ResponseCode::NoError => {}
            // The upstream would not serve them: no statement about the keys.
            rcode @ (ResponseCode::ServFail | ResponseCode::Refused | ResponseCode::NotImp) => {
                return Err(unreachable(&format_args!("the upstream answered {rcode}")))
            }
            rcode => {
                return Err(AnchorFetchError::Unusable(format!(
                    "the upstream answered {rcode} for the DNSKEYs of {owner} (the DS trust anchor's)"
                )))
            }
        }
        let keys = covered_keys(&fqdn, &resp.answers, &self.anchors.ds);
        if keys.is_empty() {
            return Err(AnchorFetchError::Unusable(format!("no DNSKEY of {owner} matches the DS trust anchor")));
        }
        debug!(%owner, keys = keys.len(), "DS trust anchor resolved to DNSKEYs");
        Ok(keys)
    }

    /// Classifies `msg`, the upstream's answer to `query` (as sent).
    pub async fn validate(&self, query: &Query, msg: &Message) -> Security {
        // The CNAMEs a DNAME implies are proven with it (`dname`). What
        // is remembered about unreachable chains stays keyed on the name
        // asked: the question the synthesis leads to is the answer's word.
        let qname = query.name().to_lowercase();
        let stripped = dname::without_synthesized_cnames(query, msg);
        let (query, msg) = stripped.as_ref().map_or((query, msg), |(q, m)| (q, m));
        if let Some((owner, covered)) = orphan_signature(query, msg) {
            return bogus("orphan-signature", format!("an RRSIG over {owner} {covered} with no such RRset beside it"));
        }
        // RFC 6604 §3: NXDOMAIN speaks for the chain's last name, which
        // cannot then hold the data asked for.
        if msg.metadata.response_code == ResponseCode::NXDomain && matches!(chain_end(query, msg), Some((_, true))) {
            return bogus("denial-unproven", format!("NXDOMAIN for {} with the data asked for", query.name()));
        }
        let chain = match self.chain().await {
            Ok(c) => c,
            Err(AnchorFetchError::Unreachable(e)) => return Security::Indeterminate(e),
            Err(AnchorFetchError::Unusable(e)) => return bogus("no-trust-anchor", e),
        };
        let chain = &*chain;
        let (security, failed) = SUB_FAILED
            .scope(RefCell::default(), async {
                let path = |path| self.validations.get_or_create(&PathLabels { path }).inc();
                let security = match self.positive_proof(chain, query, msg).await {
                    Ok(()) => {
                        path("shortcut");
                        Security::Secure
                    }
                    Err(why) => {
                        debug!(qname = %query.name(), %why, "full validation");
                        path("full");
                        match self.hickory(chain, query, msg).await {
                            collided @ Security::Bogus(Bogus { reason: "proof-cache-collision", .. }) => collided,
                            full => {
                                let full = self.second_opinion(chain, query, msg, full).await;
                                self.denial_at_the_end(chain, query, msg, full).await
                            }
                        }
                    }
                };
                (security, SUB_FAILED.with(|f| f.take()))
            })
            .await;
        let now = Instant::now();
        let mut recent = self.unreachable.lock().unwrap_or_else(|p| p.into_inner());
        recent.retain(|_, until| *until > now);
        if recent.len() >= UNREACHABLE_ENTRIES {
            recent.clear();
        }
        for zone in failed.into_iter().filter(|z| z.zone_of(&qname)) {
            recent.insert(zone, now + UNREACHABLE_MEMORY);
        }
        if matches!(security, Security::Secure | Security::Insecure) {
            // The chain answers again.
            recent.retain(|zone, _| !zone.zone_of(&qname));
        }
        let own: Vec<Name> = recent.keys().filter(|z| z.zone_of(&qname)).cloned().collect();
        unreachable_chain(security, &qname, &own)
    }
}

impl Validator {
    /// hickory's full validation of `msg` as the answer to `query`.
    async fn hickory(&self, chain: &Chain, query: &Query, msg: &Message) -> Security {
        let request = DnsRequest::from_query(query.clone(), DnsRequestOptions::default());
        let stream = SEED.sync_scope(Cell::new(Some(msg.clone())), || chain.handle.send(request));
        let (full, collided) = COLLIDED
            .scope(RefCell::default(), async {
                let full = classify(query, stream.first_answer().await);
                (full, COLLIDED.with(|c| c.take()))
            })
            .await;
        // hickory's verdict on a refused message is an error of ours, not
        // a judgement of the data: name it.
        match collided {
            Some(c) => bogus("proof-cache-collision", c.to_string()),
            None => full,
        }
    }

    /// A "secure" answer whose CNAME chain ends in nothing of the type
    /// asked is a denial of the name at its end (RFC 4035 §5.4), and
    /// hickory 0.26.3 judges a denial only for the query name: after a
    /// signed CNAME it looks no further, so an upstream could drop the
    /// target's data from a genuine answer and the empty chain came back
    /// secure. It is judged again for the name at the end. And hickory
    /// calls a denial with no NSEC or NSEC3 at all fine when the name's zone
    /// is provably insecure, yet its summary is then whatever signed
    /// records ride along (a parent's SOA): insecure, not secure.
    ///
    /// hickory also checks the NSEC or NSEC3 records of such an answer
    /// against the query name, which the CNAME shows to exist, so a genuine
    /// chain into a proven denial (a dangling CNAME) was bogus: those are
    /// judged again for the end too.
    ///
    /// The second look sees the authority section alone, so that nothing in
    /// the answer section (hickory reads its first RRSIG's labels as a
    /// wildcard) changes what the denial must prove; the chain's signatures
    /// are the second opinion's to check, over the whole answer, and its
    /// wildcard expansions (a catch-all CNAME into a denial) `expansion`'s.
    ///
    /// A denial of the query name itself is looked at again only when
    /// something rides in its answer section: hickory takes the first answer
    /// RRSIG for the query name's wildcard whatever it covers, so a wildcard
    /// A expansion beside an AAAA question made the AAAA's absence "proven"
    /// by the next closer name's NSEC3 alone.
    async fn denial_at_the_end(&self, chain: &Chain, query: &Query, msg: &Message, full: Security) -> Security {
        let Some(end) = unanswered_end(query, msg) else { return full };
        let unproven = matches!(&full, Security::Bogus(b) if b.reason == "denial-unproven");
        // hickory's NSEC3 check also fails a denial of the query name with
        // anything in the answer section: the DNAME a stripped synthesis
        // came from (`dname`) is the one thing a server puts there.
        let beside = end == *query.name() && !msg.answers.is_empty() && !expanded(msg) && only_dnames(&msg.answers);
        if !(full == Security::Secure || unproven && (end != *query.name() || beside)) {
            return full;
        }
        let is_denial = |r: &Record| matches!(r.record_type(), RecordType::NSEC | RecordType::NSEC3);
        if end == *query.name() && msg.answers.is_empty() {
            return match full {
                Security::Secure if !msg.authorities.iter().any(is_denial) => Security::Insecure,
                verdict => verdict,
            };
        }
        // A first look that failed only on the denial found no bad
        // signature, so it proved the zones of the unsigned records insecure
        // (an unsigned zone's SOA at the end): what must verify is the rest.
        let signed = if unproven { std::borrow::Cow::Owned(signed_only(msg)) } else { std::borrow::Cow::Borrowed(msg) };
        if positive_proof::signed_rrsets(&signed, query.query_class()).is_err() {
            return full; // past the second opinion's limits, or unsigned: as judged
        }
        let mut at_end = Query::query(end.clone(), query.query_type());
        at_end.set_query_class(query.query_class());
        let mut denial = msg.clone();
        denial.answers.clear();
        denial.authorities = authority_for(&end, &msg.authorities);
        denial.queries = vec![at_end.clone()];
        let verdict = self.hickory(chain, &at_end, &denial).await;
        if unproven && verdict == Security::Insecure {
            // The end is in a provably unsigned zone. The signed records
            // that lead there verify, and each expansion among them is
            // proven, or a replayed catch-all would pass (insecure at best).
            return match self.second_opinion(chain, query, &signed, Security::Secure).await {
                Security::Secure => match expansions_of_verified(&signed) {
                    Security::Secure | Security::Insecure => Security::Insecure,
                    bogus => bogus,
                },
                verdict => verdict,
            };
        }
        let verdict = match self.second_opinion(chain, query, msg, verdict).await {
            Security::Secure if expanded(msg) => match expansions_of_verified(msg) {
                // An expansion insecure at best (NSEC3 past the iteration
                // limit) is no reason to overrule hickory's bogus.
                Security::Insecure if unproven => return full,
                verdict => verdict,
            },
            // Only hickory's first look, which failed, judged the expansions
            // of a chain that is not secure throughout.
            _ if unproven && expanded(msg) => return full,
            verdict => verdict,
        };
        match verdict {
            Security::Secure if !denial.authorities.iter().any(is_denial) => Security::Insecure,
            verdict => verdict,
        }
    }

    /// The shortcut: a signed positive answer proven with its zone's proven
    /// keys and the signature memo. Anything it declines is validated in
    /// full by hickory.
    async fn positive_proof(&self, chain: &Chain, query: &Query, msg: &Message) -> Result<(), Decline> {
        let zone = positive_proof::signer(query, msg)?;
        let keys = self.zone_keys(&chain.anchors, &zone).await;
        if keys.is_empty() {
            return Err(Decline::NoProvenKeys);
        }
        positive_proof::prove(query, msg, &zone, &keys, &self.signatures, unix_now())
    }

    /// hickory's verdict, except that a "secure" needs every RRset of the
    /// answer and authority sections to verify with the proven keys of a
    /// signer above its owner (`positive_proof::signed_rrsets`).
    ///
    /// hickory 0.26.3 keeps its proofs under a 64-bit `DefaultHasher`
    /// (fixed SipHash keys) of the query and the RRset with its RRSIGs, so
    /// whoever feeds the validator both RRsets (an on-path attacker, a
    /// hostile upstream) can search offline for a pair with one key and be
    /// served one's proof for the other. `proof_ledger` refuses such pairs;
    /// this check stands behind it for anything hickory calls secure. Our
    /// copy of the keys may be older than hickory's (a rollover): it is
    /// dropped and taken again before a no.
    async fn second_opinion(&self, chain: &Chain, query: &Query, msg: &Message, full: Security) -> Security {
        if full != Security::Secure {
            return full;
        }
        let unverified = |detail: &str| {
            warn!(qname = %query.name(), detail, "hickory called secure an answer whose signatures do not verify; bogus");
            bogus("bad-signature", format!("{} {}: {detail}", query.name(), query.query_type()))
        };
        let rrsets = match positive_proof::signed_rrsets(msg, query.query_class()) {
            Ok(rrsets) => rrsets,
            Err(why) => return unverified(why),
        };
        let mut signers: Vec<&Name> = Vec::new();
        for zone in rrsets.iter().flat_map(|s| &s.signers) {
            if !signers.contains(&zone) {
                signers.push(zone);
            }
        }
        if signers.len() > MAX_OPINION_ZONES {
            return unverified("signatures by too many zones");
        }
        // One walk budget and one check budget for the answer, both looks.
        let walk = Walk::new();
        let mut keys: Vec<(Name, Arc<[DNSKEY]>)> = Vec::new();
        for zone in signers {
            keys.push((zone.clone(), self.zone_keys_within(&chain.anchors, zone, &walk).await));
        }
        let budget = CheckBudget::for_opinion();
        let check = |keys: &[(Name, Arc<[DNSKEY]>)]| {
            positive_proof::rrsets_verify(msg, &rrsets, keys, &self.signatures, unix_now(), query.query_class(), &budget)
        };
        let mut outcome = check(&keys);
        // A signature by a key we do not hold may be by one new since ours
        // were proven (a rollover), or ours may be none for now: those
        // zones' keys are proven again, once. Nothing else a second look
        // could change.
        if let Err(OpinionFailure::Unverified { unknown_keys, .. }) = &outcome {
            if !unknown_keys.is_empty() {
                for (zone, zone_keys) in keys.iter_mut().filter(|(z, _)| unknown_keys.contains(z)) {
                    self.forget_keys(zone);
                    *zone_keys = self.zone_keys_within(&chain.anchors, zone, &walk).await;
                }
                outcome = check(&keys);
            }
        }
        match outcome {
            Ok(()) => Security::Secure,
            Err(OpinionFailure::Budget) => unverified("the answer's signatures cost more checks than allowed"),
            Err(OpinionFailure::Unverified { signers, .. }) => {
                // The failing RRset's signer has no keys because they could
                // not be fetched: nothing is proven either way.
                let failed_fetch = |zone: &Name| {
                    SUB_FAILED.try_with(|f| f.borrow().iter().any(|z| z.zone_of(zone))).unwrap_or(false)
                };
                let unfetched = keys.iter().find(|(zone, k)| signers.contains(zone) && k.is_empty() && failed_fetch(zone));
                match unfetched {
                    Some((zone, _)) => {
                        warn!(qname = %query.name(), %zone, "hickory called secure an answer whose signer's keys could not be fetched; indeterminate");
                        Security::Indeterminate(format!("the DNSKEYs of {zone} could not be fetched"))
                    }
                    None => unverified("no signature verifies with the zone's proven keys"),
                }
            }
        }
    }

    /// Drops `zone`'s keys, and the failures remembered for it and the
    /// zones above it: a chain walk that failed on a lost datagram must
    /// not make a genuine answer bogus for `NO_KEYS_RETRY`.
    fn forget_keys(&self, zone: &Name) {
        self.zone_keys.lock().unwrap_or_else(|p| p.into_inner()).remove(zone);
        self.no_keys.lock().unwrap_or_else(|p| p.into_inner()).retain(|failed, _| !failed.zone_of(zone));
    }

    /// `zone`'s DNSKEYs, proven from the trust anchor by `prove_keys` and
    /// reused until they lapse; none for a while when they cannot be (an
    /// insecure zone, a failed fetch, a broken chain). Its answers then
    /// take the full path, which says why.
    async fn zone_keys(&self, anchors: &TrustAnchors, zone: &Name) -> Arc<[DNSKEY]> {
        self.zone_keys_within(anchors, zone, &Walk::new()).await
    }

    /// `zone_keys` within a walk budget shared with other zones of one answer.
    async fn zone_keys_within(&self, anchors: &TrustAnchors, zone: &Name, walk: &Walk) -> Arc<[DNSKEY]> {
        match self.proven_keys(anchors, zone, walk, 0).await {
            Walked::Proven((_, keys)) => keys,
            Walked::Failed | Walked::OutOfBudget => Arc::from([]),
        }
    }

    /// `zone_keys` with the keys' lifetime, within `walk`'s budget;
    /// `depth`: zones climbed above the signer so far.
    fn proven_keys<'a>(
        &'a self,
        anchors: &'a TrustAnchors,
        zone: &'a Name,
        walk: &'a Walk,
        depth: usize,
    ) -> Pin<Box<dyn Future<Output = Walked> + Send + 'a>> {
        Box::pin(async move {
            let now = Instant::now();
            let cached = self.zone_keys.lock().unwrap_or_else(|p| p.into_inner()).get(zone).cloned();
            if let Some(hit) = cached.filter(|(until, _)| *until > now) {
                return Walked::Proven(hit);
            }
            if self.no_keys.lock().unwrap_or_else(|p| p.into_inner()).get(zone).is_some_and(|until| *until > now) {
                return Walked::Failed;
            }
            if depth > MAX_WALK_DEPTH
                || walk.zones_left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_err()
            {
                return Walked::OutOfBudget;
            }
            let walked = self.prove_keys(anchors, zone, walk, depth).await;
            match &walked {
                Walked::Proven(p) => remember(&self.zone_keys, zone, p.clone(), |(until, _)| *until > now),
                Walked::Failed => remember(&self.no_keys, zone, now + NO_KEYS_RETRY, |until| *until > now),
                // Says nothing about this zone: a deep name's walk must not
                // park the keys of the zones it passes through.
                Walked::OutOfBudget => {}
            }
            walked
        })
    }

    /// RFC 4035 §5.1-5.2, with our own signature checks: `zone`'s DNSKEY
    /// set must be signed by a key that is a trust anchor, or that a DS set
    /// of the zone's parent covers, that DS set being signed with the
    /// parent's keys proven the same way. hickory proves these sets too,
    /// but keeps those proofs in the same collision-prone cache as every
    /// other (see `second_opinion`); keys proven here make the shortcut and
    /// the second opinion independent of it.
    ///
    /// The keys are used no longer than the smallest authenticated TTL
    /// along the chain (`cap_authenticated_ttls`) and the age of the
    /// sub-answers they came from, at most `SUB_CACHE_MAX_TTL`, and at
    /// least a second: a zone may publish its keys with TTL 0.
    async fn prove_keys(&self, anchors: &TrustAnchors, zone: &Name, walk: &Walk, depth: usize) -> Walked {
        let unix = unix_now();
        let Some((dnskeys, mut until)) = self.fetch_signed(zone, RecordType::DNSKEY, unix).await else {
            return Walked::Failed;
        };
        let set: Vec<&DNSKEY> = zone_dnskeys(zone, &dnskeys).collect();
        if set.is_empty() || set.len() > MAX_ZONE_KEYS {
            return Walked::Failed;
        }
        let lower = LowerName::from(zone);
        let anchored: Vec<DNSKEY> =
            set.iter().filter(|k| anchors.contains_with_name(k.public_key(), &lower)).map(|k| (*k).clone()).collect();
        let verifies = |trusted: &[DNSKEY]| {
            positive_proof::chain_rrset_verifies(zone, RecordType::DNSKEY, &dnskeys, zone, trusted, &self.signatures, unix)
        };
        // A set made only of configured anchors is trusted as configured
        // (as hickory does); otherwise an anchored key must sign it. A zone
        // below the root whose anchors no longer sign its set (a rollover)
        // may still be proven through its parent.
        let by_anchor = !anchored.is_empty() && (anchored.len() == set.len() || verifies(&anchored));
        if !by_anchor {
            if zone.is_root() {
                warn!(%zone, "the root's DNSKEY set is not signed by a trust anchor");
                return Walked::Failed;
            }
            let Some((ds, ds_until)) = self.fetch_signed(zone, RecordType::DS, unix).await else { return Walked::Failed };
            let parent_until = match self.proven_parent(anchors, zone, &ds, unix, walk, depth).await {
                Walked::Proven((until, _)) => until,
                other => return other,
            };
            let ds_set: Vec<(Name, DS)> = ds
                .iter()
                .filter(|r| r.name == *zone)
                .filter_map(|r| match &r.data {
                    RData::DNSSEC(DNSSECRData::DS(d)) => Some((zone.clone(), d.clone())),
                    _ => None,
                })
                .collect();
            if !verifies(&covered_keys(zone, &dnskeys, &ds_set)) {
                warn!(%zone, "the zone's DNSKEY set is not signed by a key its DS covers");
                return Walked::Failed;
            }
            until = until.min(ds_until).min(parent_until);
        }
        let keys: Arc<[DNSKEY]> = set.into_iter().cloned().collect();
        Walked::Proven((until, keys))
    }

    /// The keys of the zone above `zone` that verify its DS set `ds`, and
    /// until when they hold. The signer of a DS set is the parent (RFC 4035
    /// §5.2); at most `MAX_SIGNERS` claimed signers are tried.
    async fn proven_parent(&self, anchors: &TrustAnchors, zone: &Name, ds: &[Record], unix: u32, walk: &Walk, depth: usize) -> Walked {
        let mut signers: Vec<&Name> = Vec::new();
        for sig in ds.iter().filter(|r| r.name == *zone).filter_map(positive_proof::rrsig) {
            let signer = &sig.input().signer_name;
            if sig.input().type_covered == RecordType::DS && signer.zone_of(zone) && signer != zone && !signers.contains(&signer) {
                signers.push(signer);
            }
        }
        let mut outcome = Walked::Failed;
        for parent in signers.into_iter().take(positive_proof::MAX_SIGNERS) {
            match self.proven_keys(anchors, parent, walk, depth + 1).await {
                Walked::Proven(p)
                    if positive_proof::chain_rrset_verifies(zone, RecordType::DS, ds, parent, &p.1, &self.signatures, unix) =>
                {
                    return Walked::Proven(p);
                }
                Walked::OutOfBudget => outcome = Walked::OutOfBudget,
                _ => {}
            }
        }
        debug!(%zone, "no DS set for the zone verifies with its parent's proven keys");
        outcome
    }

    /// The IN-class answer records of a NOERROR answer to (`name`, `rtype`)
    /// from the upstreams (through the sub-answer cache), their TTLs capped
    /// as their signatures allow, and until when the RRset may be used.
    /// Records of other classes are dropped: a signature over class IN
    /// covers none of them, so they must not ride along with a verified set.
    async fn fetch_signed(&self, name: &Name, rtype: RecordType, unix: u32) -> Option<(Vec<Record>, Instant)> {
        let (resp, kept_until) = self.exchange.clone().sub_query_until(Query::query(name.clone(), rtype)).await.ok()?;
        match resp.metadata.response_code {
            ResponseCode::NoError => {}
            // No statement about the keys, as for a DS anchor's (`keys_for_ds`).
            ResponseCode::ServFail | ResponseCode::Refused | ResponseCode::NotImp => {
                let _ = SUB_FAILED.try_with(|f| f.borrow_mut().push(name.to_lowercase()));
                return None;
            }
            _ => return None,
        }
        let mut answers: Vec<Record> = resp.answers.iter().filter(|r| r.dns_class == DNSClass::IN).cloned().collect();
        cap_authenticated_ttls(&mut answers, unix);
        let ttl = answers.iter().filter(|r| r.name == *name && r.record_type() == rtype).map(|r| r.ttl).min()?;
        let now = Instant::now();
        let lifetime = Duration::from_secs(ttl.max(1).into()).min(SUB_CACHE_MAX_TTL);
        // A sub-answer from the cache has aged since it was fetched.
        let fetched_for = kept_until.map_or(lifetime, |exp| exp.saturating_duration_since(now));
        Some((answers, now + lifetime.min(fetched_for).max(Duration::from_secs(1))))
    }
}

/// What a walk up the chain of trust found for a zone.
enum Walked {
    Proven(ProvenKeys),
    /// The zone's keys cannot be proven now (remembered `NO_KEYS_RETRY`).
    Failed,
    /// The walk's budget ran out first: nothing is learnt about the zone.
    OutOfBudget,
}

/// One walk's budget, shared by all its branches: zones whose keys it may
/// still prove (each costs at most two sub-queries and two
/// `chain_rrset_verifies`).
struct Walk {
    zones_left: AtomicUsize,
}

impl Walk {
    fn new() -> Self {
        Walk { zones_left: AtomicUsize::new(MAX_WALK_ZONES) }
    }
}

/// The DNSKEY records of `zone` among `records`.
fn zone_dnskeys<'a>(zone: &'a Name, records: &'a [Record]) -> impl Iterator<Item = &'a DNSKEY> + 'a {
    records.iter().filter(move |r| r.name == *zone).filter_map(|r| match &r.data {
        RData::DNSSEC(DNSSECRData::DNSKEY(k)) => Some(k),
        _ => None,
    })
}

/// Inserts into a bounded map: past `ZONE_KEY_ENTRIES`, the entries `live`
/// rejects go first, then all of them.
fn remember<V>(map: &Mutex<HashMap<Name, V>>, zone: &Name, value: V, live: impl Fn(&V) -> bool) {
    let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
    if map.len() >= ZONE_KEY_ENTRIES {
        map.retain(|_, v| live(v));
        if map.len() >= ZONE_KEY_ENTRIES {
            map.clear();
        }
    }
    map.insert(zone.clone(), value);
}

/// Seconds since the epoch, as RRSIG validity windows count them.
fn unix_now() -> u32 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as u32)
}

/// hickory reports a chain it could not fetch as a failed proof, and keeps
/// that proof in its cache like any other (up to 300 s). Only the query
/// name's own chain (a zone at or above it that failed now or recently)
/// makes that indeterminate: a forged answer that drags in a record of some
/// other zone, one whose servers its owner keeps unreachable, stays bogus.
fn unreachable_chain(security: Security, qname: &Name, failed: &[Name]) -> Security {
    match security {
        Security::Bogus(b) if failed.iter().any(|zone| zone.zone_of(qname)) => Security::Indeterminate(b.detail),
        s => s,
    }
}

/// RFC 4035 §5.3.3: an authenticated RRset and its RRSIGs may be cached no
/// longer than the signature's Original TTL and no longer than it stays
/// valid. CoreDNS caches what we hand it for the TTL it sees, so a secure
/// answer leaves here with those caps applied; otherwise an answer signed
/// to expire in a minute could be served from the cache for a day.
/// `now` is seconds since the epoch. Returns how many TTLs were lowered.
pub fn cap_authenticated_ttls(records: &mut [Record], now: u32) -> usize {
    let covered = |r: &Record| match &r.data {
        RData::DNSSEC(DNSSECRData::RRSIG(sig)) => Some((sig.input().type_covered, sig.authenticated_ttl(r, now))),
        _ => None,
    };
    // Several signatures over one RRset (two keys, two algorithms): the
    // smallest cap holds for all of them.
    let mut caps: HashMap<(Name, RecordType), u32> = HashMap::new();
    for r in records.iter() {
        if let Some((rtype, cap)) = covered(r) {
            let e = caps.entry((r.name.to_lowercase(), rtype)).or_insert(cap);
            *e = (*e).min(cap);
        }
    }
    let mut lowered = 0;
    for r in records.iter_mut() {
        let rtype = covered(r).map_or(r.record_type(), |(t, _)| t);
        if let Some(&cap) = caps.get(&(r.name.to_lowercase(), rtype)) {
            if r.ttl > cap {
                r.ttl = cap;
                lowered += 1;
            }
        }
    }
    lowered
}

/// Keys in `answers` owned by `owner` that some DS in `ds` covers. Only
/// keys of the DS's algorithm and key tag are digested, at most
/// `MAX_KEYS_PER_TAG` per DS and for the first `MAX_DS` DS records, so a
/// hostile set cannot buy a digest for every pair (as hickory limits it).
fn covered_keys(owner: &Name, answers: &[Record], ds: &[(Name, DS)]) -> Vec<DNSKEY> {
    let keys: Vec<(u16, &DNSKEY)> =
        zone_dnskeys(owner, answers).filter_map(|k| k.calculate_key_tag().ok().map(|tag| (tag, k))).collect();
    let mut covered: Vec<DNSKEY> = Vec::new();
    for (_, d) in ds.iter().filter(|(n, _)| n == owner || (n.is_root() && owner.is_root())).take(MAX_DS) {
        let candidates = keys
            .iter()
            .filter(|(tag, k)| *tag == d.key_tag() && PublicKey::algorithm(k.public_key()) == d.algorithm())
            .take(positive_proof::MAX_KEYS_PER_TAG);
        for (_, k) in candidates {
            if d.covers(owner, k).unwrap_or(false) && !covered.contains(k) {
                covered.push((*k).clone());
            }
        }
    }
    covered
}

/// Reads the verdict off hickory's result: the records' proofs, or the
/// error a failed denial proof comes back as.
fn classify(query: &Query, result: Result<DnsResponse, NetError>) -> Security {
    let (response, proof) = match &result {
        Ok(resp) => (&**resp, None),
        Err(NetError::Dns(DnsError::Nsec { response, proof, .. })) => (&***response, Some(*proof)),
        Err(e) => return bogus("validation-failed", e.to_string()),
    };
    let verdict = match proof {
        None | Some(Proof::Secure) => summarize(response),
        // An insecure denial (NSEC3 past the iteration limit, RFC 9276
        // §3.2) says nothing for the records beside it: hickory returns it
        // before it looks at them or at what the NSEC3 denies.
        Some(Proof::Insecure) => match summarize(response) {
            bogus @ Security::Bogus(_) => bogus,
            // hickory says so before it checks whose NSEC3 they are: they
            // must speak for the zone the chain ends in.
            _ if !nsec3_of_the_end(query, response) => {
                bogus("denial-unproven", format!("NSEC3 of another zone for {}", query.name()))
            }
            _ => Security::Insecure,
        },
        // hickory judged the expansions of a positive answer against the
        // query name (and wrongly for NSEC, hickory-dns #2882), and takes
        // an ANY answer, whose records are of no type ANY, for a denial: a
        // chain that ends in data, every RRset secure, and every expansion
        // proven on its own (`expansion`) is secure.
        Some(p) => {
            // hickory verified every RRset before it looked at the denial: a
            // record whose signature failed is bogus whatever a later look
            // at the denial says.
            if let bogus @ Security::Bogus(_) = summarize(response) {
                return bogus;
            }
            let answered = matches!(chain_end(query, response), Some((_, true)));
            let proven = matches!(expansion::judge(response), Expansions::None | Expansions::Proven);
            if answered && summarize(response) == Security::Secure && proven {
                return Security::Secure;
            }
            return bogus("denial-unproven", format!("no valid NSEC/NSEC3 proof for {} ({p})", query.name()));
        }
    };
    if matches!(verdict, Security::Bogus(_)) {
        return verdict;
    }
    if response.metadata.response_code == ResponseCode::NXDomain && verdict == Security::Secure {
        if let Some((end, _)) = chain_end(query, response) {
            if !nsec_denies_the_wildcard(&end, &response.authorities) {
                return bogus("denial-unproven", format!("no NSEC denies the wildcard at the closest encloser of {end}"));
            }
        }
    }
    // Whatever hickory said, each expansion needs its own proof: hickory
    // skips the check when every authority record is insecure.
    match expansion::judge(response) {
        Expansions::Unproven(why) => bogus("wildcard-unproven", why),
        Expansions::AtMostInsecure if verdict == Security::Secure => Security::Insecure,
        _ => verdict,
    }
}

/// NSEC records that cover one name: past this many, no proof is read.
const MAX_COVERING_NSECS: usize = 4;

/// RFC 4035 §5.4: that an NXDOMAIN's secure NSEC records, if it has any,
/// deny the wildcard at `name`'s closest encloser, the longer of the names
/// the NSEC covering `name` shares with its owner and with its next name.
/// hickory 0.26.3 looks for that wildcard no higher than the SOA's owner,
/// or with no SOA than `name`'s parent: with the SOA dropped, one NSEC
/// covering both a.b.Z and *.b.Z denied a name *.Z serves.
fn nsec_denies_the_wildcard(name: &Name, authorities: &[Record]) -> bool {
    let nsecs: Vec<(&Name, &NSEC)> = authorities
        .iter()
        .filter(|r| r.proof == Proof::Secure)
        .filter_map(|r| match &r.data {
            RData::DNSSEC(DNSSECRData::NSEC(n)) => Some((&r.name, n)),
            _ => None,
        })
        .collect();
    // RFC 6840 §4.1: a parent's NSEC at a cut (NS without SOA, or DNAME)
    // spans the child's names in canonical order but denies none of them.
    let denies = |owner: &Name, n: &NSEC, denied: &Name| {
        covers(owner, n.next_domain_name(), denied) && !(n.is_ancestor_delegation() && owner.zone_of(denied))
    };
    let covering: Vec<_> = nsecs.iter().filter(|(owner, n)| denies(owner, n, name)).take(MAX_COVERING_NSECS + 1).collect();
    if covering.len() > MAX_COVERING_NSECS {
        return false;
    }
    covering.iter().all(|(owner, n)| {
        let encloser = common_labels(name, owner).max(common_labels(name, n.next_domain_name()));
        match name.trim_to(encloser as usize).prepend_label("*") {
            Ok(wildcard) => nsecs.iter().any(|(o, m)| denies(o, m, &wildcard)),
            Err(_) => false,
        }
    })
}

/// Whether every NSEC3 of `m`'s authority section belongs to a zone at or
/// above the last name of its chain.
fn nsec3_of_the_end(query: &Query, m: &Message) -> bool {
    let Some((end, _)) = chain_end(query, m) else { return false };
    m.authorities.iter().filter(|r| r.record_type() == RecordType::NSEC3).all(|r| r.name.base_name().zone_of(&end))
}

/// CNAME chains longer than this are judged by hickory alone (BIND stops
/// following at 16, Unbound at 11).
const MAX_CHAIN: usize = 16;

/// Where `m`'s CNAME chain from `query`'s name ends: its last name, and
/// whether the type asked for is there. A CNAME question ends at its own
/// name, and so does an ANY question, answered by any record there. `None`
/// for a chain that loops or runs past `MAX_CHAIN`: hickory's verdict
/// stands for those.
fn chain_end(query: &Query, m: &Message) -> Option<(Name, bool)> {
    let qtype = query.query_type();
    if qtype == RecordType::ANY {
        return Some((query.name().clone(), m.answers.iter().any(|r| r.name == *query.name())));
    }
    let mut name = query.name().clone();
    for _ in 0..=MAX_CHAIN {
        let mut here = m.answers.iter().filter(|r| r.name == name);
        if here.clone().any(|r| r.record_type() == qtype) {
            return Some((name, true));
        }
        let next = here.find_map(|r| match &r.data {
            RData::CNAME(target) => Some(target.0.clone()),
            _ => None,
        });
        match next {
            Some(next) if qtype != RecordType::CNAME => name = next,
            _ => return Some((name, false)),
        }
    }
    None
}

/// The name `m` denies: where its chain ends in nothing of the type asked.
fn unanswered_end(query: &Query, m: &Message) -> Option<Name> {
    chain_end(query, m).and_then(|(end, answered)| (!answered).then_some(end))
}

/// An RRSIG with no RRset of the type it covers at its owner in its own
/// section. hickory reads an answer-section RRSIG's label count as a
/// wildcard expansion even when nothing it signs is there, and nothing
/// else looks at a signature alone: with the expanded record dropped, a
/// genuine wildcard answer became a secure denial. No server sends one
/// (RFC 4035 §3.1.1). RRSIG and ANY questions are left to hickory.
fn orphan_signature(query: &Query, m: &Message) -> Option<(Name, RecordType)> {
    if matches!(query.query_type(), RecordType::RRSIG | RecordType::ANY) {
        return None;
    }
    for section in [&m.answers, &m.authorities] {
        let covered: HashSet<(Name, RecordType)> =
            section.iter().filter(|r| r.record_type() != RecordType::RRSIG).map(|r| (r.name.to_lowercase(), r.record_type())).collect();
        for r in section {
            if let RData::DNSSEC(DNSSECRData::RRSIG(sig)) = &r.data {
                let key = (r.name.to_lowercase(), sig.input().type_covered);
                if !covered.contains(&key) {
                    return Some(key);
                }
            }
        }
    }
    None
}

/// The records of `authorities` that may speak for `end` in the judgement
/// of its denial: all but the NSEC and NSEC3 records (and their RRSIGs) of
/// any signer other than the deepest one that holds `end`. Those prove
/// another zone's wildcard expansion along the chain (an ancestor's
/// included), and hickory refuses NSEC3 records of two zones, or NSEC
/// beside NSEC3, in one denial.
fn authority_for(end: &Name, authorities: &[Record]) -> Vec<Record> {
    fn denial_type(t: RecordType) -> bool {
        matches!(t, RecordType::NSEC | RecordType::NSEC3)
    }
    fn denial_sig(r: &Record) -> Option<&RRSIG> {
        positive_proof::rrsig(r).filter(|sig| denial_type(sig.input().type_covered))
    }
    let signer = authorities
        .iter()
        .filter_map(denial_sig)
        .map(|sig| &sig.input().signer_name)
        .filter(|signer| signer.zone_of(end))
        .max_by_key(|signer| signer.num_labels());
    // An SOA below every such signer names the end's zone (an unsigned
    // child's): no ancestor's denial speaks for it, and hickory must prove
    // that zone insecure or call the answer bogus.
    let deepest_soa = authorities.iter().filter(|r| r.record_type() == RecordType::SOA && r.name.zone_of(end)).map(|r| r.name.num_labels()).max();
    let signer = signer.filter(|signer| deepest_soa.is_none_or(|soa| soa <= signer.num_labels()));
    let signed: HashSet<(Name, RecordType)> = authorities
        .iter()
        .filter_map(|r| denial_sig(r).filter(|sig| Some(&sig.input().signer_name) == signer).map(|sig| (r.name.to_lowercase(), sig.input().type_covered)))
        .collect();
    // Other records only at the end's ancestors: hickory calls a denial
    // with no NSEC insecure when every authority record is, whatever its
    // owner, so an unrelated unsigned SOA would speak for the end
    // (`checks::scope_authority` drops those before validation too).
    authorities
        .iter()
        .filter(|r| match denial_sig(r) {
            Some(sig) => Some(&sig.input().signer_name) == signer,
            None if denial_type(r.record_type()) => signed.contains(&(r.name.to_lowercase(), r.record_type())),
            None => r.name.zone_of(end),
        })
        .cloned()
        .collect()
}

/// What the wildcard expansions of `msg` come to once the second opinion
/// has verified every RRset of its answer and authority sections, each with
/// one of its signers: all of them secure (`expansion` counts a denial only
/// for its sole signer).
fn expansions_of_verified(msg: &Message) -> Security {
    let mut verified = msg.clone();
    for r in verified.answers.iter_mut().chain(verified.authorities.iter_mut()) {
        r.proof = Proof::Secure;
    }
    match expansion::judge(&verified) {
        Expansions::None | Expansions::Proven => Security::Secure,
        Expansions::AtMostInsecure => Security::Insecure,
        Expansions::Unproven(why) => bogus("wildcard-unproven", why),
    }
}

/// `msg` with only the records a signature in their own section covers.
fn signed_only(msg: &Message) -> Message {
    fn keep(section: &[Record]) -> Vec<Record> {
        let covered: HashSet<(Name, RecordType)> = section
            .iter()
            .filter_map(|r| positive_proof::rrsig(r).map(|sig| (r.name.to_lowercase(), sig.input().type_covered)))
            .collect();
        section
            .iter()
            .filter(|r| r.record_type() == RecordType::RRSIG || covered.contains(&(r.name.to_lowercase(), r.record_type())))
            .cloned()
            .collect()
    }
    let mut signed = msg.clone();
    signed.answers = keep(&msg.answers);
    signed.authorities = keep(&msg.authorities);
    signed
}

/// Whether `records` are DNAMEs and their signatures, nothing else.
fn only_dnames(records: &[Record]) -> bool {
    records.iter().all(|r| match &r.data {
        RData::DNSSEC(DNSSECRData::RRSIG(sig)) => sig.input().type_covered == RecordType::DNAME,
        _ => r.record_type() == RecordType::DNAME,
    })
}

/// Whether an answer-section RRSIG signs its RRset as a wildcard expansion.
fn expanded(m: &Message) -> bool {
    m.answers.iter().any(|r| matches!(&r.data, RData::DNSSEC(DNSSECRData::RRSIG(sig)) if sig.input().num_labels < r.name.num_labels()))
}

/// RFC 4035 §4.3: secure when every answer and authority RRset is; bogus
/// when any is.
fn summarize(m: &Message) -> Security {
    let records = || m.answers.iter().chain(m.authorities.iter());
    match DnssecSummary::from_records(records()) {
        DnssecSummary::Secure => Security::Secure,
        DnssecSummary::Insecure => Security::Insecure,
        DnssecSummary::Bogus => {
            let r = records().find(|r| r.proof == Proof::Bogus && r.record_type() != RecordType::RRSIG);
            let detail = r.map_or_else(String::new, |r| format!("{} {} failed validation", r.name, r.record_type()));
            bogus("bad-signature", detail)
        }
    }
}

/// `name` lies strictly between `owner` and `next` in canonical order
/// (RFC 4034 §6.1); the zone's last NSEC wraps around to the apex.
pub(super) fn covers(owner: &Name, next: &Name, name: &Name) -> bool {
    if owner < next {
        owner < name && name < next
    } else {
        owner < name && next.zone_of(name)
    }
}

/// Labels `a` and `b` share, counted from the root.
pub(super) fn common_labels(a: &Name, b: &Name) -> u8 {
    let n = a.iter().rev().zip(b.iter().rev()).take_while(|(x, y)| x.eq_ignore_ascii_case(y)).count();
    n as u8
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::dnssec::rdata::SigInput;

    use std::sync::atomic::{AtomicUsize, Ordering};

    use crate::proxy::{
        dname::tests::{cname, dname_record},
        positive_proof::tests::{a, answer, Zone},
    };

    const KEY: &str = "AwEAAaz/tAm8yTn4Mfeh5eyI96WSVexTBAvkMgJzkKTOiW1vkIbzxeF3+/4RgWOq7HrxRixHlFlExOLAJr5emLvN7SWXgnLh4+B5xQlNVz8Og8kvArMtNROxVQuCaSnIDdD5LKyWbRd2n9WGe2R8PzgCmr3EgVLrjyBxWezF0jLHwVN8efS3rCj/EWgvIWgb9tarpVUDK/b58Da+sqqls3eNbuv7pr+eoZG+SrDK6nWeL3c6H5Apxz7LjVc1uTIdsIXxuOLYA4/ilBmSVIzuDWfdRUfhHdY6+cn8HFRm+2hM8AnXGXws9555KrUB5qihylGa8subX2Nn6UwNR1AkUTV74bU=";
    const DS_20326: &str = "E06D44B80B8F1D39A95C0B0D7C65D08458E880409BBC683457104237C7F8EC8D";

    fn parse(text: &str) -> Result<AnchorSet, AnchorError> {
        AnchorSet::parse(text, Path::new("root.key"))
    }

    #[test]
    fn only_the_query_names_own_chain_makes_a_failure_indeterminate() {
        let n = |s: &str| Name::from_ascii(s).unwrap();
        let bad = || bogus("bad-signature", "www.signed.lab. A failed validation");
        let qname = n("WWW.Signed.Lab.");
        // The chain of www.signed.lab: the root, lab, signed.lab (any case).
        for zone in [".", "lab.", "signed.lab.", "SIGNED.LAB."] {
            assert_eq!(
                unreachable_chain(bad(), &qname, &[n(zone)]),
                Security::Indeterminate("www.signed.lab. A failed validation".into()),
                "{zone}"
            );
        }
        // Another zone's keys (a record the answer dragged in), or nothing failed.
        assert_eq!(unreachable_chain(bad(), &qname, &[n("attacker.example.")]), bad());
        assert_eq!(unreachable_chain(bad(), &qname, &[n("other.signed.lab.")]), bad());
        assert_eq!(unreachable_chain(bad(), &qname, &[]), bad());
        // Secure and insecure answers stay what they are.
        assert_eq!(unreachable_chain(Security::Secure, &qname, &[n(".")]), Security::Secure);
        assert_eq!(unreachable_chain(Security::Insecure, &qname, &[n(".")]), Security::Insecure);
    }

    #[test]
    fn authenticated_ttls_are_capped_by_original_ttl_and_signature_expiry() {
        use hickory_proto::rr::rdata::A;
        let now = 1_800_000_000u32;
        let name = Name::from_ascii("www.signed.lab.").unwrap();
        let a = |ttl| Record::from_rdata(name.clone(), ttl, RData::A(A::new(198, 18, 0, 1)));
        let sig = |rtype, original_ttl, expires_in: u32| {
            let input = SigInput {
                type_covered: rtype,
                algorithm: Algorithm::ECDSAP256SHA256,
                num_labels: 3,
                original_ttl,
                sig_expiration: (now + expires_in).into(),
                sig_inception: (now - 3600).into(),
                key_tag: 1,
                signer_name: Name::from_ascii("signed.lab.").unwrap(),
            };
            Record::from_rdata(
                Name::from_ascii("WWW.Signed.Lab.").unwrap(),
                86400,
                RData::DNSSEC(DNSSECRData::RRSIG(RRSIG::from_sig(input, vec![0; 64]))),
            )
        };
        // Expires in 100 s: the A RRset and its RRSIG may be cached 100 s, not a day.
        let mut records = vec![a(86400), a(86400), sig(RecordType::A, 3600, 100)];
        assert_eq!(cap_authenticated_ttls(&mut records, now), 3);
        assert!(records.iter().all(|r| r.ttl == 100), "{records:?}");
        // The Original TTL caps when it is the smaller; of two signatures the stricter wins.
        let mut records = vec![a(86400), sig(RecordType::A, 300, 7200), sig(RecordType::A, 600, 250)];
        cap_authenticated_ttls(&mut records, now);
        assert!(records.iter().all(|r| r.ttl == 250), "{records:?}");
        // A TTL already below the caps stays; a signature over another type caps nothing here.
        let mut records = vec![a(30), sig(RecordType::AAAA, 10, 10)];
        cap_authenticated_ttls(&mut records, now);
        assert_eq!(records[0].ttl, 30);
        // An expired signature leaves nothing to cache.
        let mut records = vec![a(60), sig(RecordType::A, 60, 0)];
        cap_authenticated_ttls(&mut records, now);
        assert_eq!(records[0].ttl, 0);
    }

    #[test]
    fn dnskey_only_anchor() {
        let set = parse(&format!("; the root KSK\n. 172800 IN DNSKEY 257 3 8 {KEY} ;{{id = 20326 (ksk)}}\n")).unwrap();
        assert_eq!(set.dnskeys.len(), 1);
        assert!(set.ds.is_empty());
        let (name, key) = &set.dnskeys[0];
        assert!(name.is_root());
        assert_eq!(key.calculate_key_tag().unwrap(), 20326);
    }

    #[test]
    fn ds_only_anchor_and_it_covers_the_key() {
        let set = parse(&format!(". IN DS 20326 8 2 {}\n", DS_20326.to_lowercase())).unwrap();
        assert_eq!(set.ds.len(), 1);
        assert!(set.dnskeys.is_empty());
        let key = parse_dnskey(&["257", "3", "8", KEY].map(String::from)).unwrap();
        let record = Record::from_rdata(Name::root(), 3600, RData::DNSSEC(DNSSECRData::DNSKEY(key.clone())));
        assert_eq!(covered_keys(&Name::root(), std::slice::from_ref(&record), &set.ds), [key]);
        // A key the DS does not cover is not kept.
        let other = parse_dnskey(&["256", "3", "8", &KEY.replace("AwEAAaz", "AwEAAbz")].map(String::from)).unwrap();
        let record = Record::from_rdata(Name::root(), 3600, RData::DNSSEC(DNSSECRData::DNSKEY(other)));
        assert!(covered_keys(&Name::root(), &[record], &set.ds).is_empty());
    }

    #[test]
    fn both_forms_and_multi_line_records() {
        let text = format!(
            ". 3600 IN DNSKEY 257 3 8 (\n  {}\n  {} ) ; KSK\n$TTL 3600\n. DS 20326 8 2 {} {}\n",
            &KEY[..100],
            &KEY[100..],
            &DS_20326[..32],
            &DS_20326[32..]
        );
        let set = parse(&text).unwrap();
        assert_eq!((set.dnskeys.len(), set.ds.len()), (1, 1));
    }

    #[test]
    fn malformed_lines_are_all_reported_with_file_and_line() {
        let text = format!(
            "; header\n. IN DNSKEY 257 3 8 {KEY}\n. IN DNSKEY 257 2 8 {KEY}\nexample IN DS 1 8 2 00\n. IN A 192.0.2.1\n. IN DS 20326 8 2 abcd\n. IN DS x 8 2 {DS_20326}\n"
        );
        let Err(AnchorError::Parse { issues }) = parse(&text) else { panic!("accepted") };
        let lines: Vec<&str> = issues.iter().map(|i| i.split(": ").next().unwrap()).collect();
        assert_eq!(lines, ["root.key:3", "root.key:4", "root.key:5", "root.key:6", "root.key:7"], "{issues:#?}");
        assert!(issues[0].contains("protocol"), "{}", issues[0]);
        assert!(issues[1].contains("fully qualified"), "{}", issues[1]);
        assert!(issues[2].contains("type A"), "{}", issues[2]);
        assert!(issues[3].contains("32"), "{}", issues[3]);
        assert!(matches!(parse("; nothing\n"), Err(AnchorError::Empty { .. })));
    }

    fn n(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    #[test]
    fn nsec_cover_and_closest_encloser() {
        assert!(covers(&n("a.example."), &n("d.example."), &n("b.example.")));
        assert!(covers(&n("a.example."), &n("d.example."), &n("x.b.example.")));
        assert!(!covers(&n("a.example."), &n("d.example."), &n("e.example.")));
        // The last NSEC wraps to the apex.
        assert!(covers(&n("z.example."), &n("example."), &n("zz.example.")));
        assert_eq!(common_labels(&n("x.wild.Example."), &n("*.wild.example.")), 2);
    }

    /// A zone `example.` signed with NSEC holding `*.wild.example. A`;
    /// the answer for `x.wild.example.` as a validator would mark it.
    fn wildcard_answer(nsec_owner: &str, nsec_next: &str) -> Message {
        let qname = n("x.wild.example.");
        let mut m = Message::response(1, hickory_proto::op::OpCode::Query);
        m.add_query(Query::query(qname.clone(), RecordType::A));
        let mut a = Record::from_rdata(qname.clone(), 60, RData::A(hickory_proto::rr::rdata::A::new(192, 0, 2, 1)));
        a.proof = Proof::Secure;
        m.add_answer(a);
        let sig_input = SigInput {
            type_covered: RecordType::A,
            algorithm: Algorithm::ECDSAP256SHA256,
            num_labels: 2,
            original_ttl: 60,
            sig_expiration: 0.into(),
            sig_inception: 0.into(),
            key_tag: 1,
            signer_name: n("example."),
        };
        let mut sig =
            Record::from_rdata(qname, 60, RData::DNSSEC(DNSSECRData::RRSIG(RRSIG::from_sig(sig_input, vec![0; 64]))));
        sig.proof = Proof::Secure;
        m.add_answer(sig);
        let mut nsec = Record::from_rdata(
            n(nsec_owner),
            60,
            RData::DNSSEC(DNSSECRData::NSEC(NSEC::new(n(nsec_next), [RecordType::A, RecordType::RRSIG]))),
        );
        nsec.proof = Proof::Secure;
        m.add_authority(nsec);
        m
    }

    #[test]
    fn classification_from_proofs() {
        let mut m = wildcard_answer("*.wild.example.", "z.wild.example.");
        assert_eq!(summarize(&m), Security::Secure);
        m.authorities[0].proof = Proof::Insecure;
        assert_eq!(summarize(&m), Security::Insecure);
        m.answers[0].proof = Proof::Bogus;
        assert!(matches!(summarize(&m), Security::Bogus(Bogus { reason: "bad-signature", .. })));
    }

    #[test]
    fn cache_ttl_is_bounded() {
        let mut m = Message::response(1, hickory_proto::op::OpCode::Query);
        assert_eq!(cache_ttl(&m), None);
        m.add_answer(Record::from_rdata(n("a.example."), 86400, RData::A(hickory_proto::rr::rdata::A::new(192, 0, 2, 1))));
        assert_eq!(cache_ttl(&m), Some(SUB_CACHE_MAX_TTL));
        m.add_answer(Record::from_rdata(n("a.example."), 30, RData::A(hickory_proto::rr::rdata::A::new(192, 0, 2, 2))));
        assert_eq!(cache_ttl(&m), Some(Duration::from_secs(30)));
        m.metadata.response_code = ResponseCode::ServFail;
        assert_eq!(cache_ttl(&m), None);
    }

    /// Signed RRsets an upstream serves, by name and type.
    type Served = HashMap<(Name, RecordType), Vec<Record>>;

    /// `rrset` and `signer`'s signature over it, valid now.
    fn signed(signer: &Zone, rrset: Vec<Record>) -> Vec<Record> {
        let now = unix_now();
        let sig = signer.sign_with(&rrset, rrset[0].name.num_labels(), now - 3600, now + 3600);
        [rrset, vec![sig]].concat()
    }

    fn dnskey_set(zone: &Zone) -> Vec<Record> {
        let record = |k| Record::from_rdata(zone.name.clone(), 300, RData::DNSSEC(DNSSECRData::DNSKEY(k)));
        zone.keys().into_iter().map(record).collect()
    }

    /// The DS record of `child`'s key, as its parent publishes it.
    fn ds_of(child: &Zone) -> Record {
        let key = &child.keys()[0];
        let digest = key.to_digest(&child.name, DigestType::SHA256).unwrap();
        let ds = DS::new(key.calculate_key_tag().unwrap(), PublicKey::algorithm(key.public_key()), DigestType::SHA256, digest.as_ref().to_vec());
        Record::from_rdata(child.name.clone(), 300, RData::DNSSEC(DNSSECRData::DS(ds)))
    }

    /// The root's DNSKEY set, signed by `root` (also the trust anchor).
    fn served_root(root: &Zone) -> Served {
        HashMap::from([((Name::root(), RecordType::DNSKEY), signed(root, dnskey_set(root)))])
    }

    /// A validator whose one upstream, on loopback, answers from `served`
    /// and SERVFAIL to anything else, with `root`'s key as the trust
    /// anchor. It counts the queries it gets.
    async fn validator_for(root: &Zone, served: Served) -> (Validator, Arc<AtomicUsize>) {
        let anchors = root.keys().into_iter().map(|k| (Name::root(), k)).collect();
        validator_with(anchors, served).await
    }

    /// `validator_for` with these DNSKEY trust anchors.
    async fn validator_with(dnskeys: Vec<(Name, DNSKEY)>, served: Served) -> (Validator, Arc<AtomicUsize>) {
        let anchors = AnchorSet { source: Some(PathBuf::from("root.key")), dnskeys, ds: vec![] };
        validator_on(anchors, Arc::new(Mutex::new(served))).await
    }

    /// A validator with `anchors`, whose upstream answers from `served`,
    /// which the test may change as it goes.
    async fn validator_on(anchors: AnchorSet, served: Arc<Mutex<Served>>) -> (Validator, Arc<AtomicUsize>) {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let asked = Arc::new(AtomicUsize::new(0));
        let counted = asked.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok((len, from)) = socket.recv_from(&mut buf).await {
                let Ok(q) = Message::from_vec(&buf[..len]) else { continue };
                counted.fetch_add(1, Ordering::SeqCst);
                let mut r = Message::response(q.metadata.id, q.metadata.op_code);
                r.add_queries(q.queries.clone());
                let records = q.queries.first().and_then(|q| served.lock().unwrap().get(&(q.name().to_lowercase(), q.query_type())).cloned());
                match records {
                    // Denial records (and their RRSIGs) go in the
                    // authority section unless asked for.
                    Some(records) => {
                        let qtype = q.queries[0].query_type();
                        for record in records {
                            let rtype = match &record.data {
                                RData::DNSSEC(DNSSECRData::RRSIG(sig)) => sig.input().type_covered,
                                _ => record.record_type(),
                            };
                            if rtype != qtype && matches!(rtype, RecordType::NSEC | RecordType::NSEC3 | RecordType::SOA) {
                                r.add_authority(record);
                            } else {
                                r.add_answer(record);
                            }
                        }
                    }
                    None => r.metadata.response_code = ResponseCode::ServFail,
                }
                let _ = socket.send_to(&r.to_vec().unwrap(), from).await;
            }
        });
        let metrics = Metrics::new();
        let tel = Arc::new(super::super::Telemetry {
            log: Arc::new(crate::verdict::VerdictLog::to_writer(Box::new(io::sink()))),
            metrics: metrics.clone(),
            allow_sample: 0.0,
        });
        let spoof = crate::config::SpoofConfig { threshold: 10, window_s: 60, tcp_cooldown_s: 300 };
        let upstreams = Upstreams::new(&[crate::config::Upstream::Plain(addr)], &[addr], None, spoof, Duration::from_secs(2), false, tel);
        (Validator::new(Arc::new(upstreams), anchors, &metrics), asked)
    }

    /// The second opinion on `msg`, given hickory's verdict `full`.
    async fn opinion(validator: &Validator, msg: &Message, full: Security) -> Security {
        let chain = validator.chain().await.expect("a DNSKEY anchor needs no fetch");
        validator.second_opinion(&chain, &msg.queries[0], msg, full).await
    }

    #[tokio::test]
    async fn the_second_opinion_overrules_a_secure_whose_signature_does_not_verify() {
        let root = Zone::new(".");
        let (validator, asked) = validator_for(&root, served_root(&root)).await;
        let genuine = a("www.example.", 1);
        let real = signed(&root, vec![genuine.clone()]);
        let sig = real[1].clone();

        // What hickory's collision-prone cache could call secure: the
        // genuine signature over other data. Bogus, whatever hickory says.
        let (_, forged) = answer("www.example.", vec![a("www.example.", 66), sig.clone()], vec![]);
        match opinion(&validator, &forged, Security::Secure).await {
            Security::Bogus(b) => assert_eq!(b.reason, "bad-signature", "{b:?}"),
            other => panic!("a forged RRset passed as {other:?}"),
        }
        // The genuine data under the same signature is secure.
        let (_, real) = answer("www.example.", real, vec![]);
        assert_eq!(opinion(&validator, &real, Security::Secure).await, Security::Secure);
        // Only a "secure" is looked at again: other verdicts stand as given.
        assert_eq!(opinion(&validator, &forged, Security::Insecure).await, Security::Insecure);
        let indeterminate = Security::Indeterminate("no answer".into());
        assert_eq!(opinion(&validator, &forged, indeterminate.clone()).await, indeterminate);
        // Signatures by more than MAX_SIGNERS ancestors: bogus before any check.
        let junk: Vec<Record> =
            ["example.", "www.example."].into_iter().map(|signer| signed(&Zone::new(signer), vec![genuine.clone()])[1].clone()).collect();
        let (_, crowded) = answer("www.example.", [vec![genuine.clone(), sig], junk].concat(), vec![]);
        assert!(matches!(opinion(&validator, &crowded, Security::Secure).await, Security::Bogus(_)));

        // A stale copy of the keys (a rollover since they were taken) is
        // dropped and taken again before a no.
        let stale: Arc<[DNSKEY]> = Zone::new(".").keys().into();
        validator.zone_keys.lock().unwrap().insert(Name::root(), (Instant::now() + SUB_CACHE_MAX_TTL, stale));
        assert_eq!(opinion(&validator, &real, Security::Secure).await, Security::Secure);
        let kept = validator.zone_keys.lock().unwrap().get(&Name::root()).map(|(_, k)| k.to_vec());
        assert_eq!(kept, Some(root.keys()), "the proven keys replace the stale ones");
        // The root's keys came from the upstream once: later looks reuse them.
        assert_eq!(asked.load(Ordering::SeqCst), 1);
    }

    /// A root (the anchor) delegating example. with a DS; `keys`: the
    /// DNSKEY set example. serves, signed by `signer`.
    fn served_example(root: &Zone, example: &Zone, keys: &Zone, signer: &Zone) -> Served {
        let mut served = served_root(root);
        served.insert((n("example."), RecordType::DS), signed(root, vec![ds_of(example)]));
        let mut set = dnskey_set(keys);
        set.iter_mut().for_each(|r| r.name = n("example."));
        served.insert((n("example."), RecordType::DNSKEY), signed(signer, set));
        served
    }

    #[tokio::test]
    async fn zone_keys_are_proven_here_from_the_anchor_through_the_parents_ds() {
        let (root, example) = (Zone::new("."), Zone::new("example."));
        let answer_of = |signer: &Zone| answer("www.example.", signed(signer, vec![a("www.example.", 1)]), vec![]).1;

        // The genuine chain: root anchor, the root's DS for example., its keys.
        let (validator, _) = validator_for(&root, served_example(&root, &example, &example, &example)).await;
        let chain = validator.chain().await.unwrap();
        assert_eq!(validator.zone_keys(&chain.anchors, &n("example.")).await.to_vec(), example.keys());
        assert_eq!(opinion(&validator, &answer_of(&example), Security::Secure).await, Security::Secure);

        // Keys the parent's DS does not cover, however well they sign their
        // own set, prove nothing: what a collision in hickory's cache of
        // DNSKEY proofs would hand the shortcut and the second opinion.
        let evil = Zone::new("example.");
        let (validator, _) = validator_for(&root, served_example(&root, &example, &evil, &evil)).await;
        let chain = validator.chain().await.unwrap();
        assert!(validator.zone_keys(&chain.anchors, &n("example.")).await.is_empty());
        assert!(matches!(opinion(&validator, &answer_of(&evil), Security::Secure).await, Security::Bogus(_)));

        // A DS set not signed by the root's proven keys covers nothing.
        let other_root = Zone::new(".");
        let mut served = served_example(&root, &evil, &evil, &evil);
        served.insert((n("example."), RecordType::DS), signed(&other_root, vec![ds_of(&evil)]));
        let (validator, _) = validator_for(&root, served).await;
        let chain = validator.chain().await.unwrap();
        assert!(validator.zone_keys(&chain.anchors, &n("example.")).await.is_empty());

        // A parent whose walk failed a moment ago (a lost datagram) is
        // walked again before the second opinion says no.
        let (validator, _) = validator_for(&root, served_example(&root, &example, &example, &example)).await;
        validator.no_keys.lock().unwrap().insert(Name::root(), Instant::now() + NO_KEYS_RETRY);
        assert_eq!(opinion(&validator, &answer_of(&example), Security::Secure).await, Security::Secure);

        // An insecure delegation (no DS) has no keys to prove an answer with.
        let mut served = served_example(&root, &example, &example, &example);
        served.remove(&(n("example."), RecordType::DS));
        let (validator, _) = validator_for(&root, served).await;
        let chain = validator.chain().await.unwrap();
        assert!(validator.zone_keys(&chain.anchors, &n("example.")).await.is_empty());
    }

    /// example.'s DNSKEY set of `keys` (renamed to example.), signed by
    /// `signer`, with `junk` RRSIGs by other keys ahead of the signature.
    fn example_keys(keys: &[&Zone], signer: &Zone, junk: usize) -> Vec<Record> {
        let mut set: Vec<Record> = keys.iter().flat_map(|z| dnskey_set(z)).collect();
        set.iter_mut().for_each(|r| r.name = n("example."));
        let mut records = signed(signer, set.clone());
        let sig = records.pop().unwrap();
        for _ in 0..junk {
            records.push(signed(&Zone::new("example."), set.clone()).pop().unwrap());
        }
        records.push(sig);
        records
    }

    #[tokio::test]
    async fn records_of_another_class_ride_along_with_no_verified_set() {
        // The genuine signed sets, with a CH key (and a CH DS for it) added:
        // no IN signature covers them, so they must not become keys.
        let (root, example, evil) = (Zone::new("."), Zone::new("example."), Zone::new("example."));
        let mut served = served_example(&root, &example, &example, &example);
        let ch = |mut r: Record| {
            r.dns_class = DNSClass::CH;
            r
        };
        let mut root_keys = served[&(Name::root(), RecordType::DNSKEY)].clone();
        root_keys.push(ch(dnskey_set(&Zone::new("."))[0].clone()));
        served.insert((Name::root(), RecordType::DNSKEY), root_keys);
        let mut ds = served[&(n("example."), RecordType::DS)].clone();
        ds.push(ch(ds_of(&evil)));
        served.insert((n("example."), RecordType::DS), ds);
        let mut keys = served[&(n("example."), RecordType::DNSKEY)].clone();
        keys.push(ch(dnskey_set(&evil)[0].clone()));
        served.insert((n("example."), RecordType::DNSKEY), keys);

        let (validator, _) = validator_for(&root, served.clone()).await;
        let chain = validator.chain().await.unwrap();
        assert_eq!(validator.zone_keys(&chain.anchors, &Name::root()).await.to_vec(), root.keys());
        assert_eq!(validator.zone_keys(&chain.anchors, &n("example.")).await.to_vec(), example.keys());

        // The evil key set alone, signed by itself: only the CH DS covers it.
        served.insert((n("example."), RecordType::DNSKEY), example_keys(&[&evil], &evil, 0));
        let (validator, _) = validator_for(&root, served).await;
        let chain = validator.chain().await.unwrap();
        assert!(validator.zone_keys(&chain.anchors, &n("example.")).await.is_empty());
    }

    #[tokio::test]
    async fn a_zone_signing_key_set_signed_by_its_ds_covered_key_signs_answers() {
        // A KSK (the DS covers it) signs the key set, and a ZSK the data; the
        // set also carries signatures by other keys of the zone (an
        // algorithm rollover) ahead of the KSK's.
        let (root, ksk, zsk) = (Zone::new("."), Zone::new("example."), Zone::with_flags("example.", 256));
        let mut served = served_root(&root);
        served.insert((n("example."), RecordType::DS), signed(&root, vec![ds_of(&ksk)]));
        served.insert((n("example."), RecordType::DNSKEY), example_keys(&[&ksk, &zsk], &ksk, 6));
        let (validator, _) = validator_for(&root, served).await;
        let chain = validator.chain().await.unwrap();
        assert_eq!(validator.zone_keys(&chain.anchors, &n("example.")).await.to_vec(), [ksk.keys(), zsk.keys()].concat());
        let (_, by_zsk) = answer("www.example.", signed(&zsk, vec![a("www.example.", 1)]), vec![]);
        assert_eq!(opinion(&validator, &by_zsk, Security::Secure).await, Security::Secure);
    }

    #[tokio::test]
    async fn a_zone_whose_anchor_no_longer_signs_is_proven_through_its_parent() {
        // A private anchor for example. whose key is still published but no
        // longer signs the set (a rollover): hickory takes the DS path, and
        // so must we. A set made only of anchored keys is trusted as is.
        let (root, old, new) = (Zone::new("."), Zone::new("example."), Zone::new("example."));
        let mut served = served_root(&root);
        served.insert((n("example."), RecordType::DS), signed(&root, vec![ds_of(&new)]));
        served.insert((n("example."), RecordType::DNSKEY), example_keys(&[&old, &new], &new, 0));
        let anchors = vec![(Name::root(), root.keys()[0].clone()), (n("example."), old.keys()[0].clone())];
        let (validator, _) = validator_with(anchors, served.clone()).await;
        let chain = validator.chain().await.unwrap();
        assert_eq!(validator.zone_keys(&chain.anchors, &n("example.")).await.to_vec(), [old.keys(), new.keys()].concat());

        // Without the DS, an unanchored key beside the anchored one proves
        // nothing: the anchor must sign.
        served.remove(&(n("example."), RecordType::DS));
        let anchors = || vec![(Name::root(), root.keys()[0].clone()), (n("example."), old.keys()[0].clone())];
        let (validator, _) = validator_with(anchors(), served.clone()).await;
        let chain = validator.chain().await.unwrap();
        assert!(validator.zone_keys(&chain.anchors, &n("example.")).await.is_empty());

        served.insert((n("example."), RecordType::DNSKEY), example_keys(&[&old], &new, 0));
        let (validator, _) = validator_with(anchors(), served).await;
        let chain = validator.chain().await.unwrap();
        assert_eq!(validator.zone_keys(&chain.anchors, &n("example.")).await.to_vec(), old.keys());
    }

    #[tokio::test]
    async fn a_walk_out_of_budget_learns_nothing_about_the_zones_it_passes() {
        let (root, example) = (Zone::new("."), Zone::new("example."));
        let (validator, _) = validator_for(&root, served_example(&root, &example, &example, &example)).await;
        let chain = validator.chain().await.unwrap();
        // Room for example. but not for the root above it.
        let walk = Walk { zones_left: AtomicUsize::new(1) };
        assert!(matches!(validator.proven_keys(&chain.anchors, &n("example."), &walk, 0).await, Walked::OutOfBudget));
        assert!(validator.no_keys.lock().unwrap().is_empty(), "a budget cut is no failure of the zone");
        // The next query's walk proves it.
        assert_eq!(validator.zone_keys(&chain.anchors, &n("example.")).await.to_vec(), example.keys());
    }

    #[tokio::test]
    async fn a_ds_anchor_whose_keys_could_not_be_fetched_is_tried_again() {
        // The anchor file holds the old root key as a DNSKEY and the new one
        // as a DS. The root's key set cannot be fetched at first: the chain
        // starts with the DNSKEY anchor alone, and takes the DS anchor's key
        // in once the set can be fetched.
        let (old, new) = (Zone::new("."), Zone::new("."));
        let served = Arc::new(Mutex::new(Served::new()));
        let ds = match ds_of(&new).data {
            RData::DNSSEC(DNSSECRData::DS(ds)) => ds,
            _ => unreachable!(),
        };
        let anchors = AnchorSet {
            source: Some(PathBuf::from("root.key")),
            dnskeys: vec![(Name::root(), old.keys()[0].clone())],
            ds: vec![(Name::root(), ds)],
        };
        let (validator, _) = validator_on(anchors, served.clone()).await;
        let trusts = |chain: &Chain, zone: &Zone| chain.anchors.contains(zone.keys()[0].public_key());

        let first = validator.chain().await.unwrap();
        assert!(trusts(&first, &old) && !trusts(&first, &new));
        assert!(first.retry_at.is_some());
        // Before the retry time, the same chain.
        assert!(Arc::ptr_eq(&first, &validator.chain().await.unwrap()));

        let set = [dnskey_set(&old), dnskey_set(&new)].concat();
        served.lock().unwrap().insert((Name::root(), RecordType::DNSKEY), signed(&new, set));
        let due = first.kept(Some(Instant::now()));
        *validator.chain.write().unwrap() = Some(Arc::new(due));
        let second = validator.chain().await.unwrap();
        assert!(trusts(&second, &old) && trusts(&second, &new), "the DS anchor's key is in");
        assert_eq!(second.retry_at, None, "nothing left to retry");
    }

    #[tokio::test]
    async fn queries_that_waited_on_a_failed_first_build_share_its_failure() {
        // A DS anchor whose keys the upstream cannot serve (SERVFAIL), and
        // five queries at once: one fetch, five failures, not five fetches
        // in turn (each a timeout, when the upstream is down).
        let root = Zone::new(".");
        let ds = match ds_of(&root).data {
            RData::DNSSEC(DNSSECRData::DS(ds)) => ds,
            _ => unreachable!(),
        };
        let anchors = AnchorSet { source: Some(PathBuf::from("root.key")), dnskeys: vec![], ds: vec![(Name::root(), ds)] };
        let (validator, asked) = validator_on(anchors, Arc::new(Mutex::new(Served::new()))).await;
        let results = futures_util::future::join_all((0..5).map(|_| validator.chain())).await;
        assert!(results.iter().all(|r| matches!(r, Err(AnchorFetchError::Unreachable(_)))));
        let one_build = asked.load(Ordering::SeqCst);
        assert!(one_build >= 1);
        // A query after them tries again, once.
        assert!(validator.chain().await.is_err());
        assert_eq!(asked.load(Ordering::SeqCst), 2 * one_build);
    }

    #[tokio::test]
    async fn a_chain_deeper_than_usual_is_proven_in_one_walk() {
        // z1. down to z12.z11. ... z1., each delegated with a DS from its
        // parent: twelve zones, more than any real chain.
        let root = Zone::new(".");
        let mut served = served_root(&root);
        let (mut parent, mut name) = (root, String::new());
        for i in 1..=12 {
            name = format!("z{i}.{name}");
            let zone = Zone::new(&name);
            served.insert((n(&name), RecordType::DS), signed(&parent, vec![ds_of(&zone)]));
            served.insert((n(&name), RecordType::DNSKEY), signed(&zone, dnskey_set(&zone)));
            parent = zone;
        }
        let anchor = served[&(Name::root(), RecordType::DNSKEY)][0].clone();
        let RData::DNSSEC(DNSSECRData::DNSKEY(anchor)) = anchor.data else { unreachable!() };
        let (validator, _) = validator_with(vec![(Name::root(), anchor)], served).await;
        let chain = validator.chain().await.unwrap();
        assert_eq!(validator.zone_keys(&chain.anchors, &n(&name)).await.to_vec(), parent.keys());
    }

    #[tokio::test]
    async fn keys_last_no_longer_than_the_sub_answers_they_came_from() {
        let (root, example) = (Zone::new("."), Zone::new("example."));
        let (validator, _) = validator_for(&root, served_example(&root, &example, &example, &example)).await;
        let chain = validator.chain().await.unwrap();
        let zone = n("example.");
        assert!(!validator.zone_keys(&chain.anchors, &zone).await.is_empty());
        let until = |v: &Validator| v.zone_keys.lock().unwrap()[&zone].0;
        assert!(until(&validator) > Instant::now() + Duration::from_secs(290), "TTL 300 from a fresh answer");
        // The key set has sat in the sub-answer cache: it has 5 s left there.
        let left = Instant::now() + Duration::from_secs(5);
        validator.exchange.cache.map.lock().unwrap().get_mut(&(zone.clone(), RecordType::DNSKEY)).unwrap().0 = left;
        validator.zone_keys.lock().unwrap().clear();
        assert!(!validator.zone_keys(&chain.anchors, &zone).await.is_empty());
        assert!(until(&validator) <= left, "the keys outlive the answer they came from");
    }

    #[tokio::test]
    async fn only_the_failing_rrsets_own_signer_can_make_an_answer_indeterminate() {
        // example.'s keys cannot be had (its DNSKEY query is answered
        // SERVFAIL, and the walk is told it went unanswered).
        let (root, example) = (Zone::new("."), Zone::new("example."));
        let mut served = served_example(&root, &example, &example, &example);
        served.remove(&(n("example."), RecordType::DNSKEY));
        let (validator, _) = validator_for(&root, served).await;
        let judge = |answers: Vec<Record>| {
            let validator = &validator;
            let (_, msg) = answer("www.example.", answers, vec![]);
            SUB_FAILED.scope(RefCell::new(vec![n("example.")]), async move { opinion(validator, &msg, Security::Secure).await })
        };
        let by_example = signed(&example, vec![a("www.example.", 1)]);
        assert_eq!(
            judge(by_example.clone()).await,
            Security::Indeterminate("the DNSKEYs of example. could not be fetched".into())
        );
        // A forgery under the root's proven keys fails first: bogus, whatever
        // else the answer drags in.
        let mut forged = signed(&root, vec![a("alias.example.", 1)]);
        forged[0].data = RData::A(hickory_proto::rr::rdata::A::new(203, 0, 113, 66));
        assert!(matches!(judge([forged, by_example].concat()).await, Security::Bogus(_)));
    }

    #[tokio::test]
    async fn a_ds_anchor_that_fails_first_does_not_sink_the_ones_after_it() {
        // DS anchors only: a private zone's, unreachable, listed before the
        // root's, which works.
        let (root, private) = (Zone::new("."), Zone::new("private."));
        let ds = |z: &Zone| match ds_of(z).data {
            RData::DNSSEC(DNSSECRData::DS(ds)) => (z.name.clone(), ds),
            _ => unreachable!(),
        };
        let anchors = AnchorSet { source: Some(PathBuf::from("root.key")), dnskeys: vec![], ds: vec![ds(&private), ds(&root)] };
        let (validator, _) = validator_on(anchors, Arc::new(Mutex::new(served_root(&root)))).await;
        let chain = validator.chain().await.expect("the root's DS anchor works");
        assert!(chain.anchors.contains(root.keys()[0].public_key()));
        assert!(chain.retry_at.is_some(), "the private anchor is tried again later");
    }

    #[test]
    fn sub_answers_too_big_to_be_keys_are_not_kept() {
        let cache = SubCache::default();
        let key = (n("big.example."), RecordType::DNSKEY);
        let mut m = Message::response(1, hickory_proto::op::OpCode::Query);
        m.add_answer(Record::from_rdata(n("big.example."), 300, RData::A(hickory_proto::rr::rdata::A::new(192, 0, 2, 1))));
        assert!(cache.put(key.clone(), &DnsResponse::from_message(m.clone()).unwrap()).is_some());
        for i in 0..2000u32 {
            let [_, _, x, y] = i.to_be_bytes();
            m.add_answer(Record::from_rdata(n("big.example."), 300, RData::A(hickory_proto::rr::rdata::A::new(192, 0, x, y))));
        }
        let big = DnsResponse::from_message(m).unwrap();
        assert!(big.as_buffer().len() > SUB_CACHE_MAX_BYTES);
        let other = (n("other.example."), RecordType::DNSKEY);
        assert_eq!(cache.put(other.clone(), &big), None);
        assert!(cache.get(&other).is_none());
    }

    // -----------------------------------------------------------------------
    // The proof ledger against a real collision in hickory's cache key
    // -----------------------------------------------------------------------

    /// Two AAAA RRsets with one hickory cache key under the query for
    /// `www.example. AAAA`, found with `cargo run --release --example
    /// proof_key_collision` (2 minutes here): an address in an insecure
    /// zone an attacker could own, and a forged address for the signed name.
    const COLLIDING: [(&str, &str); 2] = [
        ("x.insecure.example.", "2001:db8:1:0:c0c3:e3f9:c603:77b8"),
        ("www.example.", "2001:db8:666:0:7f6b:5f1a:b7cf:290b"),
    ];

    fn aaaa(owner: &str, ip: &str) -> Record {
        Record::from_rdata(n(owner), 300, RData::AAAA(hickory_proto::rr::rdata::AAAA(ip.parse().unwrap())))
    }

    /// The upstream's answer to `www.example. AAAA` holding `records`.
    fn aaaa_answer(records: Vec<Record>) -> (Query, Message) {
        let query = Query::query(n("www.example."), RecordType::AAAA);
        let mut msg = Message::response(7, hickory_proto::op::OpCode::Query);
        msg.add_query(query.clone());
        msg.add_answers(records);
        (query, msg)
    }

    /// `example.` signed under the root, with `insecure.example.` an
    /// unsigned delegation (a signed NSEC at it without DS): the chain
    /// hickory walks to call `x.insecure.example.` insecure and an
    /// unsigned `www.example.` bogus.
    fn served_with_insecure_child(root: &Zone, example: &Zone) -> Served {
        let ns = |owner: &str, host: &str| Record::from_rdata(n(owner), 300, RData::NS(hickory_proto::rr::rdata::NS(n(host))));
        let nsec = Record::from_rdata(
            n("insecure.example."),
            300,
            RData::DNSSEC(DNSSECRData::NSEC(NSEC::new(n("www.example."), [RecordType::NS, RecordType::RRSIG, RecordType::NSEC]))),
        );
        let mut served = served_example(root, example, example, example);
        served.insert((n("example."), RecordType::NS), vec![ns("example.", "ns.example.")]);
        served.insert((n("insecure.example."), RecordType::NS), vec![ns("insecure.example.", "ns.insecure.example.")]);
        served.insert((n("insecure.example."), RecordType::DS), signed(example, vec![nsec]));
        for name in ["x.insecure.example.", "www.example."] {
            served.insert((n(name), RecordType::NS), vec![]);
        }
        served
    }

    /// `served_with_insecure_child`, and `host`, a signed child of
    /// `example` with its DS there.
    fn served_with_signed_child(root: &Zone, example: &Zone, host: &Zone) -> Served {
        let mut served = served_with_insecure_child(root, example);
        served.insert((host.name.clone(), RecordType::DS), signed(example, vec![ds_of(host)]));
        served.insert((host.name.clone(), RecordType::DNSKEY), signed(host, dnskey_set(host)));
        served
    }

    /// The two answers of the attack: `www.example.` a signed CNAME into
    /// the insecure zone, to the attacker's address there (any answer to
    /// the query that holds that RRset would do; this one is also
    /// genuine), then the forgery.
    fn colliding_answers(example: &Zone) -> [(Query, Message); 2] {
        let (x, y) = (aaaa(COLLIDING[0].0, COLLIDING[0].1), aaaa(COLLIDING[1].0, COLLIDING[1].1));
        let cname = Record::from_rdata(n("www.example."), 300, RData::CNAME(hickory_proto::rr::rdata::CNAME(n(COLLIDING[0].0))));
        [aaaa_answer([signed(example, vec![cname]), vec![x]].concat()), aaaa_answer(vec![y])]
    }

    /// hickory's own proofs of the AAAA records in `msg`, through `handle`.
    async fn hickory_verdict(handle: &DnssecDnsHandle<Exchange>, query: &Query, msg: &Message) -> Vec<Proof> {
        let request = DnsRequest::from_query(query.clone(), DnsRequestOptions::default());
        let stream = SEED.sync_scope(Cell::new(Some(msg.clone())), || handle.send(request));
        let resp = stream.first_answer().await.expect("hickory answers");
        resp.answers.iter().filter(|r| r.record_type() == RecordType::AAAA).map(|r| r.proof).collect()
    }

    /// The lab's pair (integration/test_forwarder.py, COLLIDING), under the
    /// query `www.signed.lab. AAAA`.
    const LAB_COLLIDING: [(&str, &str); 2] = [
        ("x.unsigned.lab.", "2001:db8:1:0:84b2:c11d:458c:957c"),
        ("www.signed.lab.", "2001:db8:666:0:beaa:5f14:2b5b:2709"),
    ];

    #[test]
    fn the_fixture_pairs_share_one_hickory_key_and_nothing_else_does() {
        let key = |qname: &str, (owner, ip): (&str, &str)| {
            let query = Query::query(n(qname), RecordType::AAAA);
            super::super::proof_ledger::hickory_key(&query, &[aaaa(owner, ip)], &n(owner), RecordType::AAAA)
        };
        assert_eq!(key("www.example.", COLLIDING[0]), key("www.example.", COLLIDING[1]));
        assert_ne!(key("www.example.", COLLIDING[0]), key("www.example.", ("x.insecure.example.", "2001:db8:1:0:c0c3:e3f9:c603:77b9")));
        assert_ne!(key("www.example.", COLLIDING[1]), key("www.example.", ("www.example.", "2001:db8:666:0:7f6b:5f1a:b7cf:290a")));
        assert_eq!(key("www.signed.lab.", LAB_COLLIDING[0]), key("www.signed.lab.", LAB_COLLIDING[1]));
        // The query is part of the key: the unit tests' pair does not collide under the lab's.
        assert_ne!(key("www.signed.lab.", COLLIDING[0]), key("www.signed.lab.", COLLIDING[1]));
    }

    #[tokio::test]
    async fn hickory_alone_serves_the_insecure_proof_of_one_rrset_for_the_forgery_that_collides_with_it() {
        let (root, example) = (Zone::new("."), Zone::new("example."));
        let (validator, _) = validator_for(&root, served_with_insecure_child(&root, &example)).await;
        let anchors = validator.chain().await.unwrap().anchors.clone();
        let [x, y] = colliding_answers(&example);

        // On its own, the forgery is what it is: unsigned in a signed zone.
        let fresh = DnssecDnsHandle::with_trust_anchor(validator.exchange.clone(), anchors.clone());
        assert_eq!(hickory_verdict(&fresh, &y.0, &y.1).await, [Proof::Bogus]);

        // After the attacker's insecure RRset, the same forgery is insecure:
        // hickory's cache found the first RRset's proof under its key. This
        // pins `proof_ledger::cache_key` to hickory's own key.
        let fooled = DnssecDnsHandle::with_trust_anchor(validator.exchange.clone(), anchors);
        assert_eq!(hickory_verdict(&fooled, &x.0, &x.1).await, [Proof::Insecure]);
        assert_eq!(hickory_verdict(&fooled, &y.0, &y.1).await, [Proof::Insecure]);
    }

    #[tokio::test]
    async fn the_ledger_makes_the_colliding_forgery_bogus_and_leaves_the_first_rrset_alone() {
        let (root, example) = (Zone::new("."), Zone::new("example."));
        let (validator, _) = validator_for(&root, served_with_insecure_child(&root, &example)).await;
        let [x, y] = colliding_answers(&example);

        assert_eq!(validator.validate(&x.0, &x.1).await, Security::Insecure);
        match validator.validate(&y.0, &y.1).await {
            Security::Bogus(b) => {
                assert_eq!(b.reason, "proof-cache-collision");
                assert!(b.detail.contains("AAAA RRset at www.example."), "{}", b.detail);
            }
            other => panic!("the forgery passed as {other:?}"),
        }
        assert_eq!(validator.validate(&x.0, &x.1).await, Security::Insecure);
        // A forgery that collides with nothing is judged on its own.
        let other = aaaa_answer(vec![aaaa("www.example.", "2001:db8:666::1")]);
        assert!(matches!(validator.validate(&other.0, &other.1).await, Security::Bogus(Bogus { reason: "bad-signature", .. })));
    }

    #[test]
    fn a_refused_message_leaves_nothing_in_the_ledger() {
        let ledger = ProofLedger::new();
        let [x, y] = COLLIDING.map(|(owner, ip)| aaaa(owner, ip));
        let (query, both) = aaaa_answer(vec![x.clone(), y.clone()]);
        let collision = ledger.check(&query, &both).unwrap_err();
        assert_eq!((collision.owner, collision.rtype), (n("www.example."), RecordType::AAAA));
        // Neither was recorded: the forgery alone is new, and then the
        // other is the collision.
        assert_eq!(ledger.check(&query, &aaaa_answer(vec![y]).1), Ok(()));
        assert_eq!(ledger.check(&query, &aaaa_answer(vec![x]).1).unwrap_err().owner, n(COLLIDING[0].0));
    }

    #[tokio::test]
    async fn both_rrsets_in_one_answer_are_refused() {
        let (root, example) = (Zone::new("."), Zone::new("example."));
        let (validator, _) = validator_for(&root, served_with_insecure_child(&root, &example)).await;
        let both = aaaa_answer(COLLIDING.map(|(owner, ip)| aaaa(owner, ip)).to_vec());
        assert!(matches!(validator.validate(&both.0, &both.1).await, Security::Bogus(Bogus { reason: "proof-cache-collision", .. })));
    }

    #[tokio::test]
    async fn a_full_ledger_starts_hickorys_cache_over_with_a_new_one() {
        let (root, example) = (Zone::new("."), Zone::new("example."));
        let (mut validator, _) = validator_for(&root, served_with_insecure_child(&root, &example)).await;
        validator.ledger_capacity = 1;
        let [x, y] = colliding_answers(&example);

        let first = validator.chain().await.unwrap();
        assert_eq!(validator.validate(&x.0, &x.1).await, Security::Insecure);
        assert!(first.ledger.is_full());
        let second = validator.chain().await.unwrap();
        assert!(!Arc::ptr_eq(&first, &second), "a full ledger gets a new handle");
        assert!(!second.ledger.is_full());
        assert_eq!(validator.renewals.get(), 1);
        // The new handle's cache does not hold the first RRset's proof, so
        // the forgery is judged on its own, not as a collision.
        assert!(matches!(validator.validate(&y.0, &y.1).await, Security::Bogus(Bogus { reason: "bad-signature", .. })));
    }

    /// RFC 6672 §5.3.3: the CNAME a server synthesizes from a signed DNAME
    /// is unsigned, and proven by the DNAME. hickory alone calls it bogus.
    #[tokio::test]
    async fn a_cname_synthesized_from_a_signed_dname_is_secure_and_nothing_else_rides_on_it() {
        let (root, example) = (Zone::new("."), Zone::new("example."));
        let (validator, _) = validator_for(&root, served_example(&root, &example, &example, &example)).await;
        let dname = signed(&example, vec![dname_record("old.example.", "new.example.", 300)]);
        let target = signed(&example, vec![a("www.new.example.", 1)]);
        let with = |synthesis: Record, target: Vec<Record>| {
            response("www.old.example.", RecordType::A, [dname.clone(), vec![synthesis], target].concat(), vec![])
        };

        let genuine = with(cname("www.old.example.", "www.new.example.", 300), target.clone());
        assert_eq!(validator.validate(&genuine.0, &genuine.1).await, Security::Secure);
        // hickory on its own judges the unsigned CNAME, and fails it.
        let chain = validator.chain().await.unwrap();
        let request = DnsRequest::from_query(genuine.0.clone(), DnsRequestOptions::default());
        let stream = SEED.sync_scope(Cell::new(Some(genuine.1.clone())), || chain.handle.send(request));
        assert!(matches!(classify(&genuine.0, stream.first_answer().await), Security::Bogus(_)));

        // A CNAME the DNAME does not imply is judged as itself: unsigned in a signed zone.
        let elsewhere = with(cname("www.old.example.", "www.evil.example.", 300), signed(&example, vec![a("www.evil.example.", 66)]));
        assert!(matches!(validator.validate(&elsewhere.0, &elsewhere.1).await, Security::Bogus(_)));
        // The synthesis proves the mapping, not the data at its target.
        let forged_target = with(cname("www.old.example.", "www.new.example.", 300), vec![a("www.new.example.", 66), target[1].clone()]);
        assert!(matches!(validator.validate(&forged_target.0, &forged_target.1).await, Security::Bogus(_)));
        // A DNAME without its signature proves nothing.
        let (query, mut unsigned) = genuine.clone();
        unsigned.answers.remove(1);
        assert!(matches!(validator.validate(&query, &unsigned).await, Security::Bogus(_)));
    }

    /// A forged CNAME or DNAME into an unsigned zone, under a signature
    /// that does not verify, beside a genuine NSEC of the signed zone: the
    /// first look fails the denial, and the look at the end (whose zone is
    /// provably unsigned, and which no NSEC of example. speaks for) must
    /// not make the forgery insecure.
    #[tokio::test]
    async fn a_forged_signed_redirection_beside_a_genuine_nsec_is_bogus() {
        let (root, example) = (Zone::new("."), Zone::new("example."));
        // evil., an unsigned zone under the root: the NSEC at its cut has no DS.
        let mut served = served_with_insecure_child(&root, &example);
        let cut = nsec_record("evil.", "example.", &[RecordType::NS, RecordType::RRSIG, RecordType::NSEC]);
        served.insert((n("evil."), RecordType::DS), signed(&root, vec![cut]));
        served.insert((n("evil."), RecordType::NS), vec![Record::from_rdata(n("evil."), 300, RData::NS(hickory_proto::rr::rdata::NS(n("ns.evil."))))]);
        served.insert((n("www.evil."), RecordType::NS), vec![]);
        let (validator, _) = validator_for(&root, served).await;
        let nsec = signed(&example, vec![nsec_record("example.", "zzz.example.", &[RecordType::SOA, RecordType::NS])]);
        let retarget = |mut records: Vec<Record>, data: RData| {
            records[0].data = data;
            records
        };
        let target = |name: &str| RData::CNAME(hickory_proto::rr::rdata::CNAME(n(name)));
        let forged = retarget(signed_cname(&example, "www.example.", "target.example.", 2), target("www.evil."));
        let (q, m) = response("www.example.", RecordType::A, forged, nsec.clone());
        let v = validator.validate(&q, &m).await;
        assert!(matches!(&v, Security::Bogus(_)), "a forged CNAME passed as {v:?}");

        let dname = signed(&example, vec![dname_record("old.example.", "new.example.", 300)]);
        let forged = retarget(dname, dname_record("old.example.", "evil.", 300).data);
        let answers = [forged, vec![cname("www.old.example.", "www.evil.", 300)]].concat();
        let (q, m) = response("www.old.example.", RecordType::A, answers, nsec);
        let v = validator.validate(&q, &m).await;
        assert!(matches!(&v, Security::Bogus(_)), "a forged DNAME passed as {v:?}");
    }

    /// A DNAME into a name with nothing of the type asked, in an NSEC3
    /// zone: hickory's NSEC3 check fails a proven NODATA when anything rides
    /// in the answer section, here the DNAME.
    #[tokio::test]
    async fn a_dname_into_an_nsec3_nodata_is_secure() {
        let (root, example) = (Zone::new("."), Zone::new("example."));
        let (validator, _) = validator_for(&root, served_example(&root, &example, &example, &example)).await;
        let chain = nsec3_chain(&example, &["example.", "old.example.", "www.new.example.", "new.example."], 0);
        let answers = [signed(&example, vec![dname_record("old.example.", "new.example.", 300)]), vec![cname("www.old.example.", "www.new.example.", 300)]].concat();
        let (q, m) = response("www.old.example.", RecordType::AAAA, answers, matching(&chain, "www.new.example.", 0));
        assert_eq!(validator.validate(&q, &m).await, Security::Secure);
        // Only a DNAME rides with such a denial: a genuine A beside the
        // AAAA's NODATA is no answer any server sends.
        let (q, m) = response("www.new.example.", RecordType::AAAA, signed(&example, vec![a("www.new.example.", 1)]), matching(&chain, "www.new.example.", 0));
        let v = validator.validate(&q, &m).await;
        assert!(matches!(&v, Security::Bogus(_)), "{v:?}");
    }

    /// hickory 0.26.3 calls a denial insecure when its NSEC3 records take
    /// more iterations than its soft limit (RFC 9276 §3.2), before it
    /// looks at what they deny, and `classify` took that for the verdict on
    /// the whole answer. An attacker's genuine NSEC3 (a signed zone of their
    /// own, 150 iterations) at the end of a forged CNAME kept the forgery
    /// from being bogus.
    #[tokio::test]
    async fn a_high_iteration_nsec3_does_not_make_a_forged_rrset_insecure() {
        use hickory_proto::dnssec::{rdata::NSEC3, Nsec3HashAlgorithm};
        let (root, example, evil) = (Zone::new("."), Zone::new("example."), Zone::new("evil."));
        let (validator, _) = validator_for(&root, served_beside(&root, &example, &evil)).await;
        let nsec3 = NSEC3::new(Nsec3HashAlgorithm::SHA1, false, 150, vec![0xab], vec![0xff; 20], [RecordType::A, RecordType::RRSIG]);
        let owner = n("0p9mhaveqvm6t7vbl5lop2u3t2rp3tom.evil.");
        let denial = signed(&evil, vec![Record::from_rdata(owner, 300, RData::DNSSEC(DNSSECRData::NSEC3(nsec3)))]);
        let forged = Record::from_rdata(n("www.example."), 300, RData::CNAME(hickory_proto::rr::rdata::CNAME(n("www.evil."))));
        let message = |answers: Vec<Record>| response("www.example.", RecordType::A, answers, denial.clone());
        let (query, msg) = message(vec![forged]);
        match validator.validate(&query, &msg).await {
            Security::Bogus(b) => assert_eq!(b.reason, "bad-signature", "{b:?}"),
            other => panic!("a forged CNAME beside a high-iteration NSEC3 passed as {other:?}"),
        }
        // The same denial under a genuine signed CNAME is what RFC 9276 says: insecure.
        let genuine = signed(&example, vec![Record::from_rdata(n("www.example."), 300, RData::CNAME(hickory_proto::rr::rdata::CNAME(n("www.evil."))))]);
        let (query, msg) = message(genuine);
        assert_eq!(validator.validate(&query, &msg).await, Security::Insecure);
    }

    /// An upstream that drops the target's data from a genuine answer (a
    /// signed CNAME) leaves a denial of the target that nothing proves:
    /// bogus in a signed zone, insecure in an insecure one, never secure.
    #[tokio::test]
    async fn a_signed_cname_into_nothing_is_judged_as_a_denial_of_its_target() {
        let (root, example) = (Zone::new("."), Zone::new("example."));
        let (validator, _) = validator_for(&root, served_with_insecure_child(&root, &example)).await;
        let cname_to = |target: &str| {
            signed(&example, vec![Record::from_rdata(n("www.example."), 300, RData::CNAME(hickory_proto::rr::rdata::CNAME(n(target))))])
        };
        let answer_of = |records: Vec<Record>| response("www.example.", RecordType::A, records, vec![]);
        // The whole answer: secure.
        let whole = answer_of([cname_to("target.example."), signed(&example, vec![a("target.example.", 1)])].concat());
        assert_eq!(validator.validate(&whole.0, &whole.1).await, Security::Secure);
        // Its target's data dropped: the signed zone denies nothing here.
        let dropped = answer_of(cname_to("target.example."));
        match validator.validate(&dropped.0, &dropped.1).await {
            Security::Bogus(b) => assert_eq!(b.reason, "denial-unproven", "{b:?}"),
            other => panic!("a CNAME into nothing passed as {other:?}"),
        }
        // Into the insecure zone, an empty end is all it can be: insecure.
        let insecure = answer_of(cname_to("x.insecure.example."));
        assert_eq!(validator.validate(&insecure.0, &insecure.1).await, Security::Insecure);
        // So is a denial with no NSEC for a name of the insecure zone, even
        // beside a signed record of the zone above (hickory's summary
        // called that secure).
        // An ANY answer: hickory finds no record of type ANY and judges a
        // denial, which the signed records beside nothing fail.
        let mut any = answer_of(signed(&example, vec![a("target.example.", 1)]));
        any.0 = Query::query(n("target.example."), RecordType::ANY);
        any.1.queries = vec![any.0.clone()];
        assert_eq!(validator.validate(&any.0, &any.1).await, Security::Secure);
        for qtype in [RecordType::A, RecordType::ANY] {
            let mut bare = answer_of(vec![]);
            bare.0 = Query::query(n("x.insecure.example."), qtype);
            bare.1.queries = vec![bare.0.clone()];
            bare.1.add_authorities(cname_to("target.example."));
            assert_eq!(validator.validate(&bare.0, &bare.1).await, Security::Insecure, "{qtype}");
        }
    }

    /// `served_example`, and `other`, a second signed zone under the root.
    fn served_beside(root: &Zone, example: &Zone, other: &Zone) -> Served {
        let mut served = served_example(root, example, example, example);
        served.insert((other.name.clone(), RecordType::DS), signed(root, vec![ds_of(other)]));
        served.insert((other.name.clone(), RecordType::DNSKEY), signed(other, dnskey_set(other)));
        served
    }

    /// `zone`'s NSEC3 chain over `names` (no salt), each record signed now.
    fn nsec3_chain(zone: &Zone, names: &[&str], iterations: u16) -> Vec<(Vec<u8>, Vec<Record>)> {
        use hickory_proto::dnssec::{rdata::NSEC3, Nsec3HashAlgorithm};
        let hash = |s: &str| Nsec3HashAlgorithm::SHA1.hash(&[], &n(s), iterations).unwrap().as_ref().to_vec();
        let mut hashes: Vec<Vec<u8>> = names.iter().map(|s| hash(s)).collect();
        hashes.sort();
        (0..hashes.len())
            .map(|i| {
                let next = hashes[(i + 1) % hashes.len()].clone();
                let label = data_encoding::BASE32_DNSSEC.encode(&hashes[i]);
                let owner = n(&label).append_domain(&zone.name).unwrap();
                let nsec3 = NSEC3::new(Nsec3HashAlgorithm::SHA1, false, iterations, vec![], next, [RecordType::A, RecordType::RRSIG]);
                (hashes[i].clone(), signed(zone, vec![Record::from_rdata(owner, 300, RData::DNSSEC(DNSSECRData::NSEC3(nsec3)))]))
            })
            .collect()
    }

    /// The record of `chain` that covers `name`'s hash.
    fn covering(chain: &[(Vec<u8>, Vec<Record>)], name: &str, iterations: u16) -> Vec<Record> {
        let h = hickory_proto::dnssec::Nsec3HashAlgorithm::SHA1.hash(&[], &n(name), iterations).unwrap().as_ref().to_vec();
        let i = chain.iter().rposition(|(owner, _)| *owner < h).unwrap_or(chain.len() - 1);
        chain[i].1.clone()
    }

    fn soa(zone: &str) -> Record {
        let soa = hickory_proto::rr::rdata::SOA::new(n("ns.example."), n("admin.example."), 1, 60, 60, 60, 60);
        Record::from_rdata(n(zone), 300, RData::SOA(soa))
    }

    /// The record of `chain` whose owner is `name`'s hash.
    fn matching(chain: &[(Vec<u8>, Vec<Record>)], name: &str, iterations: u16) -> Vec<Record> {
        let h = hickory_proto::dnssec::Nsec3HashAlgorithm::SHA1.hash(&[], &n(name), iterations).unwrap().as_ref().to_vec();
        chain.iter().find(|(owner, _)| *owner == h).expect("a name of the chain").1.clone()
    }

    fn response(qname: &str, qtype: RecordType, answers: Vec<Record>, authorities: Vec<Record>) -> (Query, Message) {
        let query = Query::query(n(qname), qtype);
        let mut msg = Message::response(7, hickory_proto::op::OpCode::Query);
        msg.add_query(query.clone());
        msg.add_answers(answers);
        msg.add_authorities(authorities);
        (query, msg)
    }

    fn signed_cname(zone: &Zone, owner: &str, target: &str, labels: u8) -> Vec<Record> {
        let record = Record::from_rdata(n(owner), 300, RData::CNAME(hickory_proto::rr::rdata::CNAME(n(target))));
        let now = unix_now();
        let sig = zone.sign_with(std::slice::from_ref(&record), labels, now - 3600, now + 3600);
        vec![record, sig]
    }

    /// Shapes from a review of the chain-end judgement: each is a genuine
    /// signed record set cut or stitched by the upstream, and none may come
    /// back secure.
    #[tokio::test]
    async fn stitched_genuine_records_do_not_make_a_secure_denial() {
        let (root, example) = (Zone::new("."), Zone::new("example."));
        let (validator, _) = validator_for(&root, served_with_insecure_child(&root, &example)).await;
        let is_bogus = |s: &Security, reason: &str| matches!(s, Security::Bogus(b) if b.reason == reason);

        // A wildcard answer's RRSIG kept and its A dropped: hickory read the
        // signature's labels as an expansion and the NSEC3 as its proof.
        let chain = nsec3_chain(&example, &["example.", "www.example."], 0);
        let wild = signed(&example, vec![a("foo.example.", 1)]);
        let mut sig = wild[1].clone();
        sig.data = match &sig.data {
            RData::DNSSEC(DNSSECRData::RRSIG(r)) => {
                let mut input = r.input().clone();
                input.num_labels = 1;
                RData::DNSSEC(DNSSECRData::RRSIG(RRSIG::from_sig(input, r.sig().to_vec())))
            }
            _ => unreachable!(),
        };
        let (q, m) = response("foo.example.", RecordType::A, vec![sig], covering(&chain, "foo.example.", 0));
        let v = validator.validate(&q, &m).await;
        assert!(is_bogus(&v, "orphan-signature"), "{v:?}");

        // NXDOMAIN beside the data asked for.
        let (q, mut m) = response("www.example.", RecordType::A, signed(&example, vec![a("www.example.", 1)]), vec![]);
        m.metadata.response_code = ResponseCode::NXDomain;
        assert!(is_bogus(&validator.validate(&q, &m).await, "denial-unproven"));

        // A genuine CNAME, its target's data dropped, and one NSEC3 that
        // covers the target (as for a name that does not exist) in a
        // NOERROR: a covering record proves no NODATA.
        let chain = nsec3_chain(&example, &["example.", "www.example.", "*.b.example."], 0);
        let (q, m) = response("www.example.", RecordType::A, signed_cname(&example, "www.example.", "a.b.example.", 2), covering(&chain, "a.b.example.", 0));
        let v = validator.validate(&q, &m).await;
        assert!(matches!(v, Security::Bogus(_)), "a cut chain passed as {v:?}");

        // A wildcard's A expansion beside an AAAA question, with the NSEC3
        // that proves the expansion: hickory took the A's signature for the
        // AAAA denial's wildcard and called the AAAA's absence proven.
        let chain = nsec3_chain(&example, &["example.", "*.example."], 0);
        let expanded_a = a("x.example.", 1);
        let sig = expanded_sig(&example, std::slice::from_ref(&expanded_a), 1);
        let (q, m) = response("x.example.", RecordType::AAAA, vec![expanded_a, sig], covering(&chain, "x.example.", 0));
        let v = validator.validate(&q, &m).await;
        assert!(matches!(v, Security::Bogus(_)), "an A expansion denied the AAAA as {v:?}");

        // A wildcard CNAME (the signature of *.example.) for a name that
        // exists, and the target's genuine NODATA (its NSEC3 has no AAAA):
        // the expansion itself is never proven.
        let chain = nsec3_chain(&example, &["example.", "www.example.", "*.example.", "target.example."], 0);
        let (q, m) = response("www.example.", RecordType::AAAA, signed_cname(&example, "www.example.", "target.example.", 1), matching(&chain, "target.example.", 0));
        let v = validator.validate(&q, &m).await;
        assert!(matches!(v, Security::Bogus(_)), "an unproven wildcard CNAME passed as {v:?}");
    }

    /// RFC 4035 §5.4: an NSEC NXDOMAIN denies the wildcard at the closest
    /// encloser, which the covering NSEC shows. hickory 0.26.3 looks for
    /// it no higher than the SOA's owner, and with the SOA dropped no
    /// higher than the name's parent.
    #[tokio::test]
    async fn an_nsec_nxdomain_must_deny_the_wildcard_at_the_closest_encloser() {
        let (root, example) = (Zone::new("."), Zone::new("example."));
        let (validator, _) = validator_for(&root, served_with_insecure_child(&root, &example)).await;
        // example. has *.example. and c.example.: *.example. serves
        // a.b.example. (b.example. does not exist). The NSEC from the
        // wildcard to c.example. covers both a.b.example. and *.b.example.
        let types = [RecordType::A, RecordType::RRSIG, RecordType::NSEC];
        let span = signed(&example, vec![nsec_record("*.example.", "c.example.", &types)]);
        for (with_soa, qtype) in [(false, RecordType::A), (true, RecordType::A), (false, RecordType::ANY)] {
            let soa = if with_soa { signed(&example, vec![soa("example.")]) } else { vec![] };
            let (q, mut m) = response("a.b.example.", qtype, vec![], [span.clone(), soa].concat());
            m.metadata.response_code = ResponseCode::NXDomain;
            let v = validator.validate(&q, &m).await;
            assert!(matches!(v, Security::Bogus(_)), "{qtype} with SOA {with_soa}: a name the wildcard serves denied as {v:?}");
        }
        // For ANY with the SOA moved to the answer section, where hickory
        // does not look for it.
        let (q, mut m) = response("a.b.example.", RecordType::ANY, signed(&example, vec![soa("example.")]), span.clone());
        m.metadata.response_code = ResponseCode::NXDomain;
        let v = validator.validate(&q, &m).await;
        assert!(matches!(v, Security::Bogus(_)), "ANY, SOA in the answer section: denied as {v:?}");
        // A genuine NXDOMAIN below c.example., whose closest encloser has
        // no wildcard: the NSEC from c.example. around to the apex covers
        // both x.c.example. and *.c.example.
        let wrap = signed(&example, vec![nsec_record("c.example.", "example.", &types)]);
        for with_soa in [false, true] {
            let soa = if with_soa { signed(&example, vec![soa("example.")]) } else { vec![] };
            let (q, mut m) = response("x.c.example.", RecordType::A, vec![], [wrap.clone(), soa].concat());
            m.metadata.response_code = ResponseCode::NXDomain;
            assert_eq!(validator.validate(&q, &m).await, Security::Secure, "with SOA {with_soa}");
        }
        // The closest encloser can be the next name's: c.example. is an
        // empty non-terminal above y.c.example., and the NSEC from
        // b.example. to y.c.example. denies x.c.example. and *.c.example.
        let ent = signed(&example, vec![nsec_record("b.example.", "y.c.example.", &types)]);
        let (q, mut m) = response("x.c.example.", RecordType::A, vec![], [ent, signed(&example, vec![soa("example.")])].concat());
        m.metadata.response_code = ResponseCode::NXDomain;
        assert_eq!(validator.validate(&q, &m).await, Security::Secure);
    }

    /// Nor does a parent's NSEC at the cut deny the child's wildcard (RFC
    /// 6840 §4.1), though it spans every name below the cut.
    #[tokio::test]
    async fn a_parents_nsec_at_the_cut_does_not_deny_the_childs_wildcard() {
        let (root, example, host) = (Zone::new("."), Zone::new("example."), Zone::new("host.example."));
        let (validator, _) = validator_for(&root, served_with_signed_child(&root, &example, &host)).await;
        let types = [RecordType::A, RecordType::RRSIG, RecordType::NSEC];
        let span = signed(&host, vec![nsec_record("*.host.example.", "c.host.example.", &types)]);
        let cut = nsec_record("host.example.", "www.example.", &[RecordType::NS, RecordType::DS, RecordType::RRSIG, RecordType::NSEC]);
        let (q, mut m) = response("a.b.host.example.", RecordType::A, vec![], [span, signed(&example, vec![cut.clone()])].concat());
        m.metadata.response_code = ResponseCode::NXDomain;
        let v = validator.validate(&q, &m).await;
        assert!(matches!(v, Security::Bogus(_)), "a name the wildcard serves denied as {v:?}");
        // Nor is it the NSEC that covers a child's name: beside a genuine
        // proof (b.host.example. exists; its NSEC covers a.b.host.example.
        // and *.b.host.example.) it asks for nothing more.
        let child = signed(&host, vec![nsec_record("b.host.example.", "c.host.example.", &types)]);
        let proofs = [child, signed(&host, vec![soa("host.example.")]), signed(&example, vec![cut])].concat();
        let (q, mut m) = response("a.b.host.example.", RecordType::A, vec![], proofs);
        m.metadata.response_code = ResponseCode::NXDomain;
        assert_eq!(validator.validate(&q, &m).await, Security::Secure);
    }

    /// A high-iteration NSEC3 makes a denial insecure only for its own
    /// zone: one from another signed zone proves nothing about the end of
    /// the chain.
    #[tokio::test]
    async fn a_high_iteration_nsec3_of_another_zone_proves_nothing() {
        let (root, example, slow) = (Zone::new("."), Zone::new("example."), Zone::new("slow."));
        let (validator, _) = validator_for(&root, served_beside(&root, &example, &slow)).await;
        let chain = nsec3_chain(&slow, &["slow.", "www.slow."], 150);
        let (q, m) = response("www.example.", RecordType::A, signed_cname(&example, "www.example.", "target.example.", 2), covering(&chain, "x.slow.", 150));
        let v = validator.validate(&q, &m).await;
        assert!(matches!(&v, Security::Bogus(b) if b.reason == "denial-unproven"), "{v:?}");
        // Into slow. itself, RFC 9276 applies: insecure.
        let (q, m) = response("www.example.", RecordType::A, signed_cname(&example, "www.example.", "x.slow.", 2), covering(&chain, "x.slow.", 150));
        assert_eq!(validator.validate(&q, &m).await, Security::Insecure);
        // But not from a wildcard expansion of *.example. that nothing
        // proves: www.example. exists, and example.'s NSEC3 beside the
        // slow one (hickory refuses the two zones' records together, then
        // calls slow.'s alone insecure) covers another name.
        let example_chain = nsec3_chain(&example, &["example.", "www.example.", "*.example."], 0);
        let proofs = [covering(&example_chain, "a.www.example.", 0), covering(&chain, "x.slow.", 150)].concat();
        let (q, m) = response("www.example.", RecordType::A, signed_cname(&example, "www.example.", "x.slow.", 1), proofs);
        let v = validator.validate(&q, &m).await;
        assert!(matches!(&v, Security::Bogus(_)), "{v:?}");
        // Nor into another zone's secure denial, from an expansion whose
        // zone (slow.) has only NSEC3 past the limit to offer: whatever
        // that NSEC3 covers, it proves nothing, so hickory's bogus stands.
        let nodata = nsec_record("t.example.", "u.example.", &[RecordType::A, RecordType::RRSIG, RecordType::NSEC]);
        let proofs = [covering(&chain, "a.www.slow.", 150), signed(&example, vec![nodata]), signed(&example, vec![soa("example.")])].concat();
        let (q, m) = response("www.slow.", RecordType::AAAA, signed_cname(&slow, "www.slow.", "t.example.", 1), proofs);
        let v = validator.validate(&q, &m).await;
        assert!(matches!(&v, Security::Bogus(_)), "{v:?}");
    }

    fn nsec_record(owner: &str, next: &str, types: &[RecordType]) -> Record {
        Record::from_rdata(n(owner), 300, RData::DNSSEC(DNSSECRData::NSEC(NSEC::new(n(next), types.iter().copied()))))
    }

    /// `zone`'s signature over `rrset` as an expansion of the wildcard
    /// `labels` labels up, valid now.
    fn expanded_sig(zone: &Zone, rrset: &[Record], labels: u8) -> Record {
        let now = unix_now();
        zone.sign_with(rrset, labels, now - 3600, now + 3600)
    }

    /// Each expansion of an answer is proven on its own, whatever hickory
    /// said (shapes from the third review).
    #[tokio::test]
    async fn every_wildcard_expansion_needs_a_denial_from_its_own_zone() {
        let (root, example, host) = (Zone::new("."), Zone::new("example."), Zone::new("host.example."));
        let (validator, _) = validator_for(&root, served_with_signed_child(&root, &example, &host)).await;

        // *.host.example.'s signature replayed for www.host.example., which
        // exists, beside the parent's NSEC at the cut (NS DS): it spans every
        // name of the child, and the old #2882 fallback took it for proof.
        let replayed = a("www.host.example.", 80);
        let sig = expanded_sig(&host, std::slice::from_ref(&replayed), 2);
        let cut = nsec_record("host.example.", "mail.example.", &[RecordType::NS, RecordType::DS, RecordType::RRSIG, RecordType::NSEC]);
        let (q, m) = response("www.host.example.", RecordType::A, vec![replayed, sig], signed(&example, vec![cut]));
        let v = validator.validate(&q, &m).await;
        assert!(matches!(v, Security::Bogus(_)), "a replayed expansion passed as {v:?}");

        // A catch-all CNAME into the insecure zone, replayed for a name that
        // exists: hickory returns before the wildcard check when every
        // authority record is insecure (here the child's NS).
        let mut answer = signed_cname(&example, "www.example.", "x.insecure.example.", 1);
        answer.push(a("x.insecure.example.", 66));
        let ns = Record::from_rdata(n("insecure.example."), 300, RData::NS(hickory_proto::rr::rdata::NS(n("ns.insecure.example."))));
        let (q, m) = response("www.example.", RecordType::A, answer.clone(), vec![ns.clone()]);
        let v = validator.validate(&q, &m).await;
        assert!(matches!(&v, Security::Bogus(b) if b.reason == "wildcard-unproven"), "{v:?}");
        // The same replay into nothing there (NODATA in the insecure zone,
        // its cut proven by the parent's NSEC, the unsigned SOA dropped):
        // the end's denial is insecure, and the expansion still unproven.
        let cut = nsec_record("insecure.example.", "www.example.", &[RecordType::NS, RecordType::RRSIG, RecordType::NSEC]);
        let (q, m) = response("www.example.", RecordType::A, answer[..2].to_vec(), signed(&example, vec![cut]));
        let v = validator.validate(&q, &m).await;
        assert!(matches!(&v, Security::Bogus(_)), "{v:?}");
        // With the zone's NSEC that proves the expansion, it is what it is: insecure.
        let proof = nsec_record("example.", "zzz.example.", &[RecordType::SOA]);
        let (q, m) = response("www.example.", RecordType::A, answer, signed(&example, vec![proof]));
        assert_eq!(validator.validate(&q, &m).await, Security::Insecure);

        // host.example.'s catch-all into nothing in the insecure zone, its
        // expansion proven, beside example.'s signed SOA and no denial for
        // the end: hickory calls the insecure zone's NODATA fine and sums
        // up the signed records; what speaks for the end has no NSEC.
        let chain = nsec3_chain(&host, &["host.example.", "*.host.example."], 0);
        let proofs = [covering(&chain, "new.host.example.", 0), signed(&example, vec![soa("example.")])].concat();
        let (q, m) = response("new.host.example.", RecordType::A, signed_cname(&host, "new.host.example.", "x.insecure.example.", 2), proofs);
        assert_eq!(validator.validate(&q, &m).await, Security::Insecure);
    }

    /// A signed CNAME into a name a wildcard of an NSEC3 zone serves (a CDN's
    /// catch-all): hickory measures the first RRSIG against the query name
    /// and called it bogus; each expansion proven on its own, it is secure.
    #[tokio::test]
    async fn a_cname_into_a_wildcard_of_an_nsec3_zone_is_secure() {
        let (root, example, cdn) = (Zone::new("."), Zone::new("example."), Zone::new("cdn."));
        let (validator, _) = validator_for(&root, served_beside(&root, &example, &cdn)).await;
        let edge = a("x.edge.cdn.", 7);
        let sig = expanded_sig(&cdn, std::slice::from_ref(&edge), 2);
        let chain = nsec3_chain(&cdn, &["cdn.", "edge.cdn.", "*.edge.cdn."], 0);
        let answer = [signed_cname(&example, "www.example.", "x.edge.cdn.", 2), vec![edge, sig]].concat();
        let (q, m) = response("www.example.", RecordType::A, answer.clone(), covering(&chain, "x.edge.cdn.", 0));
        assert_eq!(validator.validate(&q, &m).await, Security::Secure);
        // Without the NSEC3 that covers x.edge.cdn., nothing proves the expansion.
        let (q, m) = response("www.example.", RecordType::A, answer, covering(&chain, "edge.cdn.", 0));
        assert!(matches!(validator.validate(&q, &m).await, Security::Bogus(_)));
    }

    /// A catch-all CNAME whose target has nothing of the type asked: the
    /// expansion is proven by its zone's denial of the next closer name,
    /// the end by the target's own denial. hickory judged the end's
    /// denial against the query name and called these bogus.
    #[tokio::test]
    async fn a_wildcard_cname_into_a_denial_is_secure() {
        let (root, example) = (Zone::new("."), Zone::new("example."));
        let (validator, _) = validator_for(&root, served_with_insecure_child(&root, &example)).await;
        let dedup = |mut records: Vec<Record>| {
            let mut seen = HashSet::new();
            records.retain(|r| seen.insert((r.name.clone(), r.record_type())));
            records
        };

        // NSEC3, NODATA at the end: target.example. has an A and no AAAA.
        let chain = nsec3_chain(&example, &["example.", "*.example.", "target.example."], 0);
        let proofs = [covering(&chain, "www.example.", 0), matching(&chain, "target.example.", 0)].concat();
        let cname = signed_cname(&example, "www.example.", "target.example.", 1);
        let (q, m) = response("www.example.", RecordType::AAAA, cname.clone(), dedup(proofs));
        assert_eq!(validator.validate(&q, &m).await, Security::Secure);
        // Without the expansion's proof, the same end proves nothing of the wildcard.
        let (q, m) = response("www.example.", RecordType::AAAA, cname, matching(&chain, "target.example.", 0));
        let v = validator.validate(&q, &m).await;
        assert!(matches!(&v, Security::Bogus(_)), "{v:?}");

        // NSEC3, NXDOMAIN at the end: closest encloser example., next closer
        // gone.example. and the wildcard *.example. covered, as RFC 5155 §7.2.2.
        let chain = nsec3_chain(&example, &["example.", "w.example.", "*.w.example."], 0);
        let proofs = [
            covering(&chain, "x.w.example.", 0),
            matching(&chain, "example.", 0),
            covering(&chain, "gone.example.", 0),
            covering(&chain, "*.example.", 0),
            signed(&example, vec![soa("example.")]),
        ]
        .concat();
        let (q, mut m) = response("x.w.example.", RecordType::A, signed_cname(&example, "x.w.example.", "gone.example.", 2), dedup(proofs));
        m.metadata.response_code = ResponseCode::NXDomain;
        assert_eq!(validator.validate(&q, &m).await, Security::Secure);

        // NSEC: one record proves both, www.example. and target.example.'s
        // missing AAAA (canonical order: example., *.example., target.example.).
        let nsec = nsec_record("target.example.", "example.", &[RecordType::A, RecordType::RRSIG, RecordType::NSEC]);
        let (q, m) = response("www.example.", RecordType::AAAA, signed_cname(&example, "www.example.", "target.example.", 1), signed(&example, vec![nsec]));
        assert_eq!(validator.validate(&q, &m).await, Security::Secure);
    }

    /// The same across zones: an NSEC3 zone's catch-all CNAME into an NSEC
    /// zone's name with no AAAA. Each zone's denial speaks for its own name.
    #[tokio::test]
    async fn a_wildcard_cname_into_another_zones_denial_is_secure() {
        let (root, example, cdn) = (Zone::new("."), Zone::new("example."), Zone::new("cdn."));
        let (validator, _) = validator_for(&root, served_beside(&root, &example, &cdn)).await;
        let chain = nsec3_chain(&example, &["example.", "*.example."], 0);
        let nodata = nsec_record("edge.cdn.", "cdn.", &[RecordType::A, RecordType::RRSIG, RecordType::NSEC]);
        let proofs = [covering(&chain, "www.example.", 0), signed(&cdn, vec![nodata])].concat();
        let (q, m) = response("www.example.", RecordType::AAAA, signed_cname(&example, "www.example.", "edge.cdn.", 1), proofs);
        assert_eq!(validator.validate(&q, &m).await, Security::Secure);
    }

    /// And from a parent's catch-all into its signed child's NXDOMAIN: only
    /// the deepest zone that holds the end speaks for it (the parent's
    /// NSEC3 beside the child's NSEC was refused).
    #[tokio::test]
    async fn a_wildcard_cname_into_a_child_zones_denial_is_secure() {
        let (root, example, host) = (Zone::new("."), Zone::new("example."), Zone::new("host.example."));
        let (validator, _) = validator_for(&root, served_with_signed_child(&root, &example, &host)).await;
        let chain = nsec3_chain(&example, &["example.", "*.example.", "host.example."], 0);
        let apex = [RecordType::SOA, RecordType::NS, RecordType::DNSKEY, RecordType::RRSIG, RecordType::NSEC];
        let nxdomain = nsec_record("host.example.", "www.host.example.", &apex);
        let proofs = [covering(&chain, "www.example.", 0), signed(&host, vec![nxdomain]), signed(&host, vec![soa("host.example.")])].concat();
        let (q, mut m) = response("www.example.", RecordType::A, signed_cname(&example, "www.example.", "gone.host.example.", 1), proofs);
        m.metadata.response_code = ResponseCode::NXDomain;
        assert_eq!(validator.validate(&q, &m).await, Security::Secure);
    }

    /// A catch-all CNAME of a signed zone into an unsigned zone's NODATA or
    /// NXDOMAIN (a CDN without AAAA, say), as a server sends it: the
    /// expansion's proof beside the unsigned zone's SOA. The end is in a
    /// provably unsigned zone, so the answer is insecure; without the
    /// expansion's proof it is a replay, bogus.
    #[tokio::test]
    async fn a_wildcard_cname_into_an_unsigned_zones_denial_is_insecure() {
        let (root, example) = (Zone::new("."), Zone::new("example."));
        let (validator, _) = validator_for(&root, served_with_insecure_child(&root, &example)).await;
        let chain = nsec3_chain(&example, &["example.", "*.example.", "insecure.example."], 0);
        let cname = signed_cname(&example, "www.example.", "x.insecure.example.", 1);
        for rcode in [ResponseCode::NoError, ResponseCode::NXDomain] {
            let proofs = [covering(&chain, "www.example.", 0), vec![soa("insecure.example.")]].concat();
            let (q, mut m) = response("www.example.", RecordType::AAAA, cname.clone(), proofs);
            m.metadata.response_code = rcode;
            assert_eq!(validator.validate(&q, &m).await, Security::Insecure, "{rcode}");
            // The expansion's proof dropped, or swapped for an NSEC3 that
            // covers another name: nothing shows www.example. does not exist.
            let proof = covering(&chain, "www.example.", 0);
            let other = chain.iter().map(|(_, r)| r.clone()).find(|r| *r != proof).unwrap();
            for authorities in [vec![soa("insecure.example.")], [other, vec![soa("insecure.example.")]].concat()] {
                let (q, mut m) = response("www.example.", RecordType::AAAA, cname.clone(), authorities);
                m.metadata.response_code = rcode;
                let v = validator.validate(&q, &m).await;
                assert!(matches!(v, Security::Bogus(_)), "{rcode}: {v:?}");
            }
        }
        // An unsigned SOA forged for a name of the signed zone, fake.example.,
        // which its parent shows is no delegation: no zone cut, no insecure end.
        let mut served = served_with_insecure_child(&root, &example);
        let chain = nsec3_chain(&example, &["example.", "*.example.", "insecure.example.", "fake.example."], 0);
        served.insert((n("fake.example."), RecordType::DS), matching(&chain, "fake.example.", 0));
        let (validator, _) = validator_for(&root, served).await;
        let cname = signed_cname(&example, "www.example.", "x.fake.example.", 1);
        for rcode in [ResponseCode::NoError, ResponseCode::NXDomain] {
            let proofs = [covering(&chain, "www.example.", 0), vec![soa("fake.example.")]].concat();
            let (q, mut m) = response("www.example.", RecordType::AAAA, cname.clone(), proofs);
            m.metadata.response_code = rcode;
            let v = validator.validate(&q, &m).await;
            assert!(matches!(v, Security::Bogus(_)), "{rcode}: {v:?}");
        }
    }

    /// A zone signed with no DS above it (insecure.example., proven
    /// unsigned by its parent's NSEC) serves a wildcard: its data is
    /// insecure, and so is the expansion, whatever NSEC it brings (the
    /// fourth review: the first version of `expansion` made it bogus).
    #[tokio::test]
    async fn a_wildcard_of_a_zone_with_no_ds_is_insecure() {
        let (root, example, child) = (Zone::new("."), Zone::new("example."), Zone::new("insecure.example."));
        let mut served = served_with_insecure_child(&root, &example);
        served.insert((n("insecure.example."), RecordType::DNSKEY), signed(&child, dnskey_set(&child)));
        let (validator, _) = validator_for(&root, served).await;
        let data = a("x.insecure.example.", 9);
        let sig = expanded_sig(&child, std::slice::from_ref(&data), 2);
        let nsec = nsec_record("insecure.example.", "zzz.insecure.example.", &[RecordType::SOA, RecordType::NS]);
        let (q, m) = response("x.insecure.example.", RecordType::A, vec![data, sig], signed(&child, vec![nsec]));
        assert_eq!(validator.validate(&q, &m).await, Security::Insecure);
    }
}
