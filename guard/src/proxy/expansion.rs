//! Wildcard expansions in an answer, and their proofs (RFC 4035 §5.3.4,
//! RFC 5155 §8.8), judged over the records hickory verified.
//!
//! An answer RRSIG whose label count is below its owner's signs a wildcard
//! expansion, and the expansion holds only beside a denial of the next
//! closer name from the same zone. hickory 0.26.3 checks that only for the
//! query name, with the first answer RRSIG's label count, not at all when
//! every authority record is insecure, and wrongly for NSEC zones
//! (hickory-dns #2882). So each expansion in the answer section is checked
//! here on its own: a secure NSEC or NSEC3, signed by the zone that signed
//! the expansion and by no one else, must cover its next closer name.

use std::collections::{HashMap, HashSet};

use hickory_proto::{
    dnssec::{rdata::DNSSECRData, Nsec3HashAlgorithm, Proof},
    op::Message,
    rr::{Name, RData, Record, RecordType},
};

use super::{
    dnssec::{common_labels, covers},
    positive_proof::{hash_covers, owner_hash, rrsig},
};

/// RFC 9276 §3.2: NSEC3 with more iterations than this may be treated as
/// insecure (hickory's soft limit too).
const MAX_ITERATIONS: u16 = 100;

/// More distinct expansions than this in one answer are not judged one by
/// one (a chain of `MAX_CHAIN` CNAMEs has at most one each): unproven.
const MAX_EXPANSIONS: usize = 17;

/// What the expansions of an answer come to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expansions {
    /// The answer has none that needs a proof.
    None,
    /// Every one is proven.
    Proven,
    /// One is covered only by NSEC3 past `MAX_ITERATIONS` or by an opt-out
    /// span: an unsigned delegation could hold the name. Insecure at best.
    AtMostInsecure,
    /// One has no proof: the expansion may be replayed for a name that exists.
    Unproven(String),
}

/// The expansions of `m`'s answer section, each judged on its own. Only
/// data hickory verified needs its expansion proven: an insecure zone's
/// (signed, but with no DS) is insecure whatever its NSEC records say.
/// Linear in the message: signers are read once, each distinct expansion
/// is judged once, and there are at most `MAX_EXPANSIONS` of them.
pub fn judge(m: &Message) -> Expansions {
    let secure: HashSet<(Name, RecordType)> =
        m.answers.iter().filter(|r| r.proof == Proof::Secure).map(|r| (r.name.to_lowercase(), r.record_type())).collect();
    let signers = sole_signers(&m.authorities);
    let mut judged: HashSet<(Name, u8, &Name)> = HashSet::new();
    let mut all = Expansions::None;
    for r in &m.answers {
        let Some(sig) = rrsig(r) else { continue };
        let (labels, signer) = (sig.input().num_labels, &sig.input().signer_name);
        let owner = r.name.to_lowercase();
        if labels >= r.name.num_labels() || !secure.contains(&(owner.clone(), sig.input().type_covered)) {
            continue;
        }
        if !judged.insert((owner, labels, signer)) {
            continue;
        }
        if judged.len() > MAX_EXPANSIONS {
            return Expansions::Unproven(format!("more than {MAX_EXPANSIONS} wildcard expansions in one answer"));
        }
        match proof_of(&r.name, labels, signer, &m.authorities, &signers) {
            Expansions::Proven if all == Expansions::None => all = Expansions::Proven,
            Expansions::AtMostInsecure => all = Expansions::AtMostInsecure,
            unproven @ Expansions::Unproven(_) => return unproven,
            _ => {}
        }
    }
    all
}

/// For each (owner, covered type) with RRSIGs in `section`, the one zone
/// that signs it; `None` when several do. A record hickory verified with
/// any one signature must not be counted for another signer named beside it.
fn sole_signers(section: &[Record]) -> HashMap<(Name, RecordType), Option<&Name>> {
    let mut signers: HashMap<(Name, RecordType), Option<&Name>> = HashMap::new();
    for r in section {
        let Some(sig) = rrsig(r) else { continue };
        let signer = &sig.input().signer_name;
        signers
            .entry((r.name.to_lowercase(), sig.input().type_covered))
            .and_modify(|sole| {
                if sole.is_some_and(|s| s != signer) {
                    *sole = None;
                }
            })
            .or_insert(Some(signer));
    }
    signers
}

/// The proof of the expansion of `name` from the wildcard `labels` labels
/// up, signed by `signer`, among `authorities`.
fn proof_of(
    name: &Name,
    labels: u8,
    signer: &Name,
    authorities: &[Record],
    signers: &HashMap<(Name, RecordType), Option<&Name>>,
) -> Expansions {
    let denials = || {
        authorities.iter().filter(|r| {
            r.proof == Proof::Secure
                && matches!(r.record_type(), RecordType::NSEC | RecordType::NSEC3)
                && signers.get(&(r.name.to_lowercase(), r.record_type())) == Some(&Some(signer))
        })
    };
    let unproven = |how: &str| Expansions::Unproven(format!("no {how} of {signer} proves the wildcard expansion at {name}"));
    let nsec3s: Vec<(&Name, _)> = denials()
        .filter_map(|r| match &r.data {
            RData::DNSSEC(DNSSECRData::NSEC3(n)) if r.name.base_name() == *signer => Some((&r.name, n)),
            _ => None,
        })
        .collect();
    if let Some((_, first)) = nsec3s.first() {
        if first.iterations() > MAX_ITERATIONS {
            return Expansions::AtMostInsecure;
        }
        let next_closer = name.trim_to(labels as usize + 1);
        let Ok(hashed) = Nsec3HashAlgorithm::SHA1.hash(first.salt(), &next_closer, first.iterations()) else {
            return unproven("NSEC3 hash");
        };
        let covering = nsec3s.iter().find(|(owner, n)| {
            n.salt() == first.salt()
                && n.iterations() == first.iterations()
                && owner_hash(owner).is_some_and(|h| hash_covers(&h, n.next_hashed_owner_name(), hashed.as_ref()))
        });
        return match covering {
            Some((_, n)) if n.opt_out() => Expansions::AtMostInsecure,
            Some(_) => Expansions::Proven,
            None => unproven("covering NSEC3"),
        };
    }
    let covered = denials().any(|r| match &r.data {
        // The closest encloser is the wildcard's parent: no closer name
        // exists that could hold data of its own (RFC 4035 §5.3.4).
        RData::DNSSEC(DNSSECRData::NSEC(n)) => {
            let next = n.next_domain_name();
            covers(&r.name, next, name) && common_labels(name, &r.name).max(common_labels(name, next)) == labels
        }
        _ => false,
    });
    if covered {
        Expansions::Proven
    } else {
        unproven("covering NSEC")
    }
}

#[cfg(test)]
mod tests {
    use hickory_proto::{
        dnssec::{
            rdata::{SigInput, NSEC, NSEC3, RRSIG},
            Algorithm,
        },
        op::Query,
        rr::rdata::A,
    };

    use super::*;
    use crate::proxy::positive_proof::tests::n;

    fn sig_over(owner: &str, covered: RecordType, labels: u8, signer: &str) -> Record {
        let input = SigInput {
            type_covered: covered,
            algorithm: Algorithm::ECDSAP256SHA256,
            num_labels: labels,
            original_ttl: 60,
            sig_expiration: 0.into(),
            sig_inception: 0.into(),
            key_tag: 1,
            signer_name: n(signer),
        };
        Record::from_rdata(n(owner), 60, RData::DNSSEC(DNSSECRData::RRSIG(RRSIG::from_sig(input, vec![0; 64]))))
    }

    /// x.wild.example. A, signed by example. as an expansion of
    /// *.wild.example., beside `authorities`. hickory's proofs are set by hand.
    fn expansion(authorities: Vec<Record>) -> Message {
        let mut m = Message::response(1, hickory_proto::op::OpCode::Query);
        m.add_query(Query::query(n("x.wild.example."), RecordType::A));
        let mut a = Record::from_rdata(n("x.wild.example."), 60, RData::A(A::new(192, 0, 2, 1)));
        a.proof = Proof::Secure;
        m.add_answers([a, sig_over("x.wild.example.", RecordType::A, 2, "example.")]);
        m.add_authorities(authorities);
        m
    }

    /// A secure NSEC from `owner` to `next`, signed by each of `signers`.
    fn nsec(owner: &str, next: &str, signers: &[&str]) -> Vec<Record> {
        let mut r = Record::from_rdata(n(owner), 60, RData::DNSSEC(DNSSECRData::NSEC(NSEC::new(n(next), [RecordType::A]))));
        r.proof = Proof::Secure;
        [vec![r], signers.iter().map(|s| sig_over(owner, RecordType::NSEC, n(owner).num_labels(), s)).collect()].concat()
    }

    /// A secure NSEC3 of example. covering (or not) the hash of wild's next
    /// closer name x.wild.example.
    fn nsec3(covering: bool, iterations: u16, opt_out: bool, zone: &str) -> Vec<Record> {
        let h = Nsec3HashAlgorithm::SHA1.hash(&[], &n("x.wild.example."), iterations).unwrap().as_ref().to_vec();
        let (mut from, mut to) = (h.clone(), h.clone());
        let last = from.len() - 1;
        if covering {
            from[last] = from[last].wrapping_sub(1);
            to[last] = to[last].wrapping_add(1);
        } else {
            from[last] = from[last].wrapping_add(1);
            to[last] = to[last].wrapping_add(2);
        }
        let owner = format!("{}.{zone}", data_encoding::BASE32_DNSSEC.encode(&from));
        let data = NSEC3::new(Nsec3HashAlgorithm::SHA1, opt_out, iterations, vec![], to, [RecordType::A]);
        let mut r = Record::from_rdata(n(&owner), 60, RData::DNSSEC(DNSSECRData::NSEC3(data)));
        r.proof = Proof::Secure;
        vec![r, sig_over(&owner, RecordType::NSEC3, 2, zone)]
    }

    #[test]
    fn an_expansion_needs_a_denial_of_its_next_closer_name_from_its_own_zone() {
        let unproven = |m: &Message| matches!(judge(m), Expansions::Unproven(_));
        // *.wild.example. < x.wild.example. < z.wild.example., closest encloser wild.example.
        assert_eq!(judge(&expansion(nsec("*.wild.example.", "z.wild.example.", &["example."]))), Expansions::Proven);
        assert!(unproven(&expansion(nsec("y.wild.example.", "z.wild.example.", &["example."]))), "not covered");
        // Covering, but its closest encloser is example.: wild.example. could hold data.
        assert!(unproven(&expansion(nsec("a.example.", "b.example.", &["example."]))), "closest encloser");
        // The right span, signed by another zone (a parent's NSEC at a cut
        // spans its child's names), or by it and another: proves nothing.
        assert!(unproven(&expansion(nsec("*.wild.example.", "z.wild.example.", &["."]))), "parent's NSEC");
        assert!(unproven(&expansion(nsec("*.wild.example.", "z.wild.example.", &["example.", "."]))), "two signers");
        let mut insecure = nsec("*.wild.example.", "z.wild.example.", &["example."]);
        insecure[0].proof = Proof::Insecure;
        assert!(unproven(&expansion(insecure)), "an NSEC hickory did not verify");
        assert!(unproven(&expansion(vec![])), "no denial at all");

        assert_eq!(judge(&expansion(nsec3(true, 0, false, "example."))), Expansions::Proven);
        assert!(unproven(&expansion(nsec3(false, 0, false, "example."))), "NSEC3 that does not cover");
        assert!(unproven(&expansion(nsec3(true, 0, false, "wild.example."))), "NSEC3 of another zone");
        assert_eq!(judge(&expansion(nsec3(true, 0, true, "example."))), Expansions::AtMostInsecure, "opt-out");
        assert_eq!(judge(&expansion(nsec3(true, 150, false, "example."))), Expansions::AtMostInsecure, "RFC 9276");

        // Data hickory did not verify (a signed zone with no DS): insecure
        // whatever its NSEC records say, so nothing to prove.
        let mut unverified = expansion(vec![]);
        unverified.answers[0].proof = Proof::Insecure;
        assert_eq!(judge(&unverified), Expansions::None);
        // Many distinct expansions in one answer: not judged one by one.
        let mut crowd = expansion(nsec("*.wild.example.", "z.wild.example.", &["example."]));
        for i in 0..MAX_EXPANSIONS {
            let owner = format!("x{i}.wild.example.");
            let mut data = Record::from_rdata(n(&owner), 60, RData::A(A::new(192, 0, 2, 1)));
            data.proof = Proof::Secure;
            crowd.add_answers([data, sig_over(&owner, RecordType::A, 2, "example.")]);
        }
        assert!(unproven(&crowd), "{:?}", judge(&crowd));
        crowd.answers.truncate(2 + 2 * (MAX_EXPANSIONS - 1));
        assert_eq!(judge(&crowd), Expansions::Proven, "{MAX_EXPANSIONS} are judged");

        // No expansion: nothing to prove.
        let mut plain = expansion(vec![]);
        plain.answers[1] = sig_over("x.wild.example.", RecordType::A, 3, "example.");
        assert_eq!(judge(&plain), Expansions::None);
    }
}
