//! Check 6's shortcut for the commonest secure answer: a signed positive
//! answer, wildcard-expanded or not, from a zone whose DNSKEYs are already
//! proven.
//!
//! hickory 0.26.3 verifies every signature in every answer afresh, and
//! remembers its results per query name only. A wildcard serves each new
//! name with the same signed bytes (RFC 4035 §5.3.2 rebuilds the `*` owner
//! before verifying), and the NSEC3 record that proves the expansion is one
//! of a handful per zone. Each new name under a signed wildcard therefore
//! cost two ECDSA verifications (about 60 µs each on the bench machines).
//! Here a verified signature is remembered by a SHA-256 of key, signature
//! and signed data, as Unbound's rrset cache remembers validated RRsets, so
//! a repeat costs a hash.
//!
//! The shortcut only ever says secure. Any other shape, and anything it
//! cannot prove, is declined and goes to hickory's full validation, which
//! then gives the verdict. It is never more lenient than hickory on what it
//! accepts: the same RFC 4035 §5.3 checks (signer, labels, validity window,
//! key tag, algorithm, zone key bit, not revoked) on every RRset of the
//! answer and authority sections, and RFC 5155 §8.8 / RFC 4035 §5.3.4
//! proofs for a wildcard expansion (an opt-out NSEC3 is no proof here). A
//! helper's review found no answer it accepts that hickory would not.

use std::{
    collections::HashSet,
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        Arc, Mutex,
    },
};

use data_encoding::BASE32_DNSSEC;
use hickory_proto::{
    dnssec::{
        crypto::Digest,
        rdata::{DNSSECRData, SigInput, DNSKEY, NSEC3, RRSIG},
        Algorithm, DigestType, Nsec3HashAlgorithm, PublicKey, Verifier, TBS,
    },
    op::{Message, Query, ResponseCode},
    rr::{DNSClass, Name, RData, Record, RecordType, SerialNumber},
};

use prometheus_client::metrics::counter::Counter;

use super::dnssec::{common_labels, covers};
use crate::metrics::{Metrics, SourceLabels};

/// Verified signatures remembered at most; past it the memo starts over.
/// 32 bytes each, so about 1 MiB with the set's overhead.
const MEMO_ENTRIES: usize = 16_384;
/// RRsets in one answer the shortcut takes on; more go to hickory.
const MAX_RRSETS: usize = 8;
/// Signatures tried per RRset, keys per signature (hickory's limit of key
/// tag collisions), and signature checks per answer that the memo does not
/// answer (KeyTrap, CVE-2023-50387: an answer must not buy unbounded crypto
/// work; the full validation that follows a decline has its own limits).
const MAX_SIGS_PER_RRSET: usize = 4;
pub const MAX_KEYS_PER_TAG: usize = 2;
const MAX_CHECKS_PER_ANSWER: u32 = 8;
/// hickory's soft NSEC3 iteration limit (RFC 9276 §3.2): above it hickory
/// calls a proof insecure, so such answers are left to it.
const MAX_NSEC3_ITERATIONS: u16 = 100;

/// Why the shortcut left an answer to the full validation (logged at
/// debug; hickory's verdict is the one that counts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Decline {
    #[error("not NOERROR")]
    NotNoError,
    #[error("a DNSSEC or meta query type")]
    MetaQueryType,
    #[error("an answer record of another name (CNAME chain)")]
    AnswerOfAnotherName,
    #[error("an answer record of another type")]
    AnswerOfAnotherType,
    #[error("a signature over another type")]
    SignatureOverAnotherType,
    #[error("answer signatures by different signers")]
    DifferentSigners,
    #[error("no signed answer")]
    NoSignedAnswer,
    #[error("signer is not an ancestor of the query name")]
    SignerNotAncestor,
    #[error("no proven keys for the signer")]
    NoProvenKeys,
    #[error("a record of another class")]
    AnotherClass,
    #[error("answer signatures disagree on the label count")]
    LabelCountsDisagree,
    #[error("too many authority RRsets")]
    TooManyAuthorityRrsets,
    #[error("an authority record outside the signer's zone")]
    AuthorityOutsideZone,
    #[error("an expanded authority RRset")]
    ExpandedAuthority,
    #[error("denial records beside a direct answer")]
    DenialBesideDirectAnswer,
    /// An RRset none of whose signatures by the zone verifies within the
    /// limits: each was out of its validity window, had impossible labels,
    /// failed with the keys of its tag, or lay past a limit.
    #[error("no signature over an RRset verifies with the zone's keys")]
    Unverified,
    /// `Unverified` for the answer RRset itself.
    #[error("the answer's signatures do not verify with the zone's keys")]
    AnswerUnverified,
    #[error("NSEC3 records with different parameters")]
    Nsec3ParametersDiffer,
    #[error("NSEC3 iterations over the limit")]
    Nsec3IterationsOverLimit,
    #[error("the NSEC3 hash cannot be computed")]
    Nsec3Hash,
    #[error("the covering NSEC3 is opt-out")]
    OptOutCover,
    #[error("no NSEC3 covers the next closer name")]
    NoNsec3Cover,
    #[error("no NSEC covers the expanded name")]
    NoNsecCover,
    #[error("both NSEC and NSEC3")]
    BothNsecAndNsec3,
    #[error("a wildcard expansion without NSEC or NSEC3")]
    ExpansionWithoutDenial,
}

/// Signers of one RRset the second opinion looks at: a genuine answer has
/// one, two while a zone changes its signer.
pub const MAX_SIGNERS: usize = 2;
/// RRsets of one answer the second opinion checks, and the signature
/// checks it may buy for them (the memo's hits are free); more is a no.
const MAX_OPINION_RRSETS: usize = 24;
const MAX_OPINION_CHECKS: u32 = 32;

/// Signature checks the crypto may still make for one answer, and whether
/// one was refused for want of them.
pub struct CheckBudget {
    left: AtomicU32,
    starved: AtomicBool,
}

impl CheckBudget {
    pub fn new(checks: u32) -> Self {
        CheckBudget { left: AtomicU32::new(checks), starved: AtomicBool::new(false) }
    }

    /// For the second opinion: `MAX_OPINION_CHECKS`, for both its looks.
    pub fn for_opinion() -> Self {
        Self::new(MAX_OPINION_CHECKS)
    }

    fn take(&self) -> bool {
        let taken = self.left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok();
        if !taken {
            self.starved.store(true, Ordering::Relaxed);
        }
        taken
    }

    /// A check was refused: the verdict was cut short, not reached.
    pub fn starved(&self) -> bool {
        self.starved.load(Ordering::Relaxed)
    }
}

/// Signatures already verified, by SHA-256 of (algorithm, key, signature,
/// signed data). Only successes are kept: a failure is hickory's to judge.
#[derive(Default)]
pub struct SignatureMemo {
    seen: Mutex<HashSet<[u8; 32]>>,
    /// Checks the memo answered, and those the crypto did.
    hits: Counter,
    checked: Counter,
}

impl SignatureMemo {
    /// A memo that counts into `metrics` (`dnssec_signature_checks`).
    pub fn counted(metrics: &Metrics) -> Self {
        let checks = |source| metrics.dnssec_signature_checks.get_or_create(&SourceLabels { source }).clone();
        SignatureMemo { seen: Mutex::default(), hits: checks("memo"), checked: checks("crypto") }
    }

    /// True when `sig` by `key` over `tbs` verifies (now or before).
    /// `budget`: checks the crypto may still make for this answer.
    fn verify(&self, key: &DNSKEY, tbs: &TBS, sig: &[u8], budget: &CheckBudget) -> bool {
        let public = key.public_key().public_bytes();
        let (klen, slen) = ((public.len() as u32).to_be_bytes(), (sig.len() as u32).to_be_bytes());
        let alg = [u8::from(key.algorithm())];
        // Lengths first: no two inputs share a byte string.
        let parts: [&[u8]; 6] = [&alg, &klen, public, &slen, sig, tbs.as_ref()];
        let id = Digest::from_iter(parts, DigestType::SHA256).ok().and_then(|d| <[u8; 32]>::try_from(d.as_ref()).ok());
        if id.is_some_and(|id| self.lock().contains(&id)) {
            self.hits.inc();
            return true;
        }
        if !budget.take() {
            return false;
        }
        self.checked.inc();
        // Any error (a key that does not parse, an unsupported algorithm)
        // fails hickory's check of this key the same way.
        let ok = key.verify(tbs.as_ref(), sig).is_ok();
        if let (true, Some(id)) = (ok, id) {
            let mut seen = self.lock();
            if seen.len() >= MEMO_ENTRIES {
                seen.clear();
            }
            seen.insert(id);
        }
        ok
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<[u8; 32]>> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Signatures the crypto has checked so far.
    pub fn checked(&self) -> u64 {
        self.checked.get()
    }
}

/// The zone whose keys would prove `msg`: the signer of its answer. Declines
/// every shape but a positive answer of the query's own name and type.
pub fn signer(query: &Query, msg: &Message) -> Result<Name, Decline> {
    if msg.metadata.response_code != ResponseCode::NoError {
        return Err(Decline::NotNoError);
    }
    let (qname, qtype) = (query.name(), query.query_type());
    if qtype.is_dnssec() || matches!(qtype, RecordType::ANY | RecordType::AXFR | RecordType::IXFR | RecordType::OPT) {
        return Err(Decline::MetaQueryType);
    }
    let mut signer: Option<&Name> = None;
    let mut data = false;
    for r in &msg.answers {
        if r.name != *qname {
            return Err(Decline::AnswerOfAnotherName);
        }
        match rrsig(r) {
            Some(sig) if sig.input().type_covered == qtype => {
                let s = &sig.input().signer_name;
                if signer.is_some_and(|prev| prev != s) {
                    return Err(Decline::DifferentSigners);
                }
                signer = Some(s);
            }
            Some(_) => return Err(Decline::SignatureOverAnotherType),
            None if r.record_type() == qtype => data = true,
            None => return Err(Decline::AnswerOfAnotherType),
        }
    }
    let signer = signer.filter(|_| data).ok_or(Decline::NoSignedAnswer)?;
    if !signer.zone_of(qname) {
        return Err(Decline::SignerNotAncestor);
    }
    Ok(signer.clone())
}

/// Proves `msg`, the answer to `query`, secure with `keys`, the proven
/// DNSKEY set of `zone` (from `signer`). `now`: seconds since the epoch.
pub fn prove(query: &Query, msg: &Message, zone: &Name, keys: &[DNSKEY], memo: &SignatureMemo, now: u32) -> Result<(), Decline> {
    let class = query.query_class();
    if msg.answers.iter().chain(&msg.authorities).chain(&msg.additionals).any(|r| r.dns_class != class) {
        return Err(Decline::AnotherClass);
    }
    let budget = CheckBudget::new(MAX_CHECKS_PER_ANSWER);
    let prover = Prover::new(zone, keys, memo, now, class, &budget);

    // The answer RRset: every signature must claim the same label count, so
    // whether it is an expansion does not depend on which one verifies.
    let qname = query.name();
    let mut labels = msg.answers.iter().filter_map(rrsig).map(|s| s.input().num_labels);
    let expanded_from = labels.next().ok_or(Decline::NoSignedAnswer)?;
    if labels.any(|l| l != expanded_from) {
        return Err(Decline::LabelCountsDisagree);
    }
    prover
        .rrset(qname, query.query_type(), &msg.answers)
        .map_err(|why| if why == Decline::Unverified { Decline::AnswerUnverified } else { why })?;

    // Every authority RRset, as hickory requires for a secure summary.
    let mut rrsets: Vec<(&Name, RecordType)> = Vec::new();
    for r in msg.authorities.iter().filter(|r| rrsig(r).is_none()) {
        if !rrsets.iter().any(|(n, t)| *t == r.record_type() && **n == r.name) {
            if rrsets.len() + 1 >= MAX_RRSETS {
                return Err(Decline::TooManyAuthorityRrsets);
            }
            rrsets.push((&r.name, r.record_type()));
        }
    }
    for (owner, rtype) in rrsets {
        let in_zone = match rtype {
            RecordType::NSEC3 => owner.base_name() == *zone,
            _ => zone.zone_of(owner),
        };
        if !in_zone {
            return Err(Decline::AuthorityOutsideZone);
        }
        // RFC 4035 §5.3.4 / RFC 5155 §8.8: no wildcard for proof records.
        if prover.rrset(owner, rtype, &msg.authorities)? != owner.num_labels() {
            return Err(Decline::ExpandedAuthority);
        }
    }

    if expanded_from < qname.num_labels() {
        prover.wildcard(qname, expanded_from, &msg.authorities)?;
    } else if msg.authorities.iter().any(|r| matches!(r.record_type(), RecordType::NSEC | RecordType::NSEC3)) {
        // A denial beside a direct answer makes no sense; hickory calls it
        // bogus, and so it stays hickory's to judge.
        return Err(Decline::DenialBesideDirectAnswer);
    }
    Ok(())
}

/// One RRset that a "secure" verdict vouches for, with the signers above
/// its owner whose signatures over it the message carries.
#[derive(Debug, PartialEq)]
pub struct SignedRrset {
    pub owner: Name,
    pub rtype: RecordType,
    pub in_authority: bool,
    pub signers: Vec<Name>,
}

/// The second opinion on hickory's "secure" (`Validator::second_opinion`):
/// every RRset of `msg`'s answer and authority sections, each with its
/// signers. Err when no signature could make the answer pass: too many
/// RRsets or signers, or an RRset no signer above its owner signs. hickory
/// never calls an unsigned RRset secure by itself (a CNAME synthesized from
/// a DNAME included), so one here can only have come through its cache.
pub fn signed_rrsets(msg: &Message, class: DNSClass) -> Result<Vec<SignedRrset>, &'static str> {
    // hickory refuses such a response; a record of another class is covered
    // by no signature checked here.
    if msg.answers.iter().chain(&msg.authorities).any(|r| r.dns_class != class) {
        return Err("a record of another class");
    }
    let mut rrsets: Vec<SignedRrset> = Vec::new();
    for (in_authority, section) in [(false, &msg.answers), (true, &msg.authorities)] {
        for r in section.iter().filter(|r| r.record_type() != RecordType::RRSIG) {
            let (owner, rtype) = (&r.name, r.record_type());
            if rrsets.iter().any(|s| s.in_authority == in_authority && s.rtype == rtype && s.owner == *owner) {
                continue;
            }
            let mut signers: Vec<Name> = Vec::new();
            for sig in section.iter().filter(|r| r.name == *owner).filter_map(rrsig) {
                let signer = &sig.input().signer_name;
                if sig.input().type_covered == rtype && signer.zone_of(owner) && !signers.contains(signer) {
                    signers.push(signer.clone());
                }
            }
            if signers.len() > MAX_SIGNERS {
                return Err("signatures by too many signers");
            }
            if signers.is_empty() {
                return Err("an RRset no zone above it signs");
            }
            if rrsets.len() == MAX_OPINION_RRSETS {
                return Err("too many RRsets");
            }
            rrsets.push(SignedRrset { owner: owner.clone(), rtype, in_authority, signers });
        }
    }
    Ok(rrsets)
}

/// Why an answer failed the second opinion.
#[derive(Debug, PartialEq)]
pub enum OpinionFailure {
    /// The crypto budget ran out: asking again would only spend more.
    Budget,
    /// `signers` signed an RRset but none of their signatures verifies.
    /// `unknown_keys`: zones, over the whole answer, that signed with a key
    /// (algorithm and tag) not among their proven keys, all of them when
    /// those are none; their keys may have changed since they were proven.
    Unverified { signers: Vec<Name>, unknown_keys: Vec<Name> },
}

/// Whether every RRset of `rrsets` (from `signed_rrsets(msg)`) verifies
/// with the proven keys of one of its signers (`keys`; none for a zone not
/// there), within `budget`. As hickory requires, only an answer RRset other
/// than NSEC/NSEC3 may be a wildcard expansion, and an NSEC3 must belong to
/// its signer's zone. Limits count as failures: the answer is one hickory
/// called secure, and its cache of proofs is what is being second-guessed.
pub fn rrsets_verify(
    msg: &Message,
    rrsets: &[SignedRrset],
    keys: &[(Name, Arc<[DNSKEY]>)],
    memo: &SignatureMemo,
    now: u32,
    class: DNSClass,
    budget: &CheckBudget,
) -> Result<(), OpinionFailure> {
    let provers: Vec<Prover<'_>> = keys.iter().map(|(zone, k)| Prover::new(zone, k, memo, now, class, budget)).collect();
    let section_of = |s: &SignedRrset| if s.in_authority { &msg.authorities } else { &msg.answers };
    let failed = rrsets.iter().find(|s| {
        let section = section_of(s);
        let may_expand = !s.in_authority && !matches!(s.rtype, RecordType::NSEC | RecordType::NSEC3);
        let signed_by = |prover: &Prover<'_>| {
            (s.rtype != RecordType::NSEC3 || s.owner.base_name() == *prover.zone)
                && prover.rrset(&s.owner, s.rtype, section).is_ok_and(|labels| may_expand || labels == s.owner.num_labels())
        };
        !provers.iter().filter(|p| s.signers.contains(p.zone)).any(signed_by)
    });
    let Some(failed) = failed else { return Ok(()) };
    if budget.starved() {
        return Err(OpinionFailure::Budget);
    }
    // No crypto: signatures whose key tag none of the signer's keys has.
    let mut unknown_keys: Vec<Name> = Vec::new();
    for s in rrsets {
        for zone in &s.signers {
            let prover = provers.iter().find(|p| p.zone == zone);
            let unknown = section_of(s).iter().filter(|r| r.name == s.owner).filter_map(rrsig).any(|sig| {
                sig.input().type_covered == s.rtype
                    && sig.input().signer_name == *zone
                    && prover.is_none_or(|p| p.keys_for(sig).next().is_none())
            });
            if unknown && !unknown_keys.contains(zone) {
                unknown_keys.push(zone.clone());
            }
        }
    }
    Err(OpinionFailure::Unverified { signers: failed.signers.clone(), unknown_keys })
}

/// For the chain of trust (RFC 4035 §5.1-5.2, `Validator::zone_keys`):
/// whether the RRset (`owner`, `rtype`) among `section`, a DS or DNSKEY
/// set, has a signature by `zone` that verifies with `keys` and was not
/// expanded from a wildcard.
pub fn chain_rrset_verifies(
    owner: &Name,
    rtype: RecordType,
    section: &[Record],
    zone: &Name,
    keys: &[DNSKEY],
    memo: &SignatureMemo,
    now: u32,
) -> bool {
    let budget = CheckBudget::new(MAX_CHECKS_PER_ANSWER);
    let prover = Prover::new(zone, keys, memo, now, DNSClass::IN, &budget);
    prover.rrset(owner, rtype, section).is_ok_and(|labels| labels == owner.num_labels())
}

struct Prover<'a> {
    zone: &'a Name,
    /// The zone's keys that may sign (zone key bit set, not revoked), by
    /// algorithm and key tag.
    keys: Vec<(Algorithm, u16, &'a DNSKEY)>,
    memo: &'a SignatureMemo,
    now: SerialNumber,
    class: DNSClass,
    /// Signature checks left for the crypto, for the whole answer.
    budget: &'a CheckBudget,
}

impl<'a> Prover<'a> {
    fn new(zone: &'a Name, keys: &'a [DNSKEY], memo: &'a SignatureMemo, now: u32, class: DNSClass, budget: &'a CheckBudget) -> Self {
        let keys = keys
            .iter()
            .filter(|k| k.zone_key() && !k.revoke())
            .filter_map(|k| k.calculate_key_tag().ok().map(|tag| (k.algorithm(), tag, k)))
            .collect();
        Prover { zone, keys, memo, now: SerialNumber::new(now), class, budget }
    }

    /// Our keys that could have made `sig`.
    fn keys_for<'s>(&'s self, sig: &'s RRSIG) -> impl Iterator<Item = &'a DNSKEY> + 's {
        let input = sig.input();
        self.keys.iter().filter(move |(alg, tag, _)| *alg == input.algorithm && *tag == input.key_tag).map(|(_, _, k)| *k)
    }
}

impl Prover<'_> {
    /// RFC 4035 §5.3.1-5.3.3 for the RRset (`owner`, `rtype`) among
    /// `section`, with that section's signatures only (as hickory does).
    /// Returns the Labels field of the signature that verified.
    fn rrset(&self, owner: &Name, rtype: RecordType, section: &[Record]) -> Result<u8, Decline> {
        // Signatures by other signers, by none of our keys, out of their
        // validity window or with impossible labels cannot verify, and do
        // not count against the limits (a DNSKEY set during an algorithm
        // rollover carries many, a re-signed set old ones beside new).
        let usable = |input: &SigInput| {
            input.num_labels <= owner.num_labels()
                && input.num_labels >= self.zone.num_labels()
                && input.sig_inception <= self.now
                && self.now <= input.sig_expiration
        };
        let sigs = section
            .iter()
            .filter(|r| r.name == *owner)
            .filter_map(rrsig)
            .filter(|s| s.input().type_covered == rtype && s.input().signer_name == *self.zone)
            .filter(|s| usable(s.input()) && self.keys_for(s).next().is_some())
            .take(MAX_SIGS_PER_RRSET);
        for sig in sigs {
            let input = sig.input();
            let Ok(tbs) = TBS::from_input(owner, self.class, input, section.iter()) else { continue };
            for key in self.keys_for(sig).take(MAX_KEYS_PER_TAG) {
                if self.memo.verify(key, &tbs, sig.sig(), self.budget) {
                    return Ok(input.num_labels);
                }
            }
        }
        Err(Decline::Unverified)
    }

    /// The answer was expanded from the wildcard `*.<closest encloser>`,
    /// whose `labels` labels are those of the query name's tail: a verified
    /// NSEC3 must cover the next closer name (RFC 5155 §8.8), or a verified
    /// NSEC the query name itself (RFC 4035 §5.3.4).
    fn wildcard(&self, qname: &Name, labels: u8, authority: &[Record]) -> Result<(), Decline> {
        let nsec3s: Vec<(&Name, &NSEC3)> = authority
            .iter()
            .filter_map(|r| match &r.data {
                RData::DNSSEC(DNSSECRData::NSEC3(n)) => Some((&r.name, n)),
                _ => None,
            })
            .collect();
        let nsecs: Vec<(&Name, &Name)> = authority
            .iter()
            .filter_map(|r| match &r.data {
                RData::DNSSEC(DNSSECRData::NSEC(n)) => Some((&r.name, n.next_domain_name())),
                _ => None,
            })
            .collect();
        match (nsec3s.first(), nsecs.is_empty()) {
            (Some(&(_, first)), true) => {
                let (salt, iterations) = (first.salt(), first.iterations());
                if nsec3s.iter().any(|(_, n)| n.salt() != salt || n.iterations() != iterations || n.hash_algorithm() != first.hash_algorithm()) {
                    return Err(Decline::Nsec3ParametersDiffer);
                }
                if iterations > MAX_NSEC3_ITERATIONS {
                    return Err(Decline::Nsec3IterationsOverLimit);
                }
                let next_closer = qname.trim_to(labels as usize + 1);
                let hashed = Nsec3HashAlgorithm::SHA1.hash(salt, &next_closer, iterations).map_err(|_| Decline::Nsec3Hash)?;
                let covering = nsec3s.iter().find(|(owner, n)| {
                    owner_hash(owner).is_some_and(|h| hash_covers(&h, n.next_hashed_owner_name(), hashed.as_ref()))
                });
                match covering {
                    // Opt-out (RFC 5155 §6): an unsigned delegation may hide
                    // in that span, and the answer belong to it. Not proven.
                    Some((_, n)) if n.opt_out() => Err(Decline::OptOutCover),
                    Some(_) => Ok(()),
                    None => Err(Decline::NoNsec3Cover),
                }
            }
            (None, false) => {
                let covered = nsecs.iter().any(|(owner, next)| {
                    covers(owner, next, qname) && common_labels(qname, owner).max(common_labels(qname, next)) == labels
                });
                covered.then_some(()).ok_or(Decline::NoNsecCover)
            }
            (Some(_), false) => Err(Decline::BothNsecAndNsec3),
            (None, true) => Err(Decline::ExpansionWithoutDenial),
        }
    }
}

pub(super) fn rrsig(r: &Record) -> Option<&RRSIG> {
    match &r.data {
        RData::DNSSEC(DNSSECRData::RRSIG(sig)) => Some(sig),
        _ => None,
    }
}

/// The hash an NSEC3 owner name carries in its first label (base32hex).
pub(super) fn owner_hash(owner: &Name) -> Option<Vec<u8>> {
    let label = owner.iter().next()?;
    BASE32_DNSSEC.decode(&label.to_ascii_lowercase()).ok()
}

/// `hash` lies strictly between `owner` and `next`; the zone's last NSEC3
/// wraps around to its first (RFC 5155 §8.3).
pub(super) fn hash_covers(owner: &[u8], next: &[u8], hash: &[u8]) -> bool {
    if owner < next {
        owner < hash && hash < next
    } else {
        owner < hash || hash < next
    }
}

/// Also the signing helpers of `dnssec`'s tests.
#[cfg(test)]
pub(super) mod tests;
