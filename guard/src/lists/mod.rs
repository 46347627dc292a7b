//! Blocklist and allowlist loading: turns list files (hosts, plain names,
//! AdGuard `||name^`, `*.name` wildcards, RPZ zones) into one map from a
//! normalized name to the kernel's `guard_rule_flags`, ready for the table
//! builder. Bad lines become `file:line` diagnostics; only unreadable files
//! are errors.

pub mod matcher;
mod name;
mod rpz;
mod rule_map;
pub mod table;
mod text;

use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasherDefault;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use guard_ebpf::abi::guard_rule_flags;

pub use name::{normalize, to_wire, NameError};
pub use rule_map::RuleMap;

/// Block the name itself.
pub const BLOCK_SELF: u8 = guard_rule_flags::GUARD_RULE_BLOCK_SELF as u8;
/// Block every subdomain of the name.
pub const BLOCK_SUB: u8 = guard_rule_flags::GUARD_RULE_BLOCK_SUB as u8;
/// Allow the name itself.
pub const ALLOW_SELF: u8 = guard_rule_flags::GUARD_RULE_ALLOW_SELF as u8;
/// Allow every subdomain of the name.
pub const ALLOW_SUB: u8 = guard_rule_flags::GUARD_RULE_ALLOW_SUB as u8;
/// RPZ `x CNAME .`: answer NXDOMAIN for the name itself.
pub const FORCE_NXDOMAIN: u8 = guard_rule_flags::GUARD_RULE_FORCE_NXDOMAIN as u8;
/// RPZ `x CNAME rpz-drop.`: drop queries for the name itself.
pub const FORCE_DROP: u8 = guard_rule_flags::GUARD_RULE_FORCE_DROP as u8;
/// RPZ `*.x CNAME .`: answer NXDOMAIN for the name's subdomains.
pub const FORCE_NXDOMAIN_SUB: u8 = guard_rule_flags::GUARD_RULE_FORCE_NXDOMAIN_SUB as u8;
/// RPZ `*.x CNAME rpz-drop.`: drop queries for the name's subdomains.
pub const FORCE_DROP_SUB: u8 = guard_rule_flags::GUARD_RULE_FORCE_DROP_SUB as u8;

/// Hash map keyed by normalized names, for the few side tables; the rules
/// themselves are in a `RuleMap`. FxHash for the reason given there.
pub type NameMap<V> = HashMap<String, V, BuildHasherDefault<rustc_hash::FxHasher>>;

/// Which config key a list file came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListKind {
    /// `blocklists:` — entries block, except explicit allow syntax
    /// (`@@||name^`, RPZ `rpz-passthru.`).
    Block,
    /// `allowlists:` — every entry allows, whatever its syntax.
    Allow,
}

/// Where a rule was first seen, for the verdict log and diagnostics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub list: Arc<Path>,
    pub line: u32,
}

/// What the lists say about one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleInfo {
    /// OR of `guard_rule_flags` bits from every rule on this name.
    pub flags: u8,
    /// The first rule that named it.
    pub origin: Origin,
    /// The bits that first rule gave.
    pub origin_flags: u8,
}

/// A line that was skipped, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: u32,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.message)
    }
}

/// Per-file counts, for the startup log and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListStats {
    pub path: PathBuf,
    pub kind: ListKind,
    /// Rules taken from the file (before merging with other rules).
    pub rules: usize,
    /// Entries skipped with a diagnostic.
    pub skipped: usize,
    /// Nothing but white space in the file.
    pub blank: bool,
}

/// What is wrong with lists that held rules and now hold none, from a file
/// that is blank or whose every entry was skipped: a download cut short, or
/// an error page saved over the list. Such a reload keeps the previous
/// table. A file of comments alone empties its list: that is deliberate.
pub fn emptied(before: &[ListStats], after: &[ListStats]) -> Vec<String> {
    after
        .iter()
        .filter(|now| now.rules == 0 && (now.blank || now.skipped > 0))
        .filter_map(|now| {
            let had = before.iter().find(|b| b.path == now.path && b.kind == now.kind && b.rules > 0)?;
            let why = if now.blank { "is empty".to_string() } else { format!("has {} lines that are not list entries", now.skipped) };
            Some(format!(
                "{} {why} and no rule, where it had {} (a write cut short?); write it whole and rename it into place, \
                 or leave comments only to empty the list",
                now.path.display(),
                had.rules
            ))
        })
        .collect()
}

/// Every rule from every list, merged by name.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    /// Normalized dotted name (lower case, punycode, no trailing dot).
    pub rules: RuleMap,
    /// A later rule that added a block kind (the name itself, or its
    /// subdomains) the first rule on that name did not have, with the bits
    /// it gave: `x` in one list and `*.x` in another log as themselves.
    /// Rare, so kept beside the map rather than in every entry.
    pub later_origins: NameMap<(u8, Origin)>,
    pub stats: Vec<ListStats>,
    pub diagnostics: Vec<Diagnostic>,
}

impl RuleSet {
    /// Names with a block bit (self or subdomains).
    pub fn count_block(&self) -> usize {
        self.count(BLOCK_SELF | BLOCK_SUB)
    }

    /// Names with an allow bit (self or subdomains).
    pub fn count_allow(&self) -> usize {
        self.count(ALLOW_SELF | ALLOW_SUB)
    }

    fn count(&self, mask: u8) -> usize {
        self.rules.iter().filter(|(_, flags)| flags & mask != 0).count()
    }
}

/// Failures that make the list configuration unusable.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    #[error(
        "cannot read list file {}: {source}; fix the file or remove it from \
         `blocklists:`/`allowlists:` in guard.yaml",
        path.display()
    )]
    Read { path: PathBuf, source: io::Error },
    #[error(
        "list file {} changed while it was read, {READ_TRIES} times; write it elsewhere and rename it into place",
        path.display()
    )]
    Changing { path: PathBuf },
}

/// A list read while something writes it is read again, up to this many
/// times in all.
const READ_TRIES: usize = 3;

/// `path`'s bytes, from one version of the file: its size, inode and
/// modification time the same before and after the read.
fn read_whole(path: &Path) -> Result<Vec<u8>, ListError> {
    use std::os::unix::fs::MetadataExt;
    let read = |source| ListError::Read { path: path.to_path_buf(), source };
    let version = |m: std::fs::Metadata| (m.dev(), m.ino(), m.len(), m.mtime(), m.mtime_nsec());
    for _ in 0..READ_TRIES {
        let before = std::fs::metadata(path).map_err(read)?;
        let bytes = std::fs::read(path).map_err(read)?;
        let after = std::fs::metadata(path).map_err(read)?;
        if version(before) == version(after.clone()) && bytes.len() as u64 == after.len() {
            return Ok(bytes);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Err(ListError::Changing { path: path.to_path_buf() })
}

/// Loads every list. A file that cannot be read is an error (the config
/// names it, so the config is wrong) and every such file is reported, not
/// just the first; bad lines inside a file are only diagnostics.
pub fn load(blocklists: &[PathBuf], allowlists: &[PathBuf]) -> Result<RuleSet, Vec<ListError>> {
    let mut set = RuleSet::default();
    let mut errors = Vec::new();
    let files = blocklists
        .iter()
        .map(|p| (p, ListKind::Block))
        .chain(allowlists.iter().map(|p| (p, ListKind::Allow)));
    for (path, kind) in files {
        match read_whole(path) {
            Ok(bytes) => {
                // Lists come from anywhere; a stray Latin-1 byte should cost
                // one line (it fails name validation), not the whole file.
                let text = String::from_utf8_lossy(&bytes);
                let stats = parse_str(&text, path, kind, &mut set);
                set.stats.push(stats);
            }
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        set.rules.shrink_to_fit();
        Ok(set)
    } else {
        Err(errors)
    }
}

/// Parses one list file's text into `into`. The format is detected per line,
/// except RPZ, which is recognized from the file's content (`$ORIGIN`, `SOA`,
/// `CNAME` records) because its lines would otherwise look like hosts lines.
pub fn parse_str(text: &str, path: &Path, kind: ListKind, into: &mut RuleSet) -> ListStats {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    // Most lines yield one rule, and no name is longer than its line:
    // reserving up front avoids rehashing a million-entry map several
    // times over.
    let lines = count_lines(text) + 1;
    into.rules.reserve(lines, text.len());

    let list: Arc<Path> = Arc::from(path);
    let list_id = into.rules.add_list(Arc::clone(&list));
    let mut sink = Sink {
        set: into,
        list,
        list_id,
        kind,
        rules: 0,
        skipped: 0,
    };
    if rpz::looks_like_rpz(text) {
        rpz::parse(text, &mut sink);
    } else {
        text::parse(text, &mut sink);
    }
    ListStats {
        path: path.to_path_buf(),
        kind,
        rules: sink.rules,
        skipped: sink.skipped,
        blank: text.trim().is_empty(),
    }
}

fn count_lines(text: &str) -> usize {
    text.bytes().filter(|&b| b == b'\n').count()
}

/// Where the format parsers put what they find.
struct Sink<'a> {
    set: &'a mut RuleSet,
    list: Arc<Path>,
    /// `list`'s id in `set.rules`.
    list_id: u32,
    kind: ListKind,
    rules: usize,
    skipped: usize,
}

impl Sink<'_> {
    /// Adds a rule as written; an allowlist turns block bits into the
    /// matching allow bits and drops the RPZ response overrides.
    fn add(&mut self, name: String, flags: u8, line: u32) {
        let flags = match self.kind {
            ListKind::Block => flags,
            ListKind::Allow => {
                let mut allow = flags & (ALLOW_SELF | ALLOW_SUB);
                if flags & BLOCK_SELF != 0 {
                    allow |= ALLOW_SELF;
                }
                if flags & BLOCK_SUB != 0 {
                    allow |= ALLOW_SUB;
                }
                allow
            }
        };
        match self.set.rules.add(&name, flags, self.list_id, line) {
            Ok(None) => self.rules += 1,
            Ok(Some(first_flags)) => {
                self.rules += 1;
                let kinds = BLOCK_SELF | BLOCK_SUB;
                if flags & kinds & !first_flags != 0 {
                    let origin = Origin { list: self.list.clone(), line };
                    self.set.later_origins.entry(name).or_insert((flags, origin));
                }
            }
            Err(rule_map::Full) => self.skip(line, "the lists hold 4 GiB of names, the most dns-guard keeps"),
        }
    }

    /// Normalizes `raw` and adds it, or records why it cannot be.
    fn add_name(&mut self, raw: &str, flags: u8, line: u32) {
        match normalize(raw) {
            Ok(name) => self.add(name, flags, line),
            Err(e) => self.skip(line, e.to_string()),
        }
    }

    fn skip(&mut self, line: u32, message: impl Into<String>) {
        self.skipped += 1;
        self.set.diagnostics.push(Diagnostic {
            file: self.list.to_path_buf(),
            line,
            message: message.into(),
        });
    }
}

/// Iterates over lines with 1-based numbers, tolerating CRLF.
fn numbered_lines(text: &str) -> impl Iterator<Item = (u32, &str)> {
    text.split('\n').enumerate().map(|(i, l)| {
        let l = l.strip_suffix('\r').unwrap_or(l);
        (u32::try_from(i + 1).unwrap_or(u32::MAX), l)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_that_lost_every_rule_to_a_cut_or_a_wrong_file_is_refused() {
        let load = |text: &str| {
            let mut set = RuleSet::default();
            parse_str(text, Path::new("block.txt"), ListKind::Block, &mut set)
        };
        let before = [load("a.example\nb.example\n")];
        let refused = |text: &str| emptied(&before, &[load(text)]);
        assert_eq!(refused(""), ["block.txt is empty and no rule, where it had 2 (a write cut short?); write it whole and rename it into place, or leave comments only to empty the list"]);
        assert_eq!(refused(" \n\n").len(), 1);
        assert!(refused("<html><body>502 Bad Gateway</body></html>\n")[0].contains("has 1 lines that are not list entries"));
        // Deliberate: comments alone; or some rules left; or nothing before.
        assert!(refused("# list emptied on purpose\n").is_empty());
        assert!(refused("c.example\n<html>\n").is_empty());
        assert!(emptied(&[load("# none yet\n")], &[load("")]).is_empty());
        // Another file, or the same file as an allowlist, is not this one.
        let mut other = load("");
        other.kind = ListKind::Allow;
        assert!(emptied(&before, &[other]).is_empty());
    }

    /// Parses `text` as one file named `t.txt` and returns the rule set.
    pub(super) fn parse(text: &str, kind: ListKind) -> (RuleSet, ListStats) {
        let mut set = RuleSet::default();
        let stats = parse_str(text, Path::new("t.txt"), kind, &mut set);
        (set, stats)
    }

    pub(super) fn flags(set: &RuleSet, name: &str) -> u8 {
        set.rules
            .get(name)
            .unwrap_or_else(|| panic!("no rule for {name}: {:?}", set.rules))
            .flags
    }

    pub(super) fn diags(set: &RuleSet) -> Vec<String> {
        set.diagnostics.iter().map(|d| d.to_string()).collect()
    }

    #[test]
    fn flag_values_match_the_abi() {
        assert_eq!(
            [
                BLOCK_SELF,
                BLOCK_SUB,
                ALLOW_SELF,
                ALLOW_SUB,
                FORCE_NXDOMAIN,
                FORCE_DROP,
                FORCE_NXDOMAIN_SUB,
                FORCE_DROP_SUB
            ],
            [1, 2, 4, 8, 16, 32, 64, 128]
        );
        let shift = guard_ebpf::abi::GUARD_RULE_FORCE_SUB_SHIFT;
        assert_eq!((FORCE_NXDOMAIN << shift, FORCE_DROP << shift), (FORCE_NXDOMAIN_SUB, FORCE_DROP_SUB));
    }

    #[test]
    fn diagnostic_display() {
        let d = Diagnostic {
            file: "lists/ads.txt".into(),
            line: 7,
            message: "bad".into(),
        };
        assert_eq!(d.to_string(), "lists/ads.txt:7: bad");
    }

    #[test]
    fn merging_ors_flags_and_keeps_first_origin() {
        let mut set = RuleSet::default();
        parse_str(
            "ads.example\n",
            Path::new("a.txt"),
            ListKind::Block,
            &mut set,
        );
        parse_str(
            "# x\n*.ads.example\n||ads.example^\n",
            Path::new("b.txt"),
            ListKind::Block,
            &mut set,
        );
        parse_str(
            "ads.example\n",
            Path::new("allow.txt"),
            ListKind::Allow,
            &mut set,
        );
        let r = set.rules.get("ads.example").unwrap();
        assert_eq!(r.flags, BLOCK_SELF | BLOCK_SUB | ALLOW_SELF);
        assert_eq!(&*r.origin.list, Path::new("a.txt"));
        assert_eq!(r.origin.line, 1);
        assert_eq!(set.rules.len(), 1);
        assert_eq!(set.count_block(), 1);
        assert_eq!(set.count_allow(), 1);
    }

    #[test]
    fn allowlist_turns_every_rule_into_allow() {
        let text = "a.example\n0.0.0.0 b.example\n||c.example^\n*.d.example\n@@||e.example^\n";
        let (set, stats) = parse(text, ListKind::Allow);
        assert_eq!(flags(&set, "a.example"), ALLOW_SELF);
        assert_eq!(flags(&set, "b.example"), ALLOW_SELF);
        assert_eq!(flags(&set, "c.example"), ALLOW_SELF | ALLOW_SUB);
        assert_eq!(flags(&set, "d.example"), ALLOW_SUB);
        assert_eq!(flags(&set, "e.example"), ALLOW_SELF | ALLOW_SUB);
        assert_eq!(stats.kind, ListKind::Allow);
        assert_eq!((stats.rules, stats.skipped), (5, 0));
        assert_eq!(set.count_block(), 0);
        assert_eq!(set.count_allow(), 5);
    }

    #[test]
    fn load_reports_every_unreadable_file() {
        let dir = std::env::temp_dir().join(format!("dns-guard-lists-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.txt");
        std::fs::write(&good, b"\xef\xbb\xbfads.example\r\nbad\xff.example\r\n").unwrap();
        let allow = dir.join("allow.txt");
        std::fs::write(&allow, "ok.example\n").unwrap();

        let set = load(std::slice::from_ref(&good), std::slice::from_ref(&allow)).unwrap();
        assert_eq!(flags(&set, "ads.example"), BLOCK_SELF);
        assert_eq!(flags(&set, "ok.example"), ALLOW_SELF);
        assert_eq!(set.stats.len(), 2);
        assert_eq!((set.stats[0].rules, set.stats[0].skipped), (1, 1));
        assert_eq!(set.diagnostics[0].line, 2);
        assert_eq!(set.diagnostics[0].file, good);

        let missing1 = dir.join("missing1.txt");
        let missing2 = dir.join("missing2.txt");
        let errs = load(&[missing1, good], std::slice::from_ref(&missing2)).unwrap_err();
        assert_eq!(errs.len(), 2);
        let msg = errs[0].to_string();
        assert!(msg.contains("missing1.txt"), "{msg}");
        assert!(msg.contains("guard.yaml"), "{msg}");
        assert!(errs[1].to_string().contains("missing2.txt"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn many_hosts_lines() {
        const N: usize = 200_000;
        let mut text = String::with_capacity(N * 40);
        text.push_str("127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n");
        for i in 0..N {
            text.push_str(&format!("0.0.0.0 ads{i}.tracker{}.example.com\r\n", i % 97));
        }
        let (set, stats) = parse(&text, ListKind::Block);
        assert_eq!(set.rules.len(), N);
        assert_eq!((stats.rules, stats.skipped), (N, 0));
        assert!(set.diagnostics.is_empty());
        assert_eq!(set.count_block(), N);
    }

    /// Throughput probe: `cargo test --release -p dns-guard -- --ignored
    /// --nocapture hosts_throughput`. Prints, asserts no timing.
    #[test]
    #[ignore]
    fn hosts_throughput() {
        const N: usize = 1_000_000;
        let mut text = String::with_capacity(N * 40);
        for i in 0..N {
            text.push_str(&format!("0.0.0.0 ads{i}.tracker{}.example.com\n", i % 997));
        }
        let start = std::time::Instant::now();
        let (set, _) = parse(&text, ListKind::Block);
        let took = start.elapsed();
        assert_eq!(set.rules.len(), N);
        eprintln!(
            "parsed {N} hosts lines ({} MB) in {took:?}: {:.1} M lines/s",
            text.len() / 1_000_000,
            N as f64 / took.as_secs_f64() / 1e6
        );
    }
}
