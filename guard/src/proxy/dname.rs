//! DNAME substitution (RFC 6672) as a validator must see it.
//!
//! A server answers a name below a DNAME's owner with the signed DNAME and
//! a CNAME it synthesizes on the fly, which no key signs (RFC 6672 §3.1).
//! A validator checks the DNAME's signature and that the CNAME is exactly
//! its synthesis (§5.3.3). hickory 0.26.3 has no DNAME type and judges the
//! unsigned CNAME on its own: bogus in a signed zone. So the validator is
//! handed the answer without the CNAMEs the DNAMEs beside them imply, and
//! the client gets them, with their TTLs capped by the DNAME's.

use std::collections::{HashMap, HashSet};

use hickory_proto::{
    dnssec::rdata::DNSSECRData,
    op::{Message, Query, ResponseCode},
    rr::{DNSClass, Name, RData, Record, RecordType},
    serialize::binary::{BinDecodable, BinDecoder},
};

/// More DNAMEs than this in one answer and none is used: a real answer
/// carries one or two, and the checks below stay linear in the answer.
const MAX_DNAMES: usize = 8;

/// A DNAME of the answer section.
struct Dname {
    owner: Name,
    target: Name,
    ttl: u32,
    class: DNSClass,
}

/// A DNAME record's target, `None` for any other record or an unreadable
/// target. hickory-proto 0.26 reads a DNAME's RDATA as unknown bytes: the
/// target's uncompressed wire form (RFC 6672 §2.5).
fn dname_target(r: &Record) -> Option<Name> {
    let RData::Unknown { code: RecordType::DNAME, rdata } = &r.data else { return None };
    let mut decoder = BinDecoder::new(&rdata.anything);
    let target = Name::read(&mut decoder).ok()?;
    decoder.is_empty().then_some(target)
}

/// What the DNAME `owner` → `target` makes of `name` (RFC 6672 §2.2): the
/// labels of `name` below `owner`, followed by `target`. `None` when `name`
/// is not strictly below `owner` or the result would be too long.
fn substitute(name: &Name, owner: &Name, target: &Name) -> Option<Name> {
    let (labels, owner_labels) = (name.iter().count(), owner.iter().count());
    if labels <= owner_labels || !owner.zone_of(name) {
        return None;
    }
    Name::from_labels(name.iter().take(labels - owner_labels)).ok()?.append_domain(target).ok()
}

/// The synthesized CNAMEs of an answer section.
struct Syntheses {
    dnames: Vec<Dname>,
    /// Owners of the CNAMEs an RRSIG covers, lowercased.
    signed_cnames: HashSet<Name>,
}

impl Syntheses {
    fn of(answers: &[Record]) -> Self {
        let mut dnames: Vec<Dname> = answers
            .iter()
            .filter_map(|r| Some(Dname { owner: r.name.clone(), target: dname_target(r)?, ttl: r.ttl, class: r.dns_class }))
            .take(MAX_DNAMES + 1)
            .collect();
        let mut signed_cnames = HashSet::new();
        if dnames.len() > MAX_DNAMES || dnames.is_empty() {
            return Syntheses { dnames: Vec::new(), signed_cnames };
        }
        for r in answers {
            let RData::DNSSEC(DNSSECRData::RRSIG(sig)) = &r.data else { continue };
            match sig.input().type_covered {
                RecordType::CNAME => {
                    signed_cnames.insert(r.name.to_lowercase());
                }
                // A DNAME signed as a wildcard expansion synthesizes nothing:
                // RFC 6672 §3.3 leaves wildcard DNAMEs undefined, and servers
                // do not synthesize from them.
                RecordType::DNAME if sig.input().num_labels < r.name.num_labels() => dnames.retain(|d| d.owner != r.name),
                _ => {}
            }
        }
        Syntheses { dnames, signed_cnames }
    }

    /// The DNAME `r` is the exact, unsigned synthesis of, with the CNAME's target.
    fn source<'r>(&self, r: &'r Record) -> Option<(&Dname, &'r Name)> {
        let RData::CNAME(target) = &r.data else { return None };
        if self.dnames.is_empty() || self.signed_cnames.contains(&r.name.to_lowercase()) {
            return None;
        }
        let dname = self.dnames.iter().find(|d| {
            d.class == r.dns_class && substitute(&r.name, &d.owner, &d.target).is_some_and(|s| s == target.0)
        })?;
        Some((dname, &target.0))
    }
}

/// `msg` without the unsigned answer CNAMEs that are exactly the synthesis
/// of a DNAME in the same answer section, and the question hickory must
/// check it against; `None` when it has none. The DNAME stays and is
/// validated as any RRset: whatever it proves, the synthesis is proven
/// with it, and any other CNAME is judged as before.
///
/// hickory takes an answer with no record at the query name for a denial,
/// so the question follows the synthesized CNAMEs from the query name to
/// the name they lead to. A CNAME query is answered by the synthesis
/// itself: its question becomes the DNAME the last one came from.
pub fn without_synthesized_cnames(query: &Query, msg: &Message) -> Option<(Query, Message)> {
    let syntheses = Syntheses::of(&msg.answers);
    if syntheses.dnames.is_empty() {
        return None; // nearly every answer: nothing allocated
    }
    let mut chain: HashMap<Name, (&Name, &Name)> = HashMap::new();
    let mut keep = Vec::with_capacity(msg.answers.len());
    for r in &msg.answers {
        let source = syntheses.source(r);
        if let Some((dname, target)) = source {
            // Two syntheses of one name (nested DNAMEs): not a shape any
            // server gives, so hickory judges it as it is.
            if chain.insert(r.name.to_lowercase(), (target, &dname.owner)).is_some() {
                return None;
            }
        }
        keep.push(source.is_none());
    }
    if chain.is_empty() {
        return None;
    }
    let (mut name, mut rtype) = (query.name().clone(), query.query_type());
    // Each step uses a CNAME of the answer: no loop outlasts the count.
    for _ in 0..chain.len() {
        let Some((target, dname_owner)) = chain.get(&name.to_lowercase()) else { break };
        if query.query_type() == RecordType::CNAME {
            // The synthesis is the whole answer: a NOERROR one.
            if msg.metadata.response_code != ResponseCode::NoError {
                return None;
            }
            (name, rtype) = ((*dname_owner).clone(), RecordType::DNAME);
            break;
        }
        name = (*target).clone();
    }
    let mut question = Query::query(name, rtype);
    question.set_query_class(query.query_class());
    let mut stripped = msg.clone();
    let mut keep = keep.into_iter();
    stripped.answers.retain(|_| keep.next().unwrap_or(true));
    Some((question, stripped))
}

/// Caps each synthesized CNAME's TTL at its DNAME's (RFC 6672 §3.1: the
/// synthesis lives as long as the DNAME). Its own TTL is not signed, so an
/// upstream could otherwise keep a mapping in caches after the DNAME is
/// gone. Returns how many were lowered.
pub fn cap_synthesized_ttls(answers: &mut [Record]) -> usize {
    let caps: Vec<Option<u32>> = {
        let syntheses = Syntheses::of(answers);
        answers.iter().map(|r| syntheses.source(r).map(|(d, _)| d.ttl)).collect()
    };
    let mut lowered = 0;
    for (r, cap) in answers.iter_mut().zip(caps) {
        if let Some(cap) = cap.filter(|cap| r.ttl > *cap) {
            r.ttl = cap;
            lowered += 1;
        }
    }
    lowered
}

#[cfg(test)]
pub(super) mod tests {
    use hickory_proto::rr::rdata::{CNAME, NULL};

    use super::*;
    use crate::proxy::positive_proof::tests::{a, answer, n, Zone};

    pub(in crate::proxy) fn dname_record(owner: &str, target: &str, ttl: u32) -> Record {
        let mut wire = Vec::new();
        let mut encoder = hickory_proto::serialize::binary::BinEncoder::new(&mut wire);
        hickory_proto::serialize::binary::BinEncodable::emit(&n(target), &mut encoder).unwrap();
        Record::from_rdata(n(owner), ttl, RData::Unknown { code: RecordType::DNAME, rdata: NULL::with(wire) })
    }

    pub(in crate::proxy) fn cname(owner: &str, target: &str, ttl: u32) -> Record {
        Record::from_rdata(n(owner), ttl, RData::CNAME(CNAME(n(target))))
    }

    fn types(msg: &Message) -> Vec<(String, RecordType)> {
        msg.answers.iter().map(|r| (r.name.to_string(), r.record_type())).collect()
    }

    #[test]
    fn substitution_replaces_the_owner_suffix_and_nothing_else() {
        let s = |name, owner, target| substitute(&n(name), &n(owner), &n(target)).map(|s| s.to_string());
        assert_eq!(s("www.old.example.", "old.example.", "new.example."), Some("www.new.example.".into()));
        assert_eq!(s("a.b.Old.example.", "old.example.", "x.net."), Some("a.b.x.net.".into()), "owners match without case");
        assert_eq!(s("old.example.", "old.example.", "new.example."), None, "the owner itself is not substituted");
        assert_eq!(s("www.other.example.", "old.example.", "new.example."), None);
        assert_eq!(s("www.xold.example.", "old.example.", "new.example."), None, "labels, not a string suffix");
        // RFC 6672 §2.2: a result longer than 255 octets is YXDOMAIN, not a name.
        let long = format!("{}.", vec!["a".repeat(62); 4].join("."));
        assert_eq!(s("www.old.example.", "old.example.", &long), None);
    }

    #[test]
    fn only_unsigned_exact_syntheses_of_a_dname_beside_them_are_taken_out() {
        let z = Zone::new("example.");
        let d = dname_record("old.example.", "new.example.", 300);
        let d_sig = z.sign_with(std::slice::from_ref(&d), 2, 0, u32::MAX);
        let target = a("www.new.example.", 1);
        let genuine = [d.clone(), d_sig.clone(), cname("www.old.example.", "www.new.example.", 300), target.clone()];

        let (q, msg) = answer("www.old.example.", genuine.to_vec(), vec![]);
        let (question, stripped) = without_synthesized_cnames(&q, &msg).expect("the synthesis is taken out");
        assert_eq!(
            types(&stripped),
            [("old.example.", RecordType::DNAME), ("old.example.", RecordType::RRSIG), ("www.new.example.", RecordType::A)]
                .map(|(o, t)| (o.to_string(), t))
        );
        assert_eq!(stripped.queries, msg.queries);
        // The question follows the synthesis to the data it leads to.
        assert_eq!((question.name(), question.query_type()), (&n("www.new.example."), RecordType::A));
        // A CNAME query is answered by the synthesis: its DNAME is checked.
        let mut cname_query = msg.clone();
        cname_query.answers.truncate(3);
        let q = Query::query(n("www.old.example."), RecordType::CNAME);
        let (question, _) = without_synthesized_cnames(&q, &cname_query).unwrap();
        assert_eq!((question.name(), question.query_type()), (&n("old.example."), RecordType::DNAME));
        // Asked for the CNAME, an NXDOMAIN is no synthesis's answer.
        cname_query.metadata.response_code = ResponseCode::NXDomain;
        assert_eq!(without_synthesized_cnames(&q, &cname_query), None);
        // Two syntheses of one name, from nested DNAMEs: left to hickory.
        let nested = [
            d.clone(),
            dname_record("www.old.example.", "x.example.", 300),
            cname("a.www.old.example.", "a.www.new.example.", 300),
            cname("a.www.old.example.", "a.x.example.", 300),
        ];
        let (q, msg) = answer("a.www.old.example.", nested.to_vec(), vec![]);
        assert_eq!(without_synthesized_cnames(&q, &msg), None);
        // A chain through two DNAMEs, after a signed CNAME at the query name.
        let chained = [
            cname("alias.example.", "www.old.example.", 300),
            z.sign_with(&[cname("alias.example.", "www.old.example.", 300)], 2, 0, u32::MAX),
            d.clone(),
            d_sig.clone(),
            cname("www.old.example.", "www.new.example.", 300),
            dname_record("new.example.", "newer.example.", 300),
            cname("www.new.example.", "www.newer.example.", 300),
            a("www.newer.example.", 1),
        ];
        let (q, msg) = answer("alias.example.", chained.to_vec(), vec![]);
        let (question, stripped) = without_synthesized_cnames(&q, &msg).unwrap();
        assert_eq!(stripped.answers.len(), 6);
        assert_eq!(question.name(), &n("alias.example."), "the query name's own CNAME is signed");
        let (q, msg) = answer("www.old.example.", chained[2..].to_vec(), vec![]);
        let (question, _) = without_synthesized_cnames(&q, &msg).unwrap();
        assert_eq!(question.name(), &n("www.newer.example."));

        // A CNAME that is not the synthesis stays, for the validator to judge.
        for wrong in ["evil.example.", "www.new.example.net.", "old.new.example."] {
            let (q, msg) = answer("www.old.example.", vec![d.clone(), d_sig.clone(), cname("www.old.example.", wrong, 300)], vec![]);
            assert_eq!(without_synthesized_cnames(&q, &msg), None, "{wrong}");
        }
        // No DNAME, or one in another class: nothing to take out.
        let (q, msg) = answer("www.old.example.", vec![cname("www.old.example.", "www.new.example.", 300), target.clone()], vec![]);
        assert_eq!(without_synthesized_cnames(&q, &msg), None);
        let mut chaos = d.clone();
        chaos.dns_class = hickory_proto::rr::DNSClass::CH;
        let (q, msg) = answer("www.old.example.", vec![chaos, cname("www.old.example.", "www.new.example.", 300)], vec![]);
        assert_eq!(without_synthesized_cnames(&q, &msg), None);
        // A CNAME that carries its own signature is validated as itself.
        let c = cname("www.old.example.", "www.new.example.", 300);
        let c_sig = z.sign_with(std::slice::from_ref(&c), 3, 0, u32::MAX);
        let (q, msg) = answer("www.old.example.", vec![d.clone(), d_sig.clone(), c, c_sig], vec![]);
        assert_eq!(without_synthesized_cnames(&q, &msg), None);
        // A DNAME signed as a wildcard expansion synthesizes nothing.
        let w_sig = z.sign_with(std::slice::from_ref(&d), 1, 0, u32::MAX);
        let (q, msg) = answer("www.old.example.", vec![d.clone(), w_sig, cname("www.old.example.", "www.new.example.", 300)], vec![]);
        assert_eq!(without_synthesized_cnames(&q, &msg), None);
        // More DNAMEs than any real answer carries: none is used.
        let crowd: Vec<Record> = (0..=MAX_DNAMES).map(|i| dname_record(&format!("o{i}.example."), "new.example.", 300)).collect();
        let (q, msg) = answer("www.o0.example.", [crowd.clone(), vec![cname("www.o0.example.", "www.new.example.", 300)]].concat(), vec![]);
        assert_eq!(without_synthesized_cnames(&q, &msg), None);
        let (q, msg) = answer("www.o0.example.", [crowd[..MAX_DNAMES].to_vec(), vec![cname("www.o0.example.", "www.new.example.", 300)]].concat(), vec![]);
        assert!(without_synthesized_cnames(&q, &msg).is_some(), "{MAX_DNAMES} are used");
        // A DNAME whose RDATA has bytes after the target is unreadable.
        let RData::Unknown { rdata, .. } = &d.data else { unreachable!() };
        let mut trailing = d.clone();
        trailing.data = RData::Unknown { code: RecordType::DNAME, rdata: NULL::with([rdata.anything.clone(), vec![0]].concat()) };
        let (q, msg) = answer("www.old.example.", vec![trailing, cname("www.old.example.", "www.new.example.", 300)], vec![]);
        assert_eq!(without_synthesized_cnames(&q, &msg), None);
    }

    #[test]
    fn a_synthesized_cname_lives_no_longer_than_its_dname() {
        let mut answers = vec![
            dname_record("old.example.", "new.example.", 300),
            cname("www.old.example.", "www.new.example.", 86_400),
            cname("mail.old.example.", "mail.new.example.", 60),
            cname("other.example.", "www.new.example.", 86_400),
        ];
        assert_eq!(cap_synthesized_ttls(&mut answers), 1);
        assert_eq!(answers.iter().map(|r| r.ttl).collect::<Vec<_>>(), [300, 300, 60, 86_400]);
    }
}
