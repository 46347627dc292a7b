//! Line-oriented list formats, detected line by line so one file can mix
//! them: hosts (`0.0.0.0 name…`), plain names, AdGuard `||name^` /
//! `@@||name^`, and `*.name` wildcards.

use std::net::IpAddr;

use super::{numbered_lines, Sink, ALLOW_SELF, ALLOW_SUB, BLOCK_SELF, BLOCK_SUB};

pub(super) fn parse(text: &str, sink: &mut Sink<'_>) {
    for (no, line) in numbered_lines(text) {
        parse_line(line, no, sink);
    }
}

fn parse_line(line: &str, no: u32, sink: &mut Sink<'_>) {
    let line = strip_comment(line).trim();
    match line.as_bytes().first() {
        None | Some(b'#') | Some(b'!') => {}
        Some(b'|') => match line.strip_prefix("||") {
            Some(rest) => adblock(rest, BLOCK_SELF | BLOCK_SUB, no, sink),
            None => sink.skip(no, unknown_syntax(line)),
        },
        Some(b'@') => match line.strip_prefix("@@||") {
            Some(rest) => adblock(rest, ALLOW_SELF | ALLOW_SUB, no, sink),
            None => sink.skip(no, unknown_syntax(line)),
        },
        Some(b'*') => wildcard(line, no, sink),
        Some(_) => {
            let mut fields = line.split_ascii_whitespace();
            let first = fields.next().unwrap_or_default();
            match fields.next() {
                None => sink.add_name(first, BLOCK_SELF, no),
                Some(second) => hosts(first, second, fields, no, sink),
            }
        }
    }
}

/// Drops a `#` comment that starts the line or follows whitespace. A `#`
/// glued to text is left alone so that adblock cosmetic rules such as
/// `example.com##.banner` are rejected rather than read as `example.com`.
pub(super) fn strip_comment(line: &str) -> &str {
    let bytes = line.as_bytes();
    let mut from = 0;
    while let Some(pos) = bytes[from..].iter().position(|&b| b == b'#') {
        let at = from + pos;
        if at == 0 || bytes[at - 1] == b' ' || bytes[at - 1] == b'\t' {
            return &line[..at];
        }
        from = at + 1;
    }
    line
}

fn unknown_syntax(line: &str) -> String {
    format!(
        "unrecognized line `{}`: expected a name, `IP name…` (hosts), `||name^`, \
         `@@||name^` or `*.name`",
        shorten(line)
    )
}

/// Keeps diagnostics readable when a list contains a megabyte-long line.
fn shorten(s: &str) -> &str {
    match s.char_indices().nth(80) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// `||name^` (AdGuard / Adblock DNS syntax): the name and all subdomains.
fn adblock(rest: &str, flags: u8, no: u32, sink: &mut Sink<'_>) {
    let Some((name, tail)) = rest.split_once('^') else {
        sink.skip(
            no,
            format!(
                "AdGuard rule `||{}` has no `^`: prefix and URL rules are not supported, \
                 write `||name^`",
                shorten(rest)
            ),
        );
        return;
    };
    if let Some(modifiers) = tail.strip_prefix('$') {
        // Modifiers ($important, $client=…, $dnstype=…) change who or what a
        // rule applies to; applying the rule without them would block more
        // than the list author meant.
        sink.skip(
            no,
            format!(
                "AdGuard modifiers `${}` are not supported; use a plain `||name^` rule",
                shorten(modifiers)
            ),
        );
        return;
    }
    if !tail.is_empty() {
        sink.skip(
            no,
            format!(
                "unsupported AdGuard syntax `{}` after `^`; use a plain `||name^` rule",
                shorten(tail)
            ),
        );
        return;
    }
    sink.add_name(name, flags, no);
}

/// `*.name`: subdomains only, not the name itself.
fn wildcard(line: &str, no: u32, sink: &mut Sink<'_>) {
    match line.strip_prefix("*.") {
        Some(name) if !name.is_empty() && name != "." => {
            sink.add_name(name, BLOCK_SUB, no);
        }
        Some(_) => sink.skip(no, "`*.` would match every name; refusing it"),
        None if line == "*" => sink.skip(no, "a lone `*` would match every name; refusing it"),
        None => sink.skip(
            no,
            format!(
                "wildcards are only supported as a leading `*.`: `{}`",
                shorten(line)
            ),
        ),
    }
}

/// Hosts-file line: an address and one or more names.
fn hosts<'a>(
    addr: &str,
    first: &'a str,
    rest: impl Iterator<Item = &'a str> + Clone,
    no: u32,
    sink: &mut Sink<'_>,
) {
    let names = std::iter::once(first).chain(rest);
    match sink_address(addr) {
        Some(true) => {
            for name in names {
                if !is_local_name(name) {
                    sink.add_name(name, BLOCK_SELF, no);
                }
            }
        }
        // A full system hosts file carries lines like `ff02::1 ip6-allnodes`
        // and `255.255.255.255 broadcasthost`; those are not list entries.
        Some(false) if names.clone().all(is_local_name) => {}
        Some(false) => sink.skip(
            no,
            format!(
                "hosts entry maps names to {addr}: only 0.0.0.0, 127.0.0.0/8, :: and ::1 \
                 mean \"block\"; redirects are not supported"
            ),
        ),
        None => sink.skip(no, unknown_syntax(&format!("{addr} {first} …"))),
    }
}

/// `Some(true)` for the unroutable/loopback addresses hosts-file blocklists
/// point names at, `Some(false)` for other addresses, `None` for non-addresses.
pub(super) fn sink_address(addr: &str) -> Option<bool> {
    // Nearly every line of a hosts blocklist starts with one of these two.
    if addr == "0.0.0.0" || addr == "127.0.0.1" {
        return Some(true);
    }
    // Scoped IPv6 (`fe80::1%lo0`) appears in macOS hosts files.
    let addr = addr.split_once('%').map_or(addr, |(a, _)| a);
    let ip = addr.parse::<IpAddr>().ok()?;
    Some(ip.is_unspecified() || ip.is_loopback())
}

/// Names every system hosts file defines for the machine itself. Blocking
/// them would be meaningless and noisy, so they are skipped silently.
fn is_local_name(name: &str) -> bool {
    const LOCAL: &[&str] = &[
        "localhost",
        "localhost.localdomain",
        "localhost4",
        "localhost4.localdomain4",
        "localhost6",
        "localhost6.localdomain6",
        "local",
        "broadcasthost",
        "ip6-localhost",
        "ip6-loopback",
        "ip6-localnet",
        "ip6-mcastprefix",
        "ip6-allnodes",
        "ip6-allrouters",
        "ip6-allhosts",
        "0.0.0.0",
    ];
    let name = name.strip_suffix('.').unwrap_or(name);
    // Cheap length filter first: this runs once per hosts entry.
    name.len() <= 23 && LOCAL.iter().any(|l| l.eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::super::tests::{diags, flags, parse};
    use super::super::*;

    #[test]
    fn hosts_lines() {
        let text = "\
# header comment
127.0.0.1 localhost
127.0.0.1 localhost.localdomain
255.255.255.255 broadcasthost
::1 localhost ip6-localhost ip6-loopback
fe80::1%lo0 localhost
ff02::1 ip6-allnodes
0.0.0.0 0.0.0.0
0.0.0.0 ads.example # trailing comment
127.0.0.1\tTracker.Example.\tmetrics.example
:: v6.example
::1 v6loop.example
";
        let (set, stats) = parse(text, ListKind::Block);
        assert_eq!(diags(&set), Vec::<String>::new());
        assert_eq!(set.rules.len(), 5);
        for name in [
            "ads.example",
            "tracker.example",
            "metrics.example",
            "v6.example",
            "v6loop.example",
        ] {
            assert_eq!(flags(&set, name), BLOCK_SELF, "{name}");
        }
        assert_eq!(set.rules.get("ads.example").unwrap().origin.line, 9);
        assert_eq!(set.rules.get("metrics.example").unwrap().origin.line, 10);
        assert_eq!((stats.rules, stats.skipped), (5, 0));
    }

    #[test]
    fn hosts_malformed() {
        let text = "\
0.0.0.0 good.example bad_char!.example 1.2.3.4
192.168.1.10 nas.example
10.0.0.1 localhost
0.0.0.1x name.example
";
        let (set, stats) = parse(text, ListKind::Block);
        assert_eq!(flags(&set, "good.example"), BLOCK_SELF);
        assert_eq!(set.rules.len(), 1);
        assert_eq!(
            diags(&set),
            [
                "t.txt:1: invalid character '!' in name `bad_char!.example`",
                "t.txt:1: `1.2.3.4` is an IP address, not a domain name",
                "t.txt:2: hosts entry maps names to 192.168.1.10: only 0.0.0.0, 127.0.0.0/8, \
                 :: and ::1 mean \"block\"; redirects are not supported",
                "t.txt:4: unrecognized line `0.0.0.1x name.example …`: expected a name, \
                 `IP name…` (hosts), `||name^`, `@@||name^` or `*.name`",
            ]
        );
        assert_eq!((stats.rules, stats.skipped), (1, 4));
    }

    #[test]
    fn plain_names_comments_crlf_case() {
        let text = "! adblock comment\r\n# hash comment\r\n\r\n   \r\nAds.Example.COM.\r\n\tspaced.example  \r\ncom\r\nx.example # note\r\n";
        let (set, stats) = parse(text, ListKind::Block);
        assert_eq!(diags(&set), Vec::<String>::new());
        assert_eq!(flags(&set, "ads.example.com"), BLOCK_SELF);
        assert_eq!(flags(&set, "spaced.example"), BLOCK_SELF);
        assert_eq!(flags(&set, "com"), BLOCK_SELF);
        assert_eq!(flags(&set, "x.example"), BLOCK_SELF);
        assert_eq!(set.rules.get("ads.example.com").unwrap().origin.line, 5);
        assert_eq!(stats.rules, 4);
    }

    #[test]
    fn idn_entries() {
        let text = "bücher.example\n0.0.0.0 MÜNCHEN.example\n||bücher.test^\n*.bücher.org\nxn--bcher-kva.net\n";
        let (set, _) = parse(text, ListKind::Block);
        assert_eq!(diags(&set), Vec::<String>::new());
        assert_eq!(flags(&set, "xn--bcher-kva.example"), BLOCK_SELF);
        assert_eq!(flags(&set, "xn--mnchen-3ya.example"), BLOCK_SELF);
        assert_eq!(flags(&set, "xn--bcher-kva.test"), BLOCK_SELF | BLOCK_SUB);
        assert_eq!(flags(&set, "xn--bcher-kva.org"), BLOCK_SUB);
        assert_eq!(flags(&set, "xn--bcher-kva.net"), BLOCK_SELF);
    }

    #[test]
    fn adblock_rules() {
        let text = "||ads.example^\n@@||ok.example^\n||Upper.Example.^\n";
        let (set, stats) = parse(text, ListKind::Block);
        assert_eq!(diags(&set), Vec::<String>::new());
        assert_eq!(flags(&set, "ads.example"), BLOCK_SELF | BLOCK_SUB);
        assert_eq!(flags(&set, "ok.example"), ALLOW_SELF | ALLOW_SUB);
        assert_eq!(flags(&set, "upper.example"), BLOCK_SELF | BLOCK_SUB);
        assert_eq!(stats.rules, 3);
    }

    #[test]
    fn adblock_malformed() {
        let text = "\
||ads.example^$important
||ads.example
||ads.example^|
|http://ads.example/
@@ads.example
example.com##.banner
||*.ads.example^
||^
";
        let (set, stats) = parse(text, ListKind::Block);
        assert!(set.rules.is_empty(), "{:?}", set.rules);
        assert_eq!(
            diags(&set),
            [
                "t.txt:1: AdGuard modifiers `$important` are not supported; use a plain `||name^` rule",
                "t.txt:2: AdGuard rule `||ads.example` has no `^`: prefix and URL rules are not \
                 supported, write `||name^`",
                "t.txt:3: unsupported AdGuard syntax `|` after `^`; use a plain `||name^` rule",
                "t.txt:4: unrecognized line `|http://ads.example/`: expected a name, `IP name…` \
                 (hosts), `||name^`, `@@||name^` or `*.name`",
                "t.txt:5: unrecognized line `@@ads.example`: expected a name, `IP name…` \
                 (hosts), `||name^`, `@@||name^` or `*.name`",
                "t.txt:6: invalid character '#' in name `example.com##.banner`",
                "t.txt:7: invalid character '*' in name `*.ads.example`",
                "t.txt:8: empty name: the DNS root cannot be listed",
            ]
        );
        assert_eq!((stats.rules, stats.skipped), (0, 8));
    }

    #[test]
    fn wildcards() {
        let text = "*.ads.example\n*.\n*\n*ads.example\n*.*.example\n";
        let (set, stats) = parse(text, ListKind::Block);
        assert_eq!(flags(&set, "ads.example"), BLOCK_SUB);
        assert_eq!(set.rules.len(), 1);
        assert_eq!(
            diags(&set),
            [
                "t.txt:2: `*.` would match every name; refusing it",
                "t.txt:3: a lone `*` would match every name; refusing it",
                "t.txt:4: wildcards are only supported as a leading `*.`: `*ads.example`",
                "t.txt:5: invalid character '*' in name `*.example`",
            ]
        );
        assert_eq!((stats.rules, stats.skipped), (1, 4));
    }

    #[test]
    fn malformed_plain_names() {
        let long_label = "a".repeat(64);
        let long_name = ["a".repeat(63).as_str(); 4].join(".");
        let text = format!(
            "a..example\n.example\n{long_label}.example\n{long_name}\n10.0.0.1\n2001:db8::1\n\
             bad name here\nhttp://x.example/\n.\nb\u{fffd}d.example\n"
        );
        let (set, stats) = parse(&text, ListKind::Block);
        assert!(set.rules.is_empty(), "{:?}", set.rules);
        let got = diags(&set);
        assert_eq!(
            got[0],
            "t.txt:1: empty label in `a..example` (two dots in a row or a leading dot)"
        );
        assert_eq!(
            got[1],
            "t.txt:2: empty label in `.example` (two dots in a row or a leading dot)"
        );
        assert_eq!(
            got[2],
            format!("t.txt:3: label `{long_label}` is 64 bytes; DNS labels are at most 63 (RFC 1035 §2.3.4)")
        );
        assert_eq!(
            got[3],
            "t.txt:4: name is 255 characters; DNS names are at most 253 (255 octets on the wire, RFC 1035 §2.3.4)"
        );
        assert_eq!(
            got[4],
            "t.txt:5: `10.0.0.1` is an IP address, not a domain name"
        );
        assert_eq!(
            got[5],
            "t.txt:6: `2001:db8::1` is an IP address, not a domain name"
        );
        assert!(
            got[6].starts_with("t.txt:7: unrecognized line `bad name …`"),
            "{}",
            got[6]
        );
        assert_eq!(
            got[7],
            "t.txt:8: invalid character ':' in name `http://x.example/`"
        );
        assert_eq!(got[8], "t.txt:9: empty name: the DNS root cannot be listed");
        assert_eq!(
            got[9],
            "t.txt:10: `b\u{fffd}d.example` is not a valid internationalized domain name (UTS 46)"
        );
        assert_eq!(got.len(), 10);
        assert_eq!((stats.rules, stats.skipped), (0, 10));
    }
}
