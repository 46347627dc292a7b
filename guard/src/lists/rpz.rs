//! Response Policy Zone files (draft-vixie-dnsop-dns-rpz): QNAME triggers
//! with the NXDOMAIN, DROP and PASSTHRU actions, which are the ones a
//! kernel name table can express. Everything else in a zone is reported as
//! unsupported rather than half-applied.

use super::{
    numbered_lines, Sink, ALLOW_SELF, ALLOW_SUB, BLOCK_SELF, BLOCK_SUB, FORCE_DROP, FORCE_DROP_SUB, FORCE_NXDOMAIN,
    FORCE_NXDOMAIN_SUB,
};

/// Whether the text is a zone file. Decided per file, not per line, because
/// `name CNAME .` would otherwise be read as a malformed hosts line.
pub(super) fn looks_like_rpz(text: &str) -> bool {
    for (_, line) in numbered_lines(text) {
        let line = line.trim_start();
        if line.starts_with('$') {
            let directive = line.split_ascii_whitespace().next().unwrap_or_default();
            if directive.eq_ignore_ascii_case("$TTL") || directive.eq_ignore_ascii_case("$ORIGIN") {
                return true;
            }
            continue;
        }
        if matches!(
            line.as_bytes().first(),
            None | Some(b'#' | b'!' | b';' | b'|')
        ) {
            continue;
        }
        let line = super::text::strip_comment(line);
        let mut fields = line.split_ascii_whitespace();
        let first = fields.next().unwrap_or_default();
        // Hosts lines start with an address; their names are not types.
        if super::text::sink_address(first).is_some() {
            continue;
        }
        // A type counts only where a record has it: after the owner and an
        // optional TTL and class, so a word in a name list is no record.
        let is_ttl_or_class = |f: &&str| is_ttl(f) || is_class(f);
        let rtype = fields.clone().take(2).take_while(is_ttl_or_class).count();
        if fields.nth(rtype).is_some_and(|f| ["SOA", "CNAME", "NS"].iter().any(|t| f.eq_ignore_ascii_case(t))) {
            return true;
        }
    }
    false
}

pub(super) fn parse(text: &str, sink: &mut Sink<'_>) {
    let mut zone = Zone::default();
    let mut fields: Vec<&str> = Vec::with_capacity(8);
    // Where the open multi-line record began, and the lines it has taken.
    let mut opened = (0, 0);
    for (no, raw) in numbered_lines(text) {
        let line = raw.split_once(';').map_or(raw, |(l, _)| l);
        let opens = line.bytes().filter(|&b| b == b'(').count();
        let closes = line.bytes().filter(|&b| b == b')').count();
        if zone.paren_depth > 0 {
            // Continuation of a multi-line record (in practice the SOA
            // timers), already accounted for on its first line.
            zone.paren_depth = (zone.paren_depth + opens).saturating_sub(closes);
            opened.1 += usize::from(!line.trim().is_empty());
            continue;
        }
        opened = (no, 0);
        fields.clear();
        fields.extend(
            line.split(|c: char| c.is_ascii_whitespace() || c == '(' || c == ')')
                .filter(|f| !f.is_empty()),
        );
        if fields.is_empty() {
            continue;
        }
        zone.paren_depth = opens.saturating_sub(closes);
        let multi_line = zone.paren_depth > 0;
        let inherits_owner = raw.starts_with([' ', '\t']);
        zone.record(&fields, inherits_owner, multi_line, no, sink);
    }
    // A `(` never closed took every line after it: say so, or a typo would
    // drop the rest of the file without a word.
    if zone.paren_depth > 0 && opened.1 > 0 {
        let (line, taken) = opened;
        sink.skip(line, format!("`(` is never closed: the {taken} lines after it were read as part of this record and skipped"));
        sink.skipped += taken - 1;
    }
}

#[derive(Default)]
struct Zone {
    /// `$ORIGIN` (or the SOA owner), normalized, without trailing dot.
    origin: Option<String>,
    /// Owner of the previous record, inherited by lines that start blank.
    last_owner: Option<String>,
    paren_depth: usize,
}

/// What a supported CNAME target asks for.
enum Action {
    Nxdomain,
    Drop,
    Passthru,
}

impl Zone {
    fn record(
        &mut self,
        fields: &[&str],
        inherits: bool,
        multi_line: bool,
        no: u32,
        sink: &mut Sink<'_>,
    ) {
        if fields[0].starts_with('$') {
            self.directive(fields, no, sink);
            return;
        }
        let (owner, rest) = if inherits {
            match &self.last_owner {
                Some(o) => (o.clone(), fields),
                None => {
                    sink.skip(
                        no,
                        "record starts with blank space but no earlier record names an owner",
                    );
                    return;
                }
            }
        } else {
            (fields[0].to_owned(), &fields[1..])
        };
        self.last_owner = Some(owner.clone());

        // RFC 1035 §5.1: [TTL] [class] or [class] [TTL] before the type.
        let mut i = 0;
        while i < rest.len().min(2) && (is_ttl(rest[i]) || is_class(rest[i])) {
            i += 1;
        }
        let Some(rtype) = rest.get(i) else {
            sink.skip(no, format!("record for `{owner}` has no type"));
            return;
        };
        let rdata = &rest[i + 1..];
        if rtype.eq_ignore_ascii_case("SOA") {
            if self.origin.is_none() && owner.ends_with('.') {
                self.origin = super::normalize(&owner).ok();
            }
            return;
        }
        if rtype.eq_ignore_ascii_case("NS") {
            return;
        }
        if multi_line {
            sink.skip(
                no,
                format!("multi-line {rtype} record is not supported in an RPZ list"),
            );
            return;
        }
        if !rtype.eq_ignore_ascii_case("CNAME") {
            sink.skip(
                no,
                format!(
                    "unsupported RPZ action: local-data {} record for `{owner}` (supported: \
                     CNAME ., CNAME rpz-drop., CNAME rpz-passthru.)",
                    rtype.to_ascii_uppercase()
                ),
            );
            return;
        }
        let [target] = rdata else {
            sink.skip(no, format!("CNAME for `{owner}` needs exactly one target"));
            return;
        };
        let action = match target.to_ascii_lowercase().as_str() {
            "." => Action::Nxdomain,
            "rpz-drop." => Action::Drop,
            "rpz-passthru." => Action::Passthru,
            "*." => {
                sink.skip(no, "unsupported RPZ action: CNAME *. (NODATA)");
                return;
            }
            "rpz-tcp-only." => {
                sink.skip(no, "unsupported RPZ action: CNAME rpz-tcp-only.");
                return;
            }
            _ => {
                sink.skip(
                    no,
                    format!("unsupported RPZ action: CNAME {target} (local-data rewrite)"),
                );
                return;
            }
        };
        let Some(trigger) = self.relative(&owner, no, sink) else {
            return;
        };
        if let Some(kind) = trigger
            .rsplit('.')
            .next()
            .filter(|l| l.len() > 4 && l[..4].eq_ignore_ascii_case("rpz-"))
        {
            sink.skip(
                no,
                format!(
                    "unsupported RPZ trigger {} (only QNAME triggers are supported)",
                    kind.to_ascii_lowercase()
                ),
            );
            return;
        }
        let (name, sub) = match trigger.strip_prefix("*.") {
            Some(name) => (name, true),
            None if trigger == "*" => {
                sink.skip(no, "RPZ trigger `*` would match every name; refusing it");
                return;
            }
            None => (trigger, false),
        };
        let flags = match (action, sub) {
            (Action::Nxdomain, false) => BLOCK_SELF | FORCE_NXDOMAIN,
            (Action::Nxdomain, true) => BLOCK_SUB | FORCE_NXDOMAIN_SUB,
            (Action::Drop, false) => BLOCK_SELF | FORCE_DROP,
            (Action::Drop, true) => BLOCK_SUB | FORCE_DROP_SUB,
            (Action::Passthru, false) => ALLOW_SELF,
            (Action::Passthru, true) => ALLOW_SUB,
        };
        sink.add_name(name, flags, no);
    }

    /// The trigger name of an owner: relative owners are the QNAME as
    /// written; absolute owners lose the zone origin.
    fn relative<'o>(&self, owner: &'o str, no: u32, sink: &mut Sink<'_>) -> Option<&'o str> {
        if owner == "@" {
            sink.skip(no, "a policy on the zone apex `@` names no domain; skipped");
            return None;
        }
        let Some(absolute) = owner.strip_suffix('.') else {
            return Some(owner);
        };
        let Some(origin) = &self.origin else {
            // No $ORIGIN and no SOA: the zone name lives in the server's
            // config, which we cannot see; take the owner as the QNAME.
            return Some(absolute);
        };
        let (a, o) = (absolute.as_bytes(), origin.as_bytes());
        if a.len() > o.len() + 1
            && a[a.len() - o.len() - 1] == b'.'
            && a[a.len() - o.len()..].eq_ignore_ascii_case(o)
        {
            return Some(&absolute[..a.len() - o.len() - 1]);
        }
        sink.skip(
            no,
            format!("owner `{owner}` is outside the zone origin `{origin}.`"),
        );
        None
    }

    fn directive(&mut self, fields: &[&str], no: u32, sink: &mut Sink<'_>) {
        let name = fields[0];
        if name.eq_ignore_ascii_case("$TTL") {
            return;
        }
        if name.eq_ignore_ascii_case("$ORIGIN") {
            let Some(arg) = fields.get(1) else {
                sink.skip(no, "$ORIGIN without a name");
                return;
            };
            // RFC 1035 §5.1: a relative $ORIGIN is relative to the current one.
            let full = match (arg.ends_with('.'), &self.origin) {
                (false, Some(o)) => format!("{arg}.{o}"),
                _ => (*arg).to_owned(),
            };
            match super::normalize(&full) {
                Ok(o) => self.origin = Some(o),
                Err(e) => sink.skip(no, format!("bad $ORIGIN: {e}")),
            }
            return;
        }
        if name.eq_ignore_ascii_case("$INCLUDE") {
            sink.skip(
                no,
                "$INCLUDE is not supported; list the included file in guard.yaml instead",
            );
            return;
        }
        sink.skip(no, format!("unknown zone file directive {name}"));
    }
}

fn is_ttl(f: &str) -> bool {
    // Plain seconds or BIND's 1h30m style.
    f.as_bytes()[0].is_ascii_digit()
        && f.bytes()
            .all(|b| b.is_ascii_digit() || b"smhdwSMHDW".contains(&b))
}

fn is_class(f: &str) -> bool {
    ["IN", "CH", "HS", "CS", "ANY"]
        .iter()
        .any(|c| c.eq_ignore_ascii_case(f))
}

#[cfg(test)]
mod tests {
    use super::super::tests::{diags, flags, parse};
    use super::super::*;
    use super::*;

    const ZONE: &str = "\
$TTL 300
$ORIGIN rpz.example.
@ IN SOA ns1.rpz.example. admin.rpz.example. (
        2024010101 ; serial
        3600 900 604800 300 )
  IN NS ns1.rpz.example.
; comment
bad.com CNAME .
*.bad.com CNAME .
drop.net 300 IN CNAME rpz-drop.
*.dropsub.net IN 60 CNAME rpz-drop.
ok.bad.com CNAME rpz-passthru.
*.okzone.bad.com CNAME rpz-passthru.
abs.org.rpz.example. CNAME .
Upper.ORG. CNAME .
nodata.com CNAME *.
tcp.com CNAME rpz-tcp-only.
walled.com CNAME garden.example.
a.com A 10.0.0.1
txt.com TXT \"hello\"
32.1.0.0.10.rpz-ip CNAME .
ns.evil.rpz-nsdname CNAME .
outside.example. CNAME .
@ CNAME .
";

    #[test]
    fn rpz_zone_with_origin() {
        let (set, stats) = parse(ZONE, ListKind::Block);
        assert_eq!(
            flags(&set, "bad.com"),
            BLOCK_SELF | BLOCK_SUB | FORCE_NXDOMAIN | FORCE_NXDOMAIN_SUB
        );
        assert_eq!(flags(&set, "drop.net"), BLOCK_SELF | FORCE_DROP);
        assert_eq!(flags(&set, "dropsub.net"), BLOCK_SUB | FORCE_DROP_SUB);
        assert_eq!(flags(&set, "ok.bad.com"), ALLOW_SELF);
        assert_eq!(flags(&set, "okzone.bad.com"), ALLOW_SUB);
        assert_eq!(flags(&set, "abs.org"), BLOCK_SELF | FORCE_NXDOMAIN);
        // An absolute owner outside the origin is not ours to interpret.
        assert!(!set.rules.contains_key("upper.org"));
        assert_eq!(set.rules.get("bad.com").unwrap().origin.line, 8);
        assert_eq!(set.rules.len(), 6);
        assert_eq!(
            diags(&set),
            [
                "t.txt:15: owner `Upper.ORG.` is outside the zone origin `rpz.example.`",
                "t.txt:16: unsupported RPZ action: CNAME *. (NODATA)",
                "t.txt:17: unsupported RPZ action: CNAME rpz-tcp-only.",
                "t.txt:18: unsupported RPZ action: CNAME garden.example. (local-data rewrite)",
                "t.txt:19: unsupported RPZ action: local-data A record for `a.com` (supported: \
                 CNAME ., CNAME rpz-drop., CNAME rpz-passthru.)",
                "t.txt:20: unsupported RPZ action: local-data TXT record for `txt.com` (supported: \
                 CNAME ., CNAME rpz-drop., CNAME rpz-passthru.)",
                "t.txt:21: unsupported RPZ trigger rpz-ip (only QNAME triggers are supported)",
                "t.txt:22: unsupported RPZ trigger rpz-nsdname (only QNAME triggers are supported)",
                "t.txt:23: owner `outside.example.` is outside the zone origin `rpz.example.`",
                "t.txt:24: a policy on the zone apex `@` names no domain; skipped",
            ]
        );
        assert_eq!((stats.rules, stats.skipped), (7, 10));
    }

    #[test]
    fn rpz_origin_from_soa_and_crlf() {
        let text = "rpz.local. 3600 IN SOA ns. admin. 1 3600 900 604800 300\r\n\
                    rpz.local. IN NS ns.\r\n\
                    Bücher.Example.rpz.local. CNAME .\r\n\
                    evil.test CNAME RPZ-DROP.\r\n";
        let (set, stats) = parse(text, ListKind::Block);
        assert_eq!(diags(&set), Vec::<String>::new());
        assert_eq!(
            flags(&set, "xn--bcher-kva.example"),
            BLOCK_SELF | FORCE_NXDOMAIN
        );
        assert_eq!(flags(&set, "evil.test"), BLOCK_SELF | FORCE_DROP);
        assert_eq!(set.rules.get("evil.test").unwrap().origin.line, 4);
        assert_eq!(stats.rules, 2);
    }

    #[test]
    fn rpz_without_soa_or_origin() {
        // Detected from the CNAME records alone; absolute owners taken as is.
        let text = "bad.example CNAME .\nworse.example. CNAME rpz-drop.\n";
        let (set, _) = parse(text, ListKind::Block);
        assert_eq!(diags(&set), Vec::<String>::new());
        assert_eq!(flags(&set, "bad.example"), BLOCK_SELF | FORCE_NXDOMAIN);
        assert_eq!(flags(&set, "worse.example"), BLOCK_SELF | FORCE_DROP);
    }

    #[test]
    fn rpz_actions_keep_their_kind_when_merged_on_one_name() {
        // The name is dropped, its subdomains get NXDOMAIN: each action
        // stays with the trigger it was written for.
        let text = "$ORIGIN rpz.example.\nmixed.com CNAME rpz-drop.\n*.mixed.com CNAME .\n";
        let (set, _) = parse(text, ListKind::Block);
        assert_eq!(diags(&set), Vec::<String>::new());
        assert_eq!(flags(&set, "mixed.com"), BLOCK_SELF | FORCE_DROP | BLOCK_SUB | FORCE_NXDOMAIN_SUB);
    }

    #[test]
    fn rpz_in_allowlist_only_allows() {
        let text = "$ORIGIN allow.rpz.\nfine.com CNAME .\n*.fine.net CNAME rpz-drop.\nx.org CNAME rpz-passthru.\n";
        let (set, _) = parse(text, ListKind::Allow);
        assert_eq!(flags(&set, "fine.com"), ALLOW_SELF);
        assert_eq!(flags(&set, "fine.net"), ALLOW_SUB);
        assert_eq!(flags(&set, "x.org"), ALLOW_SELF);
    }

    #[test]
    fn rpz_malformed_records() {
        let text = "$ORIGIN rpz.example.\n\
                    bad..com CNAME .\n\
                    x.com CNAME\n\
                    y.com IN\n\
                    * CNAME .\n\
                    $INCLUDE other.zone\n\
                    $FOO bar\n";
        let (set, stats) = parse(text, ListKind::Block);
        assert!(set.rules.is_empty());
        assert_eq!(
            diags(&set),
            [
                "t.txt:2: empty label in `bad..com` (two dots in a row or a leading dot)",
                "t.txt:3: CNAME for `x.com` needs exactly one target",
                "t.txt:4: record for `y.com` has no type",
                "t.txt:5: RPZ trigger `*` would match every name; refusing it",
                "t.txt:6: $INCLUDE is not supported; list the included file in guard.yaml instead",
                "t.txt:7: unknown zone file directive $FOO",
            ]
        );
        assert_eq!(stats.skipped, 6);
    }

    #[test]
    fn hosts_files_are_not_mistaken_for_zones() {
        assert!(!looks_like_rpz(
            "0.0.0.0 cname\n0.0.0.0 ns soa\nexample.com\n||x^\n# $TTL\n"
        ));
        assert!(looks_like_rpz("; zone\n$TTL 60\n"));
        assert!(looks_like_rpz("@ SOA ns. admin. 1 2 3 4 5\n"));
        assert!(looks_like_rpz("# c\nbad.example CNAME .\n"));
        assert!(looks_like_rpz("*.bad.example IN CNAME .\n"));
        assert!(looks_like_rpz("drop.net 300 IN CNAME rpz-drop.\n"));
        assert!(looks_like_rpz("bad.example 1h IN CNAME .\n"));
        assert!(looks_like_rpz("bad.example ANY 1h30m CNAME .\n"));
        // A comment after a tab, or words of a name list, are no records.
        assert!(!looks_like_rpz("ads.example\ntracker.example\t# CNAME cloaking\n"));
        assert!(!looks_like_rpz("cname.example ns.example\n"));
    }

    #[test]
    fn a_parenthesis_never_closed_is_reported_with_the_lines_it_took() {
        let text = "$ORIGIN rpz.example.\nok.example CNAME .\nbad.example CNAME . (\na.example CNAME .\nb.example CNAME .\n";
        let (set, stats) = parse(text, ListKind::Block);
        assert_eq!(flags(&set, "ok.example"), BLOCK_SELF | FORCE_NXDOMAIN);
        assert!(!set.rules.contains_key("a.example"));
        let d = diags(&set);
        assert!(d.iter().any(|d| d.starts_with("t.txt:3: `(` is never closed: the 2 lines after it")), "{d:?}");
        // bad.example's own line (a multi-line CNAME), a.example's and b.example's.
        assert_eq!(stats.skipped, 3, "{d:?}");
    }
}
