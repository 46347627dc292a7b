//! `guard.yaml`, parsed into typed structs. Every bad value is reported with
//! its `file:line`, so one edit fixes them all, and `main` exits 64.
//! Unknown keys are errors: a typo such as `blocklist:` must not leave the
//! guard running without its lists while looking configured.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// Exit status for a config that does not load: `EX_USAGE` from sysexits(3),
/// the code linkerd2-proxy uses so an orchestrator can tell "fix the config"
/// from a crash.
pub const EXIT_BAD_CONFIG: i32 = 64;

/// Where the forwarder finds upstreams when `proxy.upstreams` is absent.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";

// ---------------------------------------------------------------------------
// Typed config
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config {
    /// Where XDP attaches. `None` runs the proxy only (no XDP fast path).
    pub interface: Option<String>,
    pub xdp: XdpConfig,
    /// Absolute, or made absolute against the config file's directory.
    pub blocklists: Vec<PathBuf>,
    pub allowlists: Vec<PathBuf>,
    pub proxy: ProxyConfig,
    /// True when the config has a `proxy:` key (even an empty one): the
    /// forwarder only starts when asked for, never silently.
    pub proxy_enabled: bool,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
    pub kubernetes: KubernetesConfig,
}

#[derive(Debug, Clone, PartialEq)]
pub struct XdpConfig {
    pub mode: XdpMode,
    /// 1..=8 distinct destination ports, the size of the kernel's port table.
    pub ports: Vec<u16>,
    pub action: XdpAction,
    /// bpffs directory for pinned maps. Only "absolute" is checked here: the
    /// mount may not exist yet when `--check` runs outside the pod.
    pub pin_dir: PathBuf,
    pub ratelimit: RateLimitConfig,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitConfig {
    /// Queries per second per client prefix; 0 turns rate limiting off.
    pub qps: u32,
    pub burst: u32,
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
    pub action: RateLimitAction,
    /// Size of the per-client LRU map.
    pub max_clients: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProxyConfig {
    pub listen: SocketAddr,
    /// `None`: read `/etc/resolv.conf` when the proxy starts (see
    /// [`ProxyConfig::effective_upstreams`]), never at parse time, so a
    /// config check does not depend on the machine it runs on.
    pub upstreams: Option<Vec<Upstream>>,
    /// Upstreams asked without 0x20 mixed case (they do not echo the
    /// question's case). Each must be one of `upstreams` when that is set.
    pub no_0x20: Vec<SocketAddr>,
    pub dnssec: DnssecMode,
    pub trust_anchor: Option<PathBuf>,
    /// PEM CA certificate(s) that `tls://` upstreams' certificates must
    /// chain to, instead of the built-in Mozilla roots (a private CA).
    pub tls_ca: Option<PathBuf>,
    pub rebinding: RebindingConfig,
    pub spoof: SpoofConfig,
    pub random_subdomain: RandomSubdomainConfig,
    pub paranoid: bool,
    /// One upstream attempt.
    pub timeout_ms: u64,
    /// One client query, whole: every attempt and every DNSSEC sub-query.
    pub query_timeout_ms: u64,
    /// After SIGTERM, how long to go on answering (unready meanwhile)
    /// before draining, so CoreDNS's own lameduck is never cut short.
    pub lameduck_s: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RebindingConfig {
    pub block: bool,
    /// Lower-case ASCII names without the trailing dot; each also covers its
    /// subdomains.
    pub allow: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SpoofConfig {
    pub threshold: u32,
    pub window_s: u64,
    pub tcp_cooldown_s: u64,
}

/// The random-subdomain ("water torture") defence: a zone that answers
/// NXDOMAIN or SERVFAIL (or never answers) for more than `threshold`
/// different queries within `window_s` gets its subdomains blocked for
/// `block_s`, in the kernel when XDP is on and in the proxy always.
#[derive(Debug, Clone, PartialEq)]
pub struct RandomSubdomainConfig {
    /// Failed lookups per zone within the window; 0 turns the defence off.
    pub threshold: u32,
    pub window_s: u64,
    pub block_s: u64,
    pub action: DynBlockAction,
    /// Zones never blocked, with their subdomains (lower-case ASCII, no
    /// trailing dot), on top of the allowlists.
    pub exempt: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MetricsConfig {
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    /// Fraction 0.0..=1.0 of allowed queries also written to the verdict log.
    pub allow_sample: f64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct KubernetesConfig {
    /// Whether verdict lines name the pod behind a client IP.
    pub enrich: EnrichMode,
}

/// One upstream of the forwarder.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Upstream {
    /// Classic DNS on port 53 unless given: UDP, TCP on truncation.
    Plain(SocketAddr),
    /// DNS over TLS (RFC 7858); `server_name` is checked against the
    /// certificate, so it must be a name, not the IP.
    Tls {
        addr: SocketAddr,
        server_name: String,
    },
}

/// Declares an enum of YAML keywords with its spelling table, so parsing,
/// the "expected one of" message and `Display` never disagree.
macro_rules! keyword_enum {
    ($(#[$m:meta])* $name:ident default $def:ident { $($(#[$vm:meta])* $var:ident = $s:literal,)+ }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vm])* $var,)+ }
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$var,)+];
            pub fn as_str(self) -> &'static str {
                match self { $($name::$var => $s,)+ }
            }
        }
        impl Default for $name {
            fn default() -> Self { $name::$def }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.as_str()) }
        }
        impl Keyword for $name {
            fn all() -> &'static [Self] { Self::ALL }
            fn name(self) -> &'static str { self.as_str() }
        }
    };
}

keyword_enum! {
    /// How XDP attaches. `auto` picks generic (skb) mode on drivers where
    /// native XDP_TX replies are lost (veth, macvlan, ...), and elsewhere
    /// tries native (driver) mode, falling back to generic.
    XdpMode default Auto {
        Auto = "auto",
        Native = "native",
        Generic = "generic",
    }
}

keyword_enum! {
    /// What XDP does with a blocked query.
    XdpAction default Nxdomain {
        Nxdomain = "nxdomain",
        Refused = "refused",
        Drop = "drop",
        /// Dry run: log the verdict, pass the packet.
        Log = "log",
    }
}

keyword_enum! {
    RateLimitAction default Drop {
        Drop = "drop",
        Refused = "refused",
        /// Answer with TC=1 so real clients retry over TCP, which a spoofed
        /// source address cannot complete.
        Truncate = "truncate",
        Log = "log",
    }
}

keyword_enum! {
    /// What a dynamic block does with a query for a blocked zone's
    /// subdomain. REFUSED, not NXDOMAIN: the names may well exist, and a
    /// negative answer would be cached as if they did not.
    DynBlockAction default Refused {
        Refused = "refused",
        Drop = "drop",
        Nxdomain = "nxdomain",
        /// Dry run: log the verdict, pass the packet.
        Log = "log",
    }
}

keyword_enum! {
    DnssecMode default Validate {
        Off = "off",
        Validate = "validate",
    }
}

keyword_enum! {
    /// Pod names in verdict lines (a pod watch; see `k8s.rs`). The
    /// environment is looked at when `run` starts, never at parse time.
    EnrichMode default Auto {
        /// On when a service account token is mounted and
        /// KUBERNETES_SERVICE_HOST is set, that is, inside a pod.
        Auto = "auto",
        /// In-cluster, or else a kubeconfig; `run` fails without either.
        On = "on",
        Off = "off",
    }
}

trait Keyword: Sized + Copy + 'static {
    fn all() -> &'static [Self];
    fn name(self) -> &'static str;
}

impl Default for XdpConfig {
    fn default() -> Self {
        XdpConfig {
            mode: XdpMode::default(),
            ports: vec![53],
            action: XdpAction::default(),
            pin_dir: PathBuf::from("/sys/fs/bpf/dns-guard"),
            ratelimit: RateLimitConfig::default(),
        }
    }
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            qps: 100,
            burst: 200,
            ipv4_prefix: 32,
            ipv6_prefix: 64,
            action: RateLimitAction::default(),
            max_clients: 131_072,
        }
    }
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 5353),
            upstreams: None,
            no_0x20: Vec::new(),
            dnssec: DnssecMode::default(),
            trust_anchor: None,
            tls_ca: None,
            rebinding: RebindingConfig::default(),
            spoof: SpoofConfig::default(),
            random_subdomain: RandomSubdomainConfig::default(),
            paranoid: false,
            timeout_ms: 2000,
            query_timeout_ms: 5000,
            // One more than the `health { lameduck 5s }` of CoreDNS's
            // default Corefile, which forwards to us for those 5 s.
            lameduck_s: 6,
        }
    }
}

impl Default for RebindingConfig {
    fn default() -> Self {
        RebindingConfig {
            block: true,
            // Cluster-internal names legitimately answer with private
            // addresses. The reverse zones are issue 3's default; they
            // answer PTR, and addresses under them are checked anyway
            // (`checks::check_rebinding`).
            allow: vec![
                "cluster.local".into(),
                "in-addr.arpa".into(),
                "ip6.arpa".into(),
            ],
        }
    }
}

impl Default for SpoofConfig {
    fn default() -> Self {
        SpoofConfig {
            threshold: 10,
            window_s: 60,
            tcp_cooldown_s: 300,
        }
    }
}

impl Default for RandomSubdomainConfig {
    fn default() -> Self {
        RandomSubdomainConfig {
            // 50 failed lookups a second, sustained over 10 s, for one zone:
            // far above what search-list expansion and typos make (CoreDNS
            // caches those negative answers), far below a flood.
            threshold: 500,
            window_s: 10,
            block_s: 60,
            action: DynBlockAction::default(),
            // Reverse lookups of unknown addresses fail legitimately and in
            // bulk; cluster.local never leaves CoreDNS.
            exempt: vec!["cluster.local".into(), "in-addr.arpa".into(), "ip6.arpa".into()],
        }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 9253),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { allow_sample: 0.0 }
    }
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// One problem in the config, located at the offending key or value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    pub file: PathBuf,
    /// 1-based; `None` when the problem is the file as a whole.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.file.display(), line, self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// Every problem found, in file order; displayed one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors {
    pub issues: Vec<ConfigIssue>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, issue) in self.issues.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{issue}")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ResolvConfError {
    #[error("cannot read {path}: {source}; set proxy.upstreams in guard.yaml")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} lists no usable nameserver; set proxy.upstreams in guard.yaml")]
    NoNameservers { path: PathBuf },
}

// ---------------------------------------------------------------------------
// Entry points
// ---------------------------------------------------------------------------

/// Reads and parses `path`, then checks that every list file, the trust
/// anchor and the TLS CA exist and are readable.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
        issues: vec![ConfigIssue {
            file: path.to_path_buf(),
            line: None,
            message: format!("cannot read config: {e}; pass the right file with --config"),
        }],
    })?;
    let (config, files, mut issues) = parse_inner(&text, path);
    for f in &files {
        let checked = check_readable(&f.path).and_then(|()| f.content.map_or(Ok(()), |check| check(&f.path)));
        if let Err(msg) = checked {
            issues.push(ConfigIssue {
                file: path.to_path_buf(),
                line: Some(f.line),
                message: format!("{}: {msg}", f.key),
            });
        }
    }
    finish(config, issues)
}

/// Parses config text without touching the filesystem (list files are not
/// checked; [`load`] does that). `path` names the file in messages and is
/// the base for relative list paths.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
    let (config, _files, issues) = parse_inner(text, path);
    finish(config, issues)
}

fn finish(config: Config, mut issues: Vec<ConfigIssue>) -> Result<Config, ConfigErrors> {
    if issues.is_empty() {
        Ok(config)
    } else {
        // Stable sort: issues on one line keep the order they were found.
        issues.sort_by_key(|i| i.line.unwrap_or(0));
        Err(ConfigErrors { issues })
    }
}

fn check_readable(path: &Path) -> Result<(), String> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(format!(
                "{} does not exist; create it or remove the entry",
                path.display()
            ))
        }
        Err(e) => return Err(format!("cannot access {}: {e}", path.display())),
        Ok(m) if m.is_dir() => {
            return Err(format!(
                "{} is a directory; name the list file itself",
                path.display()
            ))
        }
        Ok(_) => {}
    }
    std::fs::File::open(path)
        .map(drop)
        .map_err(|e| format!("cannot read {}: {e}; fix its permissions", path.display()))
}

impl Config {
    /// A documented example with every key at its default, except the list
    /// paths and upstreams, which show typical values.
    pub fn example() -> &'static str {
        EXAMPLE
    }
}

const EXAMPLE: &str = r#"# guard.yaml: dns-guard configuration. Every key is optional; the values
# shown are the defaults unless noted. Unknown keys are errors.

# Interface XDP attaches to. Leave unset to run the validating proxy only.
interface: eth0

xdp:
  mode: auto            # auto | native | generic (auto: generic on veth, else native, falling back)
  ports: [53]           # 1 to 8 UDP destination ports to inspect (XDP sees UDP only)
  action: nxdomain      # nxdomain | refused | drop | log (log = dry run, proxy included)
  pin_dir: /sys/fs/bpf/dns-guard   # bpffs directory for pinned maps
  ratelimit:
    qps: 100            # queries per second per client prefix; 0 = off
    burst: 200          # bucket size; at least 1 when qps > 0
    ipv4_prefix: 32     # clients are grouped by this prefix (1..=32)
    ipv6_prefix: 64     # (1..=128); /64 is one household or pod network
    action: drop        # drop | refused | truncate | log
    max_clients: 131072 # LRU entries tracked

# Domain lists, one name per line. Relative paths are taken from this
# file's directory. Default: none.
blocklists:
  - /etc/dns-guard/lists/malware.txt
allowlists:
  - /etc/dns-guard/lists/allow.txt

proxy:
  listen: 127.0.0.1:5353
  # Default: the nameservers in /etc/resolv.conf, read when the proxy starts.
  # Forms: IP, IP:port, [IPv6]:port, tls://IP[:853]@servername
  # (DNS over TLS: the certificate must be valid for servername).
  upstreams:
    - 9.9.9.9
    - tls://149.112.112.112:853@dns.quad9.net
  # tls_ca: /etc/dns-guard/ca.pem   # private CA for tls:// upstreams; default: built-in web PKI roots
  # Upstreams asked in lower case instead of 0x20 mixed case, for servers
  # that do not echo the question's case (IP or IP:port, as in upstreams).
  no_0x20: []
  dnssec: validate      # off | validate
  # trust_anchor: /etc/dns-guard/root.key   # default: built-in root KSKs
  rebinding:
    block: true         # drop public answers that point at private addresses
    allow: [cluster.local, in-addr.arpa, ip6.arpa]   # and their subdomains
  spoof:
    threshold: 10       # mismatched replies within window_s ...
    window_s: 60
    tcp_cooldown_s: 300 # ... switch that upstream to TCP for this long
  # Random-subdomain ("water torture") defence: a zone that fails more than
  # threshold different lookups (NXDOMAIN, SERVFAIL, no answer) within
  # window_s has its subdomains blocked for block_s: in the kernel when XDP
  # is on, in the proxy always. The zone itself keeps resolving.
  random_subdomain:
    threshold: 500      # failed lookups per zone within window_s; 0 = off
    window_s: 10
    block_s: 60
    action: refused     # refused | drop | nxdomain | log (log = dry run)
    exempt: [cluster.local, in-addr.arpa, ip6.arpa]   # never blocked, nor their subdomains
  paranoid: false
  timeout_ms: 2000      # one upstream attempt; up to 3 upstreams are tried
  query_timeout_ms: 5000   # one client query, all attempts and DNSSEC sub-queries
  lameduck_s: 6         # after SIGTERM, answer this long (unready) before draining; 0..=15

metrics:
  listen: 0.0.0.0:9253

log:
  allow_sample: 0       # fraction (0.0 to 1.0) of allowed queries also logged

kubernetes:
  # Name the pod behind each client IP in verdict lines (pod_namespace,
  # pod_name), from a watch on every pod. auto = on inside a pod (service
  # account token mounted); on = also from KUBECONFIG, fail if neither.
  enrich: auto          # auto | on | off
"#;

impl ProxyConfig {
    /// The upstreams to forward to: the configured ones, or else the
    /// nameservers of `/etc/resolv.conf`, read now (at proxy start).
    pub fn effective_upstreams(&self) -> Result<Vec<Upstream>, ResolvConfError> {
        match &self.upstreams {
            Some(u) => Ok(u.clone()),
            None => upstreams_from_resolv_conf(Path::new(RESOLV_CONF)),
        }
    }
}

/// `nameserver` lines of a resolv.conf(5), as plain upstreams on port 53.
pub fn upstreams_from_resolv_conf(path: &Path) -> Result<Vec<Upstream>, ResolvConfError> {
    let text = std::fs::read_to_string(path).map_err(|source| ResolvConfError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(addr) = words.next() else { continue };
        // A link-local address needs its `%scope`, which SocketAddr cannot
        // carry by name; skip it rather than send to the wrong link.
        match addr.parse::<IpAddr>() {
            Ok(ip) => out.push(Upstream::Plain(SocketAddr::new(ip, 53))),
            Err(_) => {
                tracing::warn!(path = %path.display(), nameserver = addr, "skipping unusable nameserver")
            }
        }
    }
    if out.is_empty() {
        return Err(ResolvConfError::NoNameservers {
            path: path.to_path_buf(),
        });
    }
    Ok(out)
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Upstream::Plain(a) => write!(f, "{a}"),
            Upstream::Tls { addr, server_name } => write!(f, "tls://{addr}@{server_name}"),
        }
    }
}

impl std::str::FromStr for Upstream {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        const FORMS: &str = "expected IP[:port] or tls://IP[:853]@servername, e.g. 9.9.9.9, [2620:fe::fe]:53 or tls://9.9.9.9@dns.quad9.net";
        if let Some(rest) = s.strip_prefix("tls://") {
            let Some((addr, name)) = rest.rsplit_once('@') else {
                return Err(format!("'{s}': DNS over TLS needs the server name to check the certificate against; {FORMS}"));
            };
            let addr = ip_port(addr, 853)
                .ok_or_else(|| format!("'{s}': bad address '{addr}'; {FORMS}"))?;
            if name.parse::<IpAddr>().is_ok() {
                return Err(format!(
                    "'{s}': '{name}' is an IP; give the name on the server's certificate"
                ));
            }
            let server_name = dns_name(name).map_err(|e| format!("'{s}': server name {e}"))?;
            // The name rustls checks the certificate against (and sends as SNI).
            tokio_rustls::rustls::pki_types::ServerName::try_from(server_name.as_str())
                .map_err(|_| format!("'{s}': server name '{name}' cannot be matched against a certificate"))?;
            Ok(Upstream::Tls { addr, server_name })
        } else if s.contains("://") {
            Err(format!("'{s}': unsupported scheme; {FORMS}"))
        } else {
            ip_port(s, 53)
                .map(Upstream::Plain)
                .ok_or_else(|| format!("'{s}': {FORMS}"))
        }
    }
}

/// `IP`, `IP:port`, `[v6]` or `[v6]:port`, port 1..=65535.
fn ip_port(s: &str, default_port: u16) -> Option<SocketAddr> {
    let addr = if let Ok(a) = s.parse::<SocketAddr>() {
        a
    } else if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        // Brackets only around IPv6, and both of them.
        SocketAddr::new(IpAddr::V6(inner.parse().ok()?), default_port)
    } else {
        SocketAddr::new(s.parse::<IpAddr>().ok()?, default_port)
    };
    (addr.port() != 0).then_some(addr)
}

/// Normalizes a domain name to lower-case ASCII without the trailing dot.
fn dns_name(s: &str) -> Result<String, String> {
    let trimmed = s.strip_suffix('.').unwrap_or(s);
    if trimmed.is_empty() {
        return Err(format!("'{s}' is empty"));
    }
    if trimmed.starts_with("*.") {
        return Err(format!(
            "'{s}': a name already covers its subdomains; drop the '*.'"
        ));
    }
    let ascii =
        idna::domain_to_ascii(trimmed).map_err(|_| format!("'{s}' is not a valid domain name"))?;
    // RFC 1035 §2.3.4: labels of 1..=63 octets, 253 characters in text form.
    let ok = ascii.len() <= 253
        && ascii.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(ascii)
    } else {
        Err(format!("'{s}' is not a valid domain name"))
    }
}

/// Linux `dev_valid_name()` (net/core/dev.c): shorter than IFNAMSIZ (16),
/// not `.` or `..`, no `/`, `:` or whitespace.
fn interface_name(s: &str) -> Result<String, String> {
    let bad = s.is_empty()
        || s.len() > 15
        || s == "."
        || s == ".."
        || s.chars().any(|c| c == '/' || c == ':' || c.is_whitespace());
    if bad {
        Err(format!("'{s}' is not a valid interface name (1 to 15 bytes, no '/', ':' or spaces); run `ip link` to list interfaces"))
    } else {
        Ok(s.to_string())
    }
}

// ---------------------------------------------------------------------------
// YAML tree with line numbers
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Node {
    Scalar {
        text: String,
        plain: bool,
        line: usize,
    },
    Seq {
        items: Vec<Node>,
        line: usize,
    },
    Map {
        entries: Vec<(Node, Node)>,
        line: usize,
    },
}

impl Node {
    fn line(&self) -> usize {
        match self {
            Node::Scalar { line, .. } | Node::Seq { line, .. } | Node::Map { line, .. } => *line,
        }
    }

    /// YAML 1.2 core schema null; treated as "key absent, use the default".
    fn is_null(&self) -> bool {
        matches!(self, Node::Scalar { text, plain: true, .. }
            if matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    fn kind(&self) -> &'static str {
        match self {
            Node::Scalar { .. } => "a single value",
            Node::Seq { .. } => "a list",
            Node::Map { .. } => "a mapping",
        }
    }
}

enum Frame {
    Seq {
        items: Vec<Node>,
        line: usize,
        anchor: usize,
    },
    Map {
        entries: Vec<(Node, Node)>,
        key: Option<Node>,
        line: usize,
        anchor: usize,
    },
}

/// Builds [`Node`]s from parser events; yaml-rust2's own `Yaml` tree drops
/// the markers we need for `file:line` messages.
#[derive(Default)]
struct TreeBuilder {
    stack: Vec<Frame>,
    /// Each anchored node, with its size.
    anchors: HashMap<usize, (Node, NodeSize)>,
    docs: Vec<Node>,
    /// What aliases copied so far: each copy is a deep clone, so nested
    /// aliases grow exponentially (the "billion laughs"), and one long
    /// value aliased many times adds up too.
    expanded: NodeSize,
    /// The line of the alias that went past [`MAX_ALIAS_NODES`] or
    /// [`MAX_ALIAS_BYTES`].
    alias_bomb: Option<usize>,
}

/// Far more than any config needs.
const MAX_ALIAS_NODES: usize = 10_000;
const MAX_ALIAS_BYTES: usize = 1 << 20;

/// Nodes, itself included, and bytes of scalar text.
#[derive(Clone, Copy, Default)]
struct NodeSize {
    nodes: usize,
    bytes: usize,
}

fn node_size(node: &Node) -> NodeSize {
    let sum = |a: NodeSize, b: NodeSize| NodeSize { nodes: a.nodes + b.nodes, bytes: a.bytes + b.bytes };
    let one = NodeSize { nodes: 1, bytes: 0 };
    match node {
        Node::Scalar { text, .. } => NodeSize { nodes: 1, bytes: text.len() },
        Node::Seq { items, .. } => items.iter().map(node_size).fold(one, sum),
        Node::Map { entries, .. } => entries.iter().map(|(k, v)| sum(node_size(k), node_size(v))).fold(one, sum),
    }
}

impl TreeBuilder {
    fn insert(&mut self, node: Node, anchor: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, (node.clone(), node_size(&node)));
        }
        match self.stack.last_mut() {
            None => self.docs.push(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map { entries, key, .. }) => match key.take() {
                None => *key = Some(node),
                Some(k) => entries.push((k, node)),
            },
        }
    }
}

impl MarkedEventReceiver for TreeBuilder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let line = mark.line();
        match ev {
            Event::Scalar(text, style, anchor, _tag) => {
                let plain = style == TScalarStyle::Plain;
                self.insert(Node::Scalar { text, plain, line }, anchor);
            }
            Event::SequenceStart(anchor, _) => self.stack.push(Frame::Seq {
                items: Vec::new(),
                line,
                anchor,
            }),
            Event::MappingStart(anchor, _) => self.stack.push(Frame::Map {
                entries: Vec::new(),
                key: None,
                line,
                anchor,
            }),
            Event::SequenceEnd | Event::MappingEnd => match self.stack.pop() {
                Some(Frame::Seq {
                    items,
                    line,
                    anchor,
                }) => self.insert(Node::Seq { items, line }, anchor),
                Some(Frame::Map {
                    entries,
                    line,
                    anchor,
                    ..
                }) => self.insert(Node::Map { entries, line }, anchor),
                None => {}
            },
            Event::Alias(id) => {
                // The parser rejects unknown anchors, so the lookup succeeds.
                let Some((node, size)) = self.anchors.get(&id) else { return };
                self.expanded.nodes += size.nodes;
                self.expanded.bytes += size.bytes;
                if self.expanded.nodes > MAX_ALIAS_NODES || self.expanded.bytes > MAX_ALIAS_BYTES {
                    // Stands in for the copy; the file is refused anyway.
                    self.alias_bomb.get_or_insert(line);
                    self.insert(Node::Scalar { text: String::new(), plain: true, line }, 0);
                    return;
                }
                let mut node = node.clone();
                set_line(&mut node, line);
                self.insert(node, 0);
            }
            _ => {}
        }
    }
}

/// An alias reports errors at its own line, where the user will look.
fn set_line(node: &mut Node, at: usize) {
    match node {
        Node::Scalar { line, .. } | Node::Seq { line, .. } | Node::Map { line, .. } => *line = at,
    }
}

// ---------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------

/// Checks a file's content; the message follows "key: ".
type ContentCheck = fn(&Path) -> Result<(), String>;

/// A file named in the config, for [`load`] to check.
struct FileRef {
    path: PathBuf,
    line: usize,
    key: String,
    /// Checks the content too, not just that the file is readable.
    content: Option<ContentCheck>,
}

struct Ctx<'a> {
    file: &'a Path,
    base: Option<&'a Path>,
    issues: Vec<ConfigIssue>,
    files: Vec<FileRef>,
}

/// A parsed list: good items with their lines, the list's own line, and how
/// many items it had counting bad ones.
type ListOut<T> = (Vec<(T, usize)>, usize, usize);

/// The entries of one mapping, by key name.
struct Fields<'n> {
    prefix: String,
    map: HashMap<&'n str, &'n Node>,
}

impl<'n> Fields<'n> {
    fn get(&self, name: &str) -> Option<&'n Node> {
        self.map.get(name).copied().filter(|n| !n.is_null())
    }

    fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{}", self.prefix, name)
        }
    }
}

fn parse_inner(text: &str, path: &Path) -> (Config, Vec<FileRef>, Vec<ConfigIssue>) {
    let base = path.parent().filter(|p| !p.as_os_str().is_empty());
    let mut cx = Ctx {
        file: path,
        base,
        issues: Vec::new(),
        files: Vec::new(),
    };
    let mut builder = TreeBuilder::default();
    if let Err(e) = Parser::new_from_str(text).load(&mut builder, true) {
        // A syntax error leaves no tree to validate; report it alone.
        cx.err(
            e.marker().line(),
            format!(
                "invalid YAML: {} (column {}); check indentation and quoting",
                e.info(),
                e.marker().col() + 1
            ),
        );
        return (Config::default(), Vec::new(), cx.issues);
    }
    if let Some(at) = builder.alias_bomb {
        cx.err(
            at,
            format!(
                "YAML aliases here expand to more than {MAX_ALIAS_NODES} values or {} KiB of text; write the values out instead",
                MAX_ALIAS_BYTES >> 10
            ),
        );
        return (Config::default(), Vec::new(), cx.issues);
    }
    if let Some(extra) = builder.docs.get(1) {
        cx.err(
            extra.line(),
            "more than one YAML document; keep a single document",
        );
    }
    let config = match builder.docs.first() {
        None => Config::default(),
        Some(root) if root.is_null() => Config::default(),
        Some(root) => cx.config(root),
    };
    (config, cx.files, cx.issues)
}

impl<'a> Ctx<'a> {
    fn err(&mut self, line: usize, message: impl Into<String>) {
        self.issues.push(ConfigIssue {
            file: self.file.to_path_buf(),
            line: Some(line),
            message: message.into(),
        });
    }

    /// Checks `node` is a mapping with only `allowed` keys, each once.
    fn fields<'n>(
        &mut self,
        node: Option<&'n Node>,
        prefix: String,
        allowed: &[&str],
    ) -> Fields<'n> {
        let mut map = HashMap::new();
        let entries = match node {
            None => return Fields { prefix, map },
            Some(n) if n.is_null() => return Fields { prefix, map },
            Some(Node::Map { entries, .. }) => entries,
            Some(other) => {
                let what = if prefix.is_empty() {
                    "the config".to_string()
                } else {
                    prefix.clone()
                };
                self.err(
                    other.line(),
                    format!("{what}: expected a mapping of keys, found {}", other.kind()),
                );
                return Fields { prefix, map };
            }
        };
        let mut first_line: HashMap<&str, usize> = HashMap::new();
        for (k, v) in entries {
            let Node::Scalar { text: name, .. } = k else {
                self.err(
                    k.line(),
                    format!(
                        "{}: keys must be plain names",
                        if prefix.is_empty() { "config" } else { &prefix }
                    ),
                );
                continue;
            };
            let dotted = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}.{name}")
            };
            if !allowed.contains(&name.as_str()) {
                let hint = match suggest(name, allowed) {
                    Some(s) => format!("did you mean '{s}'? "),
                    None => String::new(),
                };
                self.err(
                    k.line(),
                    format!(
                        "{dotted}: unknown key; {hint}expected one of {}",
                        allowed.join(", ")
                    ),
                );
                continue;
            }
            if let Some(first) = first_line.get(name.as_str()) {
                self.err(
                    k.line(),
                    format!("{dotted}: duplicate key (first set on line {first}); keep one"),
                );
                continue;
            }
            first_line.insert(name, k.line());
            map.insert(name.as_str(), v);
        }
        Fields { prefix, map }
    }

    /// Parses one value; on error records `key: message` at the value's line
    /// and keeps the default so validation can go on.
    fn value<T>(
        &mut self,
        f: &Fields<'_>,
        name: &str,
        default: T,
        parse: impl FnOnce(&Node) -> Result<T, String>,
    ) -> T {
        match f.get(name) {
            None => default,
            Some(node) => parse(node).unwrap_or_else(|msg| {
                self.err(node.line(), format!("{}: {msg}", f.key(name)));
                default
            }),
        }
    }

    /// Parses a list item by item, reporting each bad item at its own line.
    /// Returns the good items with their lines, the list's line and its
    /// length counting bad items; `None` if the key is absent or not a list.
    fn list<T>(
        &mut self,
        f: &Fields<'_>,
        name: &str,
        parse: impl Fn(&Node) -> Result<T, String>,
    ) -> Option<ListOut<T>> {
        let node = f.get(name)?;
        let Node::Seq { items, line } = node else {
            self.err(
                node.line(),
                format!(
                    "{}: expected a list, e.g. [a, b], found {}",
                    f.key(name),
                    node.kind()
                ),
            );
            return None;
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            match parse(item) {
                Ok(v) => out.push((v, item.line())),
                Err(msg) => self.err(item.line(), format!("{}[{i}]: {msg}", f.key(name))),
            }
        }
        Some((out, *line, items.len()))
    }

    fn config(&mut self, root: &Node) -> Config {
        let f = self.fields(
            Some(root),
            String::new(),
            &[
                "interface",
                "xdp",
                "blocklists",
                "allowlists",
                "proxy",
                "metrics",
                "log",
                "kubernetes",
            ],
        );
        let d = Config::default();
        Config {
            interface: self.value(&f, "interface", None, |n| {
                scalar(n).and_then(interface_name).map(Some)
            }),
            xdp: self.xdp(&f),
            blocklists: self.list_files(&f, "blocklists"),
            allowlists: self.list_files(&f, "allowlists"),
            proxy: self.proxy(&f),
            proxy_enabled: f.map.contains_key("proxy"),
            metrics: {
                let m = self.fields(f.get("metrics"), f.key("metrics"), &["listen"]);
                MetricsConfig {
                    listen: self.value(&m, "listen", d.metrics.listen, socket_addr),
                }
            },
            log: {
                let l = self.fields(f.get("log"), f.key("log"), &["allow_sample"]);
                LogConfig {
                    allow_sample: self.value(&l, "allow_sample", d.log.allow_sample, |n| {
                        let x = float(n)?;
                        if (0.0..=1.0).contains(&x) {
                            Ok(x)
                        } else {
                            Err(format!(
                                "{x} is out of range; give a fraction from 0.0 to 1.0"
                            ))
                        }
                    }),
                }
            },
            kubernetes: {
                let k = self.fields(f.get("kubernetes"), f.key("kubernetes"), &["enrich"]);
                KubernetesConfig {
                    enrich: self.value(&k, "enrich", d.kubernetes.enrich, keyword),
                }
            },
        }
    }

    fn list_files(&mut self, f: &Fields<'_>, name: &str) -> Vec<PathBuf> {
        let base = self.base;
        let Some((items, _, _)) = self.list(f, name, |n| path(n).map(|p| resolve(base, p))) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, (p, line)) in items.into_iter().enumerate() {
            self.files.push(FileRef {
                path: p.clone(),
                line,
                key: format!("{}[{i}]", f.key(name)),
                content: None,
            });
            out.push(p);
        }
        out
    }

    fn xdp(&mut self, top: &Fields<'_>) -> XdpConfig {
        let f = self.fields(
            top.get("xdp"),
            top.key("xdp"),
            &["mode", "ports", "action", "pin_dir", "ratelimit"],
        );
        let d = XdpConfig::default();
        XdpConfig {
            mode: self.value(&f, "mode", d.mode, keyword),
            ports: self.ports(&f).unwrap_or(d.ports),
            action: self.value(&f, "action", d.action, keyword),
            pin_dir: self.value(&f, "pin_dir", d.pin_dir, |n| {
                let p = path(n)?;
                if p.is_absolute() {
                    Ok(p)
                } else {
                    Err(format!("'{}' must be an absolute path under the bpffs mount, e.g. /sys/fs/bpf/dns-guard", p.display()))
                }
            }),
            ratelimit: self.ratelimit(&f),
        }
    }

    fn ports(&mut self, f: &Fields<'_>) -> Option<Vec<u16>> {
        let (items, line, given) =
            self.list(f, "ports", |n| uint(n, 1, 65535).map(|p| p as u16))?;
        let key = f.key("ports");
        // The kernel side keeps ports in a fixed 8-slot array.
        if given == 0 {
            self.err(line, format!("{key}: list at least one port, e.g. [53]"));
        } else if given > 8 {
            self.err(
                line,
                format!("{key}: {given} ports given; at most 8 are supported"),
            );
        }
        let mut seen = Vec::new();
        for (p, l) in &items {
            if seen.contains(p) {
                self.err(*l, format!("{key}: port {p} is listed twice; remove one"));
            } else {
                seen.push(*p);
            }
        }
        Some(seen)
    }

    fn ratelimit(&mut self, xdp: &Fields<'_>) -> RateLimitConfig {
        let f = self.fields(
            xdp.get("ratelimit"),
            xdp.key("ratelimit"),
            &[
                "qps",
                "burst",
                "ipv4_prefix",
                "ipv6_prefix",
                "action",
                "max_clients",
            ],
        );
        let d = RateLimitConfig::default();
        // The kernel spaces a client's queries 1e9 / qps ns apart: past
        // 1e9 that is 0 ns, and nothing would ever be limited.
        let qps = self.value(&f, "qps", d.qps, |n| {
            uint(n, 0, 1_000_000_000).map(|v| v as u32)
        });
        let burst = self.value(&f, "burst", d.burst, |n| {
            uint(n, 0, u32::MAX as u64).map(|v| v as u32)
        });
        // A zero bucket would drop every query from every client.
        if qps > 0 && burst == 0 {
            let line = f.get("burst").map(Node::line).unwrap_or(0);
            self.err(
                line,
                format!(
                    "{}: must be at least 1 when qps > 0; set qps: 0 to turn rate limiting off",
                    f.key("burst")
                ),
            );
        }
        RateLimitConfig {
            qps,
            burst,
            ipv4_prefix: self.value(&f, "ipv4_prefix", d.ipv4_prefix, |n| {
                uint(n, 1, 32).map(|v| v as u8)
            }),
            ipv6_prefix: self.value(&f, "ipv6_prefix", d.ipv6_prefix, |n| {
                uint(n, 1, 128).map(|v| v as u8)
            }),
            action: self.value(&f, "action", d.action, keyword),
            // Preallocated, 96 bytes of kernel memory each (bpftool's
            // memlock for the map): 12 MiB at the default, 403 MB here.
            max_clients: self.value(&f, "max_clients", d.max_clients, |n| {
                uint(n, 1, MAX_RATELIMIT_CLIENTS).map(|v| v as u32)
            }),
        }
    }

    fn proxy(&mut self, top: &Fields<'_>) -> ProxyConfig {
        let f = self.fields(
            top.get("proxy"),
            top.key("proxy"),
            &[
                "listen",
                "upstreams",
                "no_0x20",
                "dnssec",
                "trust_anchor",
                "tls_ca",
                "rebinding",
                "spoof",
                "random_subdomain",
                "paranoid",
                "timeout_ms",
                "query_timeout_ms",
                "lameduck_s",
            ],
        );
        let d = ProxyConfig::default();
        let upstreams = self
            .list(&f, "upstreams", |n| scalar(n)?.parse::<Upstream>())
            .map(|(items, line, given)| {
                if given == 0 {
                    self.err(
                        line,
                        format!(
                            "{}: list at least one upstream, or omit the key to use {RESOLV_CONF}",
                            f.key("upstreams")
                        ),
                    );
                }
                items.into_iter().map(|(u, _)| u).collect()
            });
        let no_0x20: Vec<SocketAddr> = self
            .list(&f, "no_0x20", |n| {
                let s = scalar(n)?;
                ip_port(s, 53).ok_or_else(|| format!("'{s}': expected IP[:port] of an upstream"))
            })
            .map(|(items, _, _)| {
                let given: &[Upstream] = upstreams.as_deref().unwrap_or(&[]);
                let plain: Vec<SocketAddr> = given
                    .iter()
                    .filter_map(|u| match u {
                        Upstream::Plain(a) => Some(*a),
                        Upstream::Tls { .. } => None,
                    })
                    .collect();
                let mut out = Vec::new();
                for (addr, line) in items {
                    if upstreams.is_some() && !plain.contains(&addr) {
                        self.err(
                            line,
                            format!("{}: {addr} is not one of proxy.upstreams; list it there too", f.key("no_0x20")),
                        );
                    }
                    out.push(addr);
                }
                out
            })
            .unwrap_or_default();
        let base = self.base;
        let dnssec = self.value(&f, "dnssec", d.dnssec, keyword);
        let trust_anchor = self.value(&f, "trust_anchor", None, |n| {
            path(n).map(|p| Some(resolve(base, p)))
        });
        if let (Some(p), Some(node)) = (&trust_anchor, f.get("trust_anchor")) {
            self.files.push(FileRef {
                path: p.clone(),
                line: node.line(),
                key: f.key("trust_anchor"),
                // Parsed here when `run` would parse it (validating), so
                // `check` finds a bad anchor before a rollout does.
                content: (dnssec == DnssecMode::Validate).then_some(|p: &Path| {
                    crate::proxy::dnssec::AnchorSet::from_file(p).map(drop).map_err(|e| e.to_string())
                }),
            });
        }
        let tls_ca = self.value(&f, "tls_ca", None, |n| path(n).map(|p| Some(resolve(base, p))));
        if let (Some(p), Some(node)) = (&tls_ca, f.get("tls_ca")) {
            self.files.push(FileRef {
                path: p.clone(),
                line: node.line(),
                key: f.key("tls_ca"),
                content: Some(|p| crate::proxy::tls::ca_roots(p).map(drop)),
            });
        }
        let r = self.fields(f.get("rebinding"), f.key("rebinding"), &["block", "allow"]);
        let rebinding = RebindingConfig {
            block: self.value(&r, "block", d.rebinding.block, boolean),
            allow: self
                .list(&r, "allow", |n| scalar(n).and_then(dns_name))
                .map(|(items, _, _)| items.into_iter().map(|(n, _)| n).collect())
                .unwrap_or(d.rebinding.allow),
        };
        let s = self.fields(
            f.get("spoof"),
            f.key("spoof"),
            &["threshold", "window_s", "tcp_cooldown_s"],
        );
        let spoof = SpoofConfig {
            threshold: self.value(&s, "threshold", d.spoof.threshold, |n| {
                uint(n, 1, u32::MAX as u64).map(|v| v as u32)
            }),
            // A day at most: beyond it a window or cooldown means nothing,
            // and a time that large would overflow when added to now.
            window_s: self.value(&s, "window_s", d.spoof.window_s, |n| uint(n, 1, 86_400)),
            tcp_cooldown_s: self.value(&s, "tcp_cooldown_s", d.spoof.tcp_cooldown_s, |n| {
                uint(n, 0, 86_400)
            }),
        };
        let rs = self.fields(
            f.get("random_subdomain"),
            f.key("random_subdomain"),
            &["threshold", "window_s", "block_s", "action", "exempt"],
        );
        let dr = &d.random_subdomain;
        let random_subdomain = RandomSubdomainConfig {
            threshold: self.value(&rs, "threshold", dr.threshold, |n| uint(n, 0, u32::MAX as u64).map(|v| v as u32)),
            window_s: self.value(&rs, "window_s", dr.window_s, |n| uint(n, 1, 3600)),
            block_s: self.value(&rs, "block_s", dr.block_s, |n| uint(n, 1, 86_400)),
            action: self.value(&rs, "action", dr.action, keyword),
            exempt: self
                .list(&rs, "exempt", |n| scalar(n).and_then(dns_name))
                .map(|(items, _, _)| items.into_iter().map(|(n, _)| n).collect())
                .unwrap_or_else(|| dr.exempt.clone()),
        };
        // A minute at most: CoreDNS's forward gives up on us after 5 s.
        let issues_before = self.issues.len();
        let timeout_ms = self.value(&f, "timeout_ms", d.timeout_ms, |n| uint(n, 1, 60_000));
        let timeout_ok = self.issues.len() == issues_before;
        // Unset, it leaves the first attempt its whole timeout.
        let query_timeout_ms =
            self.value(&f, "query_timeout_ms", d.query_timeout_ms.max(timeout_ms), |n| uint(n, 1, 60_000));
        // Compared only with a timeout_ms the user wrote and we could read.
        if let Some(node) = f.get("query_timeout_ms").filter(|_| timeout_ok && query_timeout_ms < timeout_ms) {
            self.err(
                node.line(),
                format!(
                    "{}: {query_timeout_ms} is below proxy.timeout_ms ({timeout_ms}); one attempt could never use its whole timeout",
                    f.key("query_timeout_ms")
                ),
            );
        }
        ProxyConfig {
            listen: self.value(&f, "listen", d.listen, socket_addr),
            upstreams,
            no_0x20,
            dnssec,
            trust_anchor,
            tls_ca,
            rebinding,
            spoof,
            random_subdomain,
            paranoid: self.value(&f, "paranoid", d.paranoid, boolean),
            timeout_ms,
            query_timeout_ms,
            // Within Kubernetes's default 30 s grace, with the drain's 10 s.
            lameduck_s: self.value(&f, "lameduck_s", d.lameduck_s, |n| uint(n, 0, 15)),
        }
    }
}

fn resolve(base: Option<&Path>, p: PathBuf) -> PathBuf {
    match base {
        Some(b) if p.is_relative() => b.join(p),
        _ => p,
    }
}

// Scalar parsers: each returns a message that follows "key: ".

fn scalar(n: &Node) -> Result<&str, String> {
    match n {
        Node::Scalar { text, .. } => Ok(text),
        other => Err(format!("expected a single value, found {}", other.kind())),
    }
}

fn keyword<T: Keyword>(n: &Node) -> Result<T, String> {
    let s = scalar(n)?;
    T::all()
        .iter()
        .copied()
        .find(|k| k.name() == s)
        .ok_or_else(|| {
            let names: Vec<&str> = T::all().iter().map(|k| k.name()).collect();
            format!("unknown value '{s}'; expected one of {}", names.join(", "))
        })
}

/// `xdp.ratelimit.max_clients` at most: 4 Mi prefixes.
const MAX_RATELIMIT_CLIENTS: u64 = 1 << 22;

fn uint(n: &Node, min: u64, max: u64) -> Result<u64, String> {
    let s = scalar(n)?;
    let range = if max == u64::MAX || max == u32::MAX as u64 {
        format!("{min} or more")
    } else {
        format!("{min}..={max}")
    };
    match s.parse::<u64>() {
        Ok(v) if (min..=max).contains(&v) => Ok(v),
        Ok(v) => Err(format!("{v} is out of range; expected {range}")),
        Err(_) => Err(format!("'{s}' is not a whole number; expected {range}")),
    }
}

fn float(n: &Node) -> Result<f64, String> {
    let s = scalar(n)?;
    s.parse::<f64>()
        .ok()
        .filter(|x| x.is_finite())
        .ok_or_else(|| format!("'{s}' is not a number"))
}

fn boolean(n: &Node) -> Result<bool, String> {
    // YAML 1.2 core schema only: `yes`/`on` are strings there, and guessing
    // would make `block: off` mean something different per parser.
    match scalar(n)? {
        "true" | "True" | "TRUE" => Ok(true),
        "false" | "False" | "FALSE" => Ok(false),
        s => Err(format!("'{s}' is not a boolean; write true or false")),
    }
}

fn socket_addr(n: &Node) -> Result<SocketAddr, String> {
    let s = scalar(n)?;
    s.parse().map_err(|_| {
        format!("'{s}' is not a socket address; write IP:port, e.g. 127.0.0.1:5353 or [::1]:5353")
    })
}

fn path(n: &Node) -> Result<PathBuf, String> {
    let s = scalar(n)?;
    if s.is_empty() {
        Err("path is empty".into())
    } else {
        Ok(PathBuf::from(s))
    }
}

/// The allowed key closest to a typo, if it is close enough to be one.
fn suggest<'k>(typo: &str, allowed: &[&'k str]) -> Option<&'k str> {
    allowed
        .iter()
        .map(|k| (edit_distance(typo, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<Config, ConfigErrors> {
        parse(text, Path::new("/etc/dns-guard/guard.yaml"))
    }

    fn errs(text: &str) -> Vec<String> {
        p(text)
            .expect_err("config should be rejected")
            .issues
            .iter()
            .map(|i| i.to_string())
            .collect()
    }

    fn one_err(text: &str) -> String {
        let e = errs(text);
        assert_eq!(e.len(), 1, "expected one error, got {e:#?}");
        e.into_iter().next().unwrap()
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = p("").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(p("# only a comment\n").unwrap(), Config::default());
        assert_eq!(c.interface, None);
        assert_eq!(c.xdp.mode, XdpMode::Auto);
        assert_eq!(c.xdp.ports, vec![53]);
        assert_eq!(c.xdp.action, XdpAction::Nxdomain);
        assert_eq!(c.xdp.pin_dir, Path::new("/sys/fs/bpf/dns-guard"));
        assert_eq!(c.xdp.ratelimit.qps, 100);
        assert_eq!(c.xdp.ratelimit.burst, 200);
        assert_eq!(c.xdp.ratelimit.ipv4_prefix, 32);
        assert_eq!(c.xdp.ratelimit.ipv6_prefix, 64);
        assert_eq!(c.xdp.ratelimit.action, RateLimitAction::Drop);
        assert_eq!(c.xdp.ratelimit.max_clients, 131072);
        assert!(c.blocklists.is_empty() && c.allowlists.is_empty());
        assert_eq!(c.proxy.listen, "127.0.0.1:5353".parse().unwrap());
        assert_eq!(c.proxy.upstreams, None);
        assert_eq!(c.proxy.dnssec, DnssecMode::Validate);
        assert_eq!(c.proxy.trust_anchor, None);
        assert!(c.proxy.rebinding.block);
        assert_eq!(
            c.proxy.rebinding.allow,
            ["cluster.local", "in-addr.arpa", "ip6.arpa"]
        );
        assert_eq!(
            c.proxy.spoof,
            SpoofConfig {
                threshold: 10,
                window_s: 60,
                tcp_cooldown_s: 300
            }
        );
        assert!(!c.proxy.paranoid);
        assert_eq!(c.proxy.timeout_ms, 2000);
        assert_eq!(c.proxy.query_timeout_ms, 5000);
        assert_eq!(c.metrics.listen, "0.0.0.0:9253".parse().unwrap());
        assert_eq!(c.log.allow_sample, 0.0);
        assert_eq!(c.kubernetes.enrich, EnrichMode::Auto);
    }

    #[test]
    fn null_sections_give_defaults() {
        assert_eq!(
            p("interface:\nxdp:\nproxy: ~\n").unwrap(),
            Config { proxy_enabled: true, ..Config::default() }
        );
        assert!(!p("interface:\n").unwrap().proxy_enabled);
    }

    /// The README's example is what a new user copies: it must parse, and
    /// name no file but the lists it shows (a trust anchor or CA file there
    /// would fail `check` on a machine without one).
    #[test]
    fn the_readme_example_parses_and_names_only_its_lists() {
        let readme = include_str!("../../README.md");
        let section = &readme[readme.find("### Config (`guard.yaml`)").expect("the README's config section")..];
        let body = &section[section.find("```yaml\n").expect("a yaml block") + 8..];
        let body = &body[..body.find("```").expect("the block's end")];
        let (_, files, issues) = parse_inner(body, Path::new("README.md"));
        let issues: Vec<String> = issues.iter().map(|i| i.to_string()).collect();
        assert!(issues.is_empty(), "{issues:#?}");
        let keys: Vec<&str> = files.iter().map(|f| f.key.as_str()).collect();
        assert_eq!(keys, ["blocklists[0]", "allowlists[0]"]);
    }

    #[test]
    fn example_parses_with_documented_values() {
        let c = p(Config::example()).unwrap_or_else(|e| panic!("example does not parse:\n{e}"));
        assert_eq!(c.interface.as_deref(), Some("eth0"));
        assert_eq!(
            c.blocklists,
            vec![PathBuf::from("/etc/dns-guard/lists/malware.txt")]
        );
        assert_eq!(
            c.allowlists,
            vec![PathBuf::from("/etc/dns-guard/lists/allow.txt")]
        );
        let d = Config::default();
        // Everything but the illustrative values is the default.
        assert_eq!(c.xdp, d.xdp);
        assert_eq!(c.metrics, d.metrics);
        assert_eq!(c.log, d.log);
        assert_eq!(c.kubernetes, d.kubernetes);
        assert_eq!(c.proxy.rebinding, d.proxy.rebinding);
        assert_eq!(c.proxy.spoof, d.proxy.spoof);
        assert_eq!(
            c.proxy.upstreams,
            Some(vec![
                Upstream::Plain("9.9.9.9:53".parse().unwrap()),
                Upstream::Tls {
                    addr: "149.112.112.112:853".parse().unwrap(),
                    server_name: "dns.quad9.net".into()
                },
            ])
        );
    }

    #[test]
    fn full_config_parses() {
        let c = p(r#"
interface: ens5
xdp:
  mode: native
  ports: [53, 5353]
  action: log
  pin_dir: /sys/fs/bpf/other
  ratelimit: {qps: 0, burst: 0, ipv4_prefix: 24, ipv6_prefix: 48, action: truncate, max_clients: 1000}
blocklists: [lists/a.txt, /abs/b.txt]
proxy:
  listen: "[::1]:53"
  upstreams: ["[2620:fe::fe]:5353", "2620:fe::9", "tls://[2620:fe::fe]@dns.quad9.net."]
  no_0x20: ["2620:fe::9"]
  dnssec: off
  trust_anchor: root.key
  rebinding: {block: false, allow: [Corp.Example., bücher.example]}
  spoof: {threshold: 3, window_s: 10, tcp_cooldown_s: 0}
  paranoid: true
  timeout_ms: 500
  query_timeout_ms: 1500
metrics: {listen: "127.0.0.1:9000"}
log: {allow_sample: 0.25}
kubernetes: {enrich: off}
"#)
        .unwrap();
        assert_eq!(c.xdp.mode, XdpMode::Native);
        assert_eq!(c.xdp.ports, vec![53, 5353]);
        assert_eq!(c.xdp.action, XdpAction::Log);
        assert_eq!(c.xdp.ratelimit.qps, 0);
        assert_eq!(c.xdp.ratelimit.action, RateLimitAction::Truncate);
        assert_eq!(
            c.blocklists,
            vec![
                PathBuf::from("/etc/dns-guard/lists/a.txt"),
                PathBuf::from("/abs/b.txt")
            ]
        );
        assert_eq!(c.proxy.dnssec, DnssecMode::Off);
        assert_eq!(
            c.proxy.trust_anchor,
            Some(PathBuf::from("/etc/dns-guard/root.key"))
        );
        assert_eq!(
            c.proxy.rebinding.allow,
            ["corp.example", "xn--bcher-kva.example"]
        );
        let ups = c.proxy.upstreams.unwrap();
        assert_eq!(
            ups[0],
            Upstream::Plain("[2620:fe::fe]:5353".parse().unwrap())
        );
        assert_eq!(ups[1], Upstream::Plain("[2620:fe::9]:53".parse().unwrap()));
        assert_eq!(
            ups[2],
            Upstream::Tls {
                addr: "[2620:fe::fe]:853".parse().unwrap(),
                server_name: "dns.quad9.net".into()
            }
        );
        assert_eq!(ups[2].to_string(), "tls://[2620:fe::fe]:853@dns.quad9.net");
        assert_eq!(c.proxy.no_0x20, vec!["[2620:fe::9]:53".parse::<SocketAddr>().unwrap()]);
        assert!(c.proxy.paranoid);
        assert_eq!((c.proxy.timeout_ms, c.proxy.query_timeout_ms), (500, 1500));
        // Unset, the query budget leaves the first attempt its whole timeout.
        let slow = p("proxy:\n  timeout_ms: 8000\n").unwrap();
        assert_eq!(slow.proxy.query_timeout_ms, 8000);
        // A bad timeout_ms is reported once, not again through the budget.
        let e = one_err("proxy:\n  timeout_ms: 0\n  query_timeout_ms: 1000\n");
        assert!(e.contains("proxy.timeout_ms: 0 is out of range"), "{e}");
        assert_eq!(c.log.allow_sample, 0.25);
        assert_eq!(c.kubernetes.enrich, EnrichMode::Off);
        assert_eq!(p("kubernetes:\n  enrich: on\n").unwrap().kubernetes.enrich, EnrichMode::On);
    }

    #[test]
    fn three_errors_reported_with_lines() {
        let e = errs("xdp:\n  action: nxdomian\n  ports: [53, 0]\nlog:\n  allow_sample: 1.5\n");
        assert_eq!(
            e,
            [
                "/etc/dns-guard/guard.yaml:2: xdp.action: unknown value 'nxdomian'; expected one of nxdomain, refused, drop, log",
                "/etc/dns-guard/guard.yaml:3: xdp.ports[1]: 0 is out of range; expected 1..=65535",
                "/etc/dns-guard/guard.yaml:5: log.allow_sample: 1.5 is out of range; give a fraction from 0.0 to 1.0",
            ]
        );
    }

    #[test]
    fn errors_across_sections_all_reported() {
        let text = "\
interface: eth0/1
xdp:
  mode: turbo
  ratelimit:
    qps: 10
    burst: 0
    ipv4_prefix: 33
    ipv6_prefix: 0
proxy:
  listen: localhost
  dnssec: on
  paranoid: yes
  upstreams:
    - 1.1.1.1
    - tls://1.1.1.1
metrics:
  listen: 9253
kubernetes:
  enrich: maybe
";
        let e = errs(text);
        let lines: Vec<&str> = e.iter().map(|s| s.split(':').nth(1).unwrap()).collect();
        assert_eq!(
            lines,
            ["1", "3", "6", "7", "8", "10", "11", "12", "15", "17", "19"],
            "{e:#?}"
        );
    }

    #[test]
    fn unknown_keys_are_errors_with_suggestions() {
        let e = errs("blocklist: [/x]\nxdp:\n  ratelimt: {}\n  action: drop\n");
        assert_eq!(e.len(), 2, "{e:#?}");
        assert!(
            e[0].starts_with(
                "/etc/dns-guard/guard.yaml:1: blocklist: unknown key; did you mean 'blocklists'?"
            ),
            "{}",
            e[0]
        );
        assert!(
            e[1].contains(":3: xdp.ratelimt: unknown key; did you mean 'ratelimit'?"),
            "{}",
            e[1]
        );
        let e = one_err("proxy:\n  rebinding:\n    allowed: [x.example]\n");
        assert!(
            e.contains(":3: proxy.rebinding.allowed: unknown key; did you mean 'allow'?"),
            "{e}"
        );
        let e = one_err("proxy:\n  zzz: 1\n");
        assert!(e.ends_with("proxy.zzz: unknown key; expected one of listen, upstreams, no_0x20, dnssec, trust_anchor, tls_ca, rebinding, spoof, random_subdomain, paranoid, timeout_ms, query_timeout_ms, lameduck_s"), "{e}");
    }

    #[test]
    fn random_subdomain_keys_and_their_errors() {
        let c = parse("proxy:\n  random_subdomain:\n    threshold: 50\n    window_s: 2\n    block_s: 30\n    action: drop\n    exempt: [Corp.Example.]\n", Path::new("g.yaml")).unwrap();
        let r = &c.proxy.random_subdomain;
        assert_eq!((r.threshold, r.window_s, r.block_s, r.action), (50, 2, 30, DynBlockAction::Drop));
        assert_eq!(r.exempt, vec!["corp.example".to_string()]);
        assert_eq!(parse("proxy: {}\n", Path::new("g.yaml")).unwrap().proxy.random_subdomain, RandomSubdomainConfig::default());
        // Every bad value is reported, each at its line.
        let e = parse("proxy:\n  random_subdomain:\n    threshold: -1\n    window_s: 0\n    block_s: forever\n    action: nope\n    exempt: ['*.x.example']\n", Path::new("g.yaml")).unwrap_err().to_string();
        for want in [":3: proxy.random_subdomain.threshold", ":4: proxy.random_subdomain.window_s", ":5: proxy.random_subdomain.block_s", ":6: proxy.random_subdomain.action", ":7: proxy.random_subdomain.exempt[0]"] {
            assert!(e.contains(want), "{want} missing from:\n{e}");
        }
    }

    #[test]
    fn duplicate_key_is_an_error() {
        let e = one_err("xdp:\n  action: drop\n  action: log\n");
        assert!(
            e.contains(":3: xdp.action: duplicate key (first set on line 2)"),
            "{e}"
        );
    }

    #[test]
    fn invalid_values() {
        let cases: &[(&str, &str)] = &[
            ("interface: \"\"", "interface: '' is not a valid interface name"),
            ("interface: averyveryverylongname", "is not a valid interface name"),
            ("interface: eth 0", "is not a valid interface name"),
            ("interface: [eth0]", "interface: expected a single value, found a list"),
            ("xdp:\n  mode: fast", "xdp.mode: unknown value 'fast'; expected one of auto, native, generic"),
            ("xdp:\n  ports: []", "xdp.ports: list at least one port"),
            ("xdp:\n  ports: 53", "xdp.ports: expected a list"),
            ("xdp:\n  ports: [1,2,3,4,5,6,7,8,9]", "xdp.ports: 9 ports given; at most 8"),
            ("xdp:\n  ports: [53, 53]", "xdp.ports: port 53 is listed twice"),
            ("xdp:\n  ports: [65536]", "xdp.ports[0]: 65536 is out of range; expected 1..=65535"),
            ("xdp:\n  ports: [dns]", "xdp.ports[0]: 'dns' is not a whole number"),
            ("xdp:\n  pin_dir: bpf/x", "xdp.pin_dir: 'bpf/x' must be an absolute path"),
            ("xdp:\n  ratelimit:\n    burst: 0", "xdp.ratelimit.burst: must be at least 1 when qps > 0"),
            ("xdp:\n  ratelimit:\n    ipv4_prefix: 0", "xdp.ratelimit.ipv4_prefix: 0 is out of range; expected 1..=32"),
            ("xdp:\n  ratelimit:\n    ipv6_prefix: 129", "xdp.ratelimit.ipv6_prefix: 129 is out of range; expected 1..=128"),
            ("xdp:\n  ratelimit:\n    action: nxdomain", "xdp.ratelimit.action: unknown value 'nxdomain'; expected one of drop, refused, truncate, log"),
            ("xdp:\n  ratelimit:\n    max_clients: 0", "xdp.ratelimit.max_clients: 0 is out of range"),
            ("xdp:\n  ratelimit:\n    max_clients: 4000000000", "xdp.ratelimit.max_clients: 4000000000 is out of range; expected 1..=4194304"),
            ("xdp:\n  ratelimit:\n    qps: -1", "xdp.ratelimit.qps: '-1' is not a whole number"),
            ("xdp:\n  ratelimit:\n    qps: 2000000000", "xdp.ratelimit.qps: 2000000000 is out of range; expected 0..=1000000000"),
            ("xdp: drop", "xdp: expected a mapping of keys, found a single value"),
            ("blocklists: /etc/x.txt", "blocklists: expected a list"),
            ("proxy:\n  listen: 5353", "proxy.listen: '5353' is not a socket address"),
            ("proxy:\n  upstreams: []", "proxy.upstreams: list at least one upstream, or omit the key"),
            ("proxy:\n  upstreams: [dns.google]", "proxy.upstreams[0]: 'dns.google': expected IP[:port]"),
            ("proxy:\n  upstreams: ['1.1.1.1:0']", "proxy.upstreams[0]: '1.1.1.1:0'"),
            ("proxy:\n  upstreams: [tls://1.1.1.1]", "needs the server name"),
            ("proxy:\n  upstreams: ['tls://1.1.1.1@1.1.1.1']", "is an IP; give the name on the server's certificate"),
            ("proxy:\n  upstreams: [https://1.1.1.1]", "unsupported scheme"),
            ("proxy:\n  upstreams: ['[2620:fe::fe']", "proxy.upstreams[0]: '[2620:fe::fe': expected IP[:port]"),
            ("proxy:\n  upstreams: ['[9.9.9.9]']", "proxy.upstreams[0]: '[9.9.9.9]': expected IP[:port]"),
            ("proxy:\n  no_0x20: [dns.google]", "proxy.no_0x20[0]: 'dns.google': expected IP[:port] of an upstream"),
            ("proxy:\n  upstreams: [9.9.9.9]\n  no_0x20: [1.1.1.1]", "proxy.no_0x20: 1.1.1.1:53 is not one of proxy.upstreams"),
            ("proxy:\n  dnssec: on", "proxy.dnssec: unknown value 'on'; expected one of off, validate"),
            ("proxy:\n  paranoid: yes", "proxy.paranoid: 'yes' is not a boolean; write true or false"),
            ("proxy:\n  timeout_ms: 0", "proxy.timeout_ms: 0 is out of range; expected 1..=60000"),
            ("proxy:\n  timeout_ms: 18446744073709551615", "proxy.timeout_ms: 18446744073709551615 is out of range"),
            ("proxy:\n  query_timeout_ms: 0", "proxy.query_timeout_ms: 0 is out of range; expected 1..=60000"),
            ("proxy:\n  lameduck_s: 30", "proxy.lameduck_s: 30 is out of range; expected 0..=15"),
            (
                "proxy:\n  timeout_ms: 3000\n  query_timeout_ms: 2000",
                "proxy.query_timeout_ms: 2000 is below proxy.timeout_ms (3000)",
            ),
            ("proxy:\n  rebinding:\n    allow: ['*.corp.example']", "drop the '*.'"),
            ("proxy:\n  rebinding:\n    allow: ['a..b']", "is not a valid domain name"),
            ("proxy:\n  spoof:\n    threshold: 0", "proxy.spoof.threshold: 0 is out of range"),
            ("proxy:\n  spoof:\n    window_s: 0", "proxy.spoof.window_s: 0 is out of range"),
            ("proxy:\n  spoof:\n    tcp_cooldown_s: 86401", "proxy.spoof.tcp_cooldown_s: 86401 is out of range; expected 0..=86400"),
            ("log:\n  allow_sample: -0.1", "log.allow_sample: -0.1 is out of range"),
            ("log:\n  allow_sample: half", "log.allow_sample: 'half' is not a number"),
            ("metrics:\n  listen: ':9253'", "metrics.listen: ':9253' is not a socket address"),
            ("kubernetes:\n  enrich: yes", "kubernetes.enrich: unknown value 'yes'; expected one of auto, on, off"),
            ("kubernetes:\n  enrich: true", "kubernetes.enrich: unknown value 'true'; expected one of auto, on, off"),
            ("kubernetes:\n  watch: pods", "kubernetes.watch: unknown key; expected one of enrich"),
            ("kubernetes: on", "kubernetes: expected a mapping of keys, found a single value"),
            ("- a\n- b", "the config: expected a mapping of keys, found a list"),
        ];
        for (text, want) in cases {
            let e = one_err(text);
            assert!(
                e.contains(want),
                "config {text:?}\n  got:  {e}\n  want: {want}"
            );
        }
    }

    #[test]
    fn yaml_syntax_error_has_line() {
        let e = one_err("xdp:\n  mode: auto\n ports: [53\n");
        assert!(e.starts_with("/etc/dns-guard/guard.yaml:"), "{e}");
        assert!(e.contains("invalid YAML"), "{e}");
    }

    #[test]
    fn aliases_resolve() {
        let c = p("xdp:\n  ports: &p [53, 54]\nproxy:\n  listen: 127.0.0.1:53\nrpz:\n  ports: *p\n");
        let e = c.unwrap_err().to_string();
        // The copy is read where the alias stands, at its line.
        assert!(e.contains("guard.yaml:5: rpz: unknown key"), "{e}");
        let c = p("x: &n 54\nxdp:\n  ports: [53, *n]\n").unwrap_err().to_string();
        assert!(c.contains("guard.yaml:1: x: unknown key"), "{c}");
        assert!(!c.contains("ports"), "{c}");
    }

    /// Each alias is a deep copy, so aliases of aliases grow exponentially
    /// (nine levels of ten make 10^9 nodes from 100 lines). This one makes
    /// 50^3; the limit stops it at the line that goes over.
    #[test]
    fn an_alias_bomb_is_refused_at_its_line() {
        let row = |alias: &str| vec![alias; 50].join(", ");
        let text = format!(
            "a: &a [{}]\nb: &b [{}]\nc: &c [{}]\nxdp:\n  ports: [53]\n",
            row("x"),
            row("*a"),
            row("*b"),
        );
        let e = one_err(&text);
        assert!(e.contains("guard.yaml:3: YAML aliases here expand to more than 10000 values"), "{e}");
        // Few values, but long: 64 KiB aliased 20 times is 1.25 MiB.
        let text = format!("a: &a {}\nb: [{}]\n", "x".repeat(64 << 10), vec!["*a"; 20].join(", "));
        let e = one_err(&text);
        assert!(e.contains("guard.yaml:2: YAML aliases here expand to more than 10000 values or 1024 KiB of text"), "{e}");
    }

    #[test]
    fn load_reports_every_missing_list_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("present.txt"), "example.com\n").unwrap();
        let cfg = dir.path().join("guard.yaml");
        std::fs::write(
            &cfg,
            "blocklists:\n  - present.txt\n  - missing.txt\nallowlists:\n  - /nonexistent/allow.txt\nxdp:\n  action: bogus\n",
        )
        .unwrap();
        let e: Vec<String> = load(&cfg)
            .unwrap_err()
            .issues
            .iter()
            .map(|i| i.to_string())
            .collect();
        let f = cfg.display();
        assert_eq!(e.len(), 3, "{e:#?}");
        assert!(
            e[0].starts_with(&format!(
                "{f}:3: blocklists[1]: {}/missing.txt does not exist",
                dir.path().display()
            )),
            "{}",
            e[0]
        );
        assert!(
            e[1].starts_with(&format!(
                "{f}:5: allowlists[0]: /nonexistent/allow.txt does not exist"
            )),
            "{}",
            e[1]
        );
        assert!(
            e[2].starts_with(&format!("{f}:7: xdp.action: unknown value 'bogus'")),
            "{}",
            e[2]
        );

        std::fs::write(&cfg, "blocklists: [present.txt]\n").unwrap();
        let c = load(&cfg).unwrap();
        assert_eq!(c.blocklists, vec![dir.path().join("present.txt")]);
    }

    #[test]
    fn load_rejects_directory_as_list_and_missing_config() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("guard.yaml");
        std::fs::write(&cfg, format!("blocklists: [{}]\n", dir.path().display())).unwrap();
        let e = load(&cfg).unwrap_err().to_string();
        assert!(
            e.contains(":1: blocklists[0]:") && e.contains("is a directory"),
            "{e}"
        );

        let e = load(&dir.path().join("nope.yaml")).unwrap_err().to_string();
        assert!(e.contains("nope.yaml: cannot read config"), "{e}");
    }

    #[test]
    fn resolv_conf_is_read_only_on_demand() {
        let dir = tempfile::tempdir().unwrap();
        let rc = dir.path().join("resolv.conf");
        std::fs::write(&rc, "search svc.cluster.local\nnameserver 10.96.0.10\nnameserver fe80::1%eth0\nnameserver 2001:db8::53\noptions ndots:5\n").unwrap();
        assert_eq!(
            upstreams_from_resolv_conf(&rc).unwrap(),
            vec![
                Upstream::Plain("10.96.0.10:53".parse().unwrap()),
                Upstream::Plain("[2001:db8::53]:53".parse().unwrap())
            ]
        );
        std::fs::write(&rc, "search x\n").unwrap();
        assert!(matches!(
            upstreams_from_resolv_conf(&rc),
            Err(ResolvConfError::NoNameservers { .. })
        ));
        let configured = ProxyConfig {
            upstreams: Some(vec![Upstream::Plain("9.9.9.9:53".parse().unwrap())]),
            ..Default::default()
        };
        assert_eq!(configured.effective_upstreams().unwrap().len(), 1);
    }

    #[test]
    fn tls_upstreams_parse_with_port_v6_and_ca() {
        let c = p("proxy:\n  upstreams:\n    - tls://198.51.100.1@Dns.Example.\n    - tls://198.51.100.1:8853@dns.example\n    - 'tls://[2001:db8::1]@dns.example'\n    - 'tls://[2001:db8::1]:8853@dns.example'\n    - 'tls://2001:db8::1@dns.example'\n  tls_ca: certs/ca.pem\n").unwrap();
        let tls = |a: &str| Upstream::Tls { addr: a.parse().unwrap(), server_name: "dns.example".into() };
        assert_eq!(
            c.proxy.upstreams.unwrap(),
            [tls("198.51.100.1:853"), tls("198.51.100.1:8853"), tls("[2001:db8::1]:853"), tls("[2001:db8::1]:8853"), tls("[2001:db8::1]:853")]
        );
        assert_eq!(c.proxy.tls_ca, Some(PathBuf::from("/etc/dns-guard/certs/ca.pem")));
        assert_eq!(Config::default().proxy.tls_ca, None);
    }

    #[test]
    fn malformed_tls_upstreams_are_all_reported_with_lines() {
        let e = errs("proxy:\n  upstreams:\n    - tls://@dns.example\n    - tls://1.2.3.4@\n    - 'tls://1.2.3.4:0@dns.example'\n    - 'tls://[2001:db8::1]:x@dns.example'\n    - tls://1.2.3.4@bad..name\n    - tls://1.2.3.4@dns.example\n  tls_ca: ''\n");
        let lines: Vec<&str> = e.iter().map(|s| s.split(':').nth(1).unwrap()).collect();
        assert_eq!(lines, ["3", "4", "5", "6", "7", "9"], "{e:#?}");
        assert!(e[0].contains("upstreams[0]: 'tls://@dns.example': bad address ''"), "{}", e[0]);
        assert!(e[1].contains("upstreams[1]: 'tls://1.2.3.4@': server name '' is empty"), "{}", e[1]);
        assert!(e[2].contains("bad address '1.2.3.4:0'"), "{}", e[2]);
        assert!(e[3].contains("bad address '[2001:db8::1]:x'"), "{}", e[3]);
        assert!(e[4].contains("is not a valid domain name"), "{}", e[4]);
        assert!(e[5].contains("proxy.tls_ca: path is empty"), "{}", e[5]);
        // A tls:// upstream's address is no plain upstream for no_0x20.
        let e = one_err("proxy:\n  upstreams: [tls://1.2.3.4@dns.example]\n  no_0x20: [1.2.3.4:853]\n");
        assert!(e.contains(":3: proxy.no_0x20: 1.2.3.4:853 is not one of proxy.upstreams"), "{e}");
    }

    #[test]
    fn missing_or_bad_tls_ca_is_reported_at_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("guard.yaml");
        std::fs::write(&cfg, "proxy:\n  upstreams: [tls://192.0.2.1@dns.example]\n  tls_ca: ca.pem\n").unwrap();
        let e = load(&cfg).unwrap_err().to_string();
        assert!(e.contains(&format!(":3: proxy.tls_ca: {}/ca.pem does not exist", dir.path().display())), "{e}");
        std::fs::write(dir.path().join("ca.pem"), "not a certificate\n").unwrap();
        std::fs::write(&cfg, "proxy:\n  upstreams: ['tls://[::1@x']\n  tls_ca: ca.pem\n").unwrap();
        let e: Vec<String> = load(&cfg).unwrap_err().issues.iter().map(|i| i.to_string()).collect();
        assert_eq!(e.len(), 2, "{e:#?}");
        assert!(e[0].contains(":2: proxy.upstreams[0]: 'tls://[::1@x': bad address"), "{}", e[0]);
        assert!(e[1].contains(":3: proxy.tls_ca: ") && e[1].contains("ca.pem: no CERTIFICATE block found"), "{}", e[1]);
        let ca = rcgen::generate_simple_self_signed(vec!["ca.example".to_string()]).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.cert.pem()).unwrap();
        std::fs::write(&cfg, "proxy:\n  upstreams: [tls://192.0.2.1@dns.example]\n  tls_ca: ca.pem\n").unwrap();
        assert_eq!(load(&cfg).unwrap().proxy.tls_ca, Some(dir.path().join("ca.pem")));
    }

    #[test]
    fn a_bad_trust_anchor_is_reported_with_each_bad_line() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("guard.yaml");
        std::fs::write(&cfg, "proxy:\n  upstreams: [192.0.2.1]\n  trust_anchor: root.key\n").unwrap();
        std::fs::write(dir.path().join("root.key"), ". IN DNSKEY 257 3 8 AwEAAa==\n. IN DS nope\n. IN TXT x\n").unwrap();
        let e: Vec<String> = load(&cfg).unwrap_err().issues.iter().map(|i| i.to_string()).collect();
        assert_eq!(e.len(), 1, "{e:#?}");
        assert!(e[0].contains(":3: proxy.trust_anchor: bad trust anchor file"), "{}", e[0]);
        assert!(e[0].contains("root.key:2: ") && e[0].contains("root.key:3: "), "every bad line: {}", e[0]);
        std::fs::write(dir.path().join("root.key"), "; nothing here\n").unwrap();
        let e = load(&cfg).unwrap_err().to_string();
        assert!(e.contains("holds no DNSKEY or DS record"), "{e}");
        // Not validating: run never reads it, so only its readability counts.
        std::fs::write(&cfg, "proxy:\n  upstreams: [192.0.2.1]\n  dnssec: off\n  trust_anchor: root.key\n").unwrap();
        assert!(load(&cfg).is_ok());
    }

    #[test]
    fn exit_code_is_ex_usage() {
        assert_eq!(EXIT_BAD_CONFIG, 64);
    }
}
