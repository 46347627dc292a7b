//! The one Prometheus registry of the process. Every layer records into
//! the families here; the admin server (`metrics.listen`) encodes them.
//! Names follow Prometheus conventions and, for spoofing, PowerDNS
//! Recursor's vocabulary (unexpected packets, spoof prevents, case
//! mismatches), which operators already know.

use std::sync::{Arc, Mutex};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabels {
    pub layer: &'static str,
    pub verdict: &'static str,
    pub upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub upstream: String,
}

/// Why a response was refused before validation even began.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SpoofLabels {
    pub upstream: String,
    /// `wrong_source`, `wrong_txid`, `wrong_question`, `case_mismatch`
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PathLabels {
    pub path: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: &'static str,
}

/// Handles to every metric family. Cloning is cheap (all Arcs inside).
#[derive(Clone)]
pub struct Metrics {
    pub registry: Arc<Mutex<Registry>>,
    /// Proxy verdicts (allow, block, rebind, bogus, spoof, poisoning-attempt, servfail).
    pub verdicts: Family<VerdictLabels, Counter>,
    /// Upstream exchange latency, seconds, per upstream.
    pub upstream_latency: Family<UpstreamLabels, Histogram>,
    /// 1 while an upstream passes its health checks, else 0.
    pub upstream_healthy: Family<UpstreamLabels, Gauge>,
    /// 1 while an upstream is forced to TCP after spoofing, else 0.
    pub upstream_tcp_forced: Family<UpstreamLabels, Gauge>,
    /// Responses dropped by the source/txid/question checks.
    pub spoof_responses: Family<SpoofLabels, Counter>,
    /// Names in the active list table.
    pub list_names: Family<ListLabels, Gauge>,
    /// List reloads by result (ok, error).
    pub list_reloads: Family<ResultLabels, Counter>,
    /// Time to parse, build and install a list table, seconds.
    pub list_load_seconds: Histogram,
    /// Kernel memory charged to the active XDP list table (its map's
    /// memlock). A reload frees the old table, so this is the whole cost.
    pub xdp_table_bytes: Gauge,
    /// Pods with an IP in the enrichment cache (`kubernetes.enrich`).
    pub k8s_pods: Gauge,
    /// Failed pod list/watch calls; each is retried with backoff.
    pub k8s_watch_errors: Counter,
    /// Dynamic blocks started by the random-subdomain defence.
    pub dynblocks_started: Counter,
    /// Zones whose subdomains are blocked right now.
    pub dynblocks_active: Gauge,
    /// Validated answers by path: `shortcut` (a signed positive answer
    /// proven with a zone's proven keys and remembered signatures) or
    /// `full` (hickory's validation).
    pub dnssec_validations: Family<PathLabels, Counter>,
    /// The shortcut's signature checks by source: `memo` (verified before)
    /// or `crypto`.
    pub dnssec_signature_checks: Family<SourceLabels, Counter>,
    /// Times hickory's validation cache started over with a new proof
    /// ledger (`proxy::proof_ledger`), the old one being full.
    pub dnssec_cache_renewals: Counter,
    /// Verdict lines lost: the log's reader fell behind or went away.
    pub verdict_log_dropped: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("dns_guard");
        let verdicts = Family::<VerdictLabels, Counter>::default();
        registry.register("verdicts", "Verdicts by layer, verdict and upstream", verdicts.clone());
        let upstream_latency = Family::<UpstreamLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5])
        });
        registry.register("upstream_latency_seconds", "Upstream exchange latency", upstream_latency.clone());
        let upstream_healthy = Family::<UpstreamLabels, Gauge>::default();
        registry.register("upstream_healthy", "1 while the upstream passes health checks", upstream_healthy.clone());
        let upstream_tcp_forced = Family::<UpstreamLabels, Gauge>::default();
        registry.register(
            "upstream_tcp_forced",
            "1 while the upstream is queried over TCP after spoofed responses",
            upstream_tcp_forced.clone(),
        );
        let spoof_responses = Family::<SpoofLabels, Counter>::default();
        registry.register(
            "spoof_responses",
            "Responses refused by the source, txid or question checks",
            spoof_responses.clone(),
        );
        let list_names = Family::<ListLabels, Gauge>::default();
        registry.register("list_names", "Names in the active list table", list_names.clone());
        let list_reloads = Family::<ResultLabels, Counter>::default();
        registry.register("list_reloads", "List reloads by result", list_reloads.clone());
        let list_load_seconds = Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0]);
        registry.register("list_load_seconds", "Time to parse, build and install the lists", list_load_seconds.clone());
        let xdp_table_bytes = Gauge::default();
        registry.register(
            "xdp_table_bytes",
            "Kernel memory of the active XDP list table (map memlock)",
            xdp_table_bytes.clone(),
        );
        let k8s_pods = Gauge::default();
        registry.register("k8s_pods", "Pods whose IPs the verdict log can name", k8s_pods.clone());
        let k8s_watch_errors = Counter::default();
        registry.register("k8s_watch_errors", "Failed Kubernetes pod list or watch calls (retried with backoff)", k8s_watch_errors.clone());
        let dynblocks_started = Counter::default();
        registry.register(
            "random_subdomain_blocks",
            "Zones blocked for a flood of failing random subdomains",
            dynblocks_started.clone(),
        );
        let dynblocks_active = Gauge::default();
        registry.register("random_subdomain_blocked_zones", "Zones whose subdomains are blocked now", dynblocks_active.clone());
        let dnssec_validations = Family::<PathLabels, Counter>::default();
        registry.register(
            "dnssec_validations",
            "Validated answers by path (shortcut: proven with remembered keys and signatures; full)",
            dnssec_validations.clone(),
        );
        let dnssec_signature_checks = Family::<SourceLabels, Counter>::default();
        registry.register(
            "dnssec_signature_checks",
            "Signature checks of the validation shortcut by source (memo, crypto)",
            dnssec_signature_checks.clone(),
        );
        let dnssec_cache_renewals = Counter::default();
        registry.register(
            "dnssec_validation_cache_renewals",
            "Times the validator's cache of DNSSEC proofs started over because its proof ledger was full",
            dnssec_cache_renewals.clone(),
        );
        let verdict_log_dropped = Counter::default();
        registry.register(
            "verdict_log_dropped",
            "Verdict lines lost because the log's reader fell behind (its queue full) or went away",
            verdict_log_dropped.clone(),
        );
        Self {
            registry: Arc::new(Mutex::new(registry)),
            verdicts,
            upstream_latency,
            upstream_healthy,
            upstream_tcp_forced,
            spoof_responses,
            list_names,
            list_reloads,
            list_load_seconds,
            xdp_table_bytes,
            k8s_pods,
            k8s_watch_errors,
            dynblocks_started,
            dynblocks_active,
            dnssec_validations,
            dnssec_signature_checks,
            dnssec_cache_renewals,
            verdict_log_dropped,
        }
    }

    /// The registry in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        prometheus_client::encoding::text::encode(&mut out, &registry).expect("writing to a String");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_appear_in_the_text_format() {
        let m = Metrics::new();
        m.verdicts.get_or_create(&VerdictLabels { layer: "proxy", verdict: "allow", upstream: "198.18.0.54:53".into() }).inc();
        let text = m.encode();
        assert!(text.contains(r#"dns_guard_verdicts_total{layer="proxy",verdict="allow",upstream="198.18.0.54:53"} 1"#), "{text}");
        assert!(text.contains("# TYPE dns_guard_list_load_seconds histogram"), "{text}");
    }
}
