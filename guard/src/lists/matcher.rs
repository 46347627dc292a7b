//! Userspace twin of the kernel's suffix walk (guard-ebpf `suffix_step`):
//! the proxy asks the same question of the same rules, so a name blocked
//! at XDP is blocked in the forwarder too, including behind a CNAME.
//!
//! Semantics, identical to the kernel's: the name and each of its proper
//! suffixes are looked up right to left (TLD first). `*_SELF` applies only
//! to the full name, `*_SUB` only to proper suffixes. An allow anywhere
//! wins (Pi-hole, AdGuard); among blocks the most specific (longest) wins.

use std::sync::Arc;

use super::{Origin, RuleSet, ALLOW_SELF, ALLOW_SUB, BLOCK_SELF, BLOCK_SUB};

/// Which way a matching rule points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchKind {
    Allow,
    Block,
}

/// The rule that decided a name, for the verdict log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleMatch {
    pub kind: MatchKind,
    /// The suffix that matched, normalized (`ads.example`).
    pub suffix: String,
    /// True when the rule named the full name rather than a parent.
    pub exact: bool,
    /// Every flag on the matched suffix (FORCE_* included).
    pub flags: u8,
    pub origin: Origin,
}

impl RuleMatch {
    /// The rule as a list would spell it: `||x^`, `*.x` or `x`.
    pub fn rule_text(&self) -> String {
        let (own, sub) = match self.kind {
            MatchKind::Block => (BLOCK_SELF, BLOCK_SUB),
            MatchKind::Allow => (ALLOW_SELF, ALLOW_SUB),
        };
        match (self.flags & own != 0, self.flags & sub != 0) {
            (true, true) => format!("||{}^", self.suffix),
            (false, true) => format!("*.{}", self.suffix),
            _ => self.suffix.clone(),
        }
    }

    /// `list:line` of the rule.
    pub fn list_line(&self) -> String {
        format!("{}:{}", self.origin.list.display(), self.origin.line)
    }
}

/// The kernel gives up on names with this many labels or more
/// (GUARD_MAX_LABELS in guard-ebpf): such a name never matches there, so
/// it does not match here either.
const MAX_LABELS: usize = guard_ebpf::abi::GUARD_MAX_LABELS as usize;

impl RuleSet {
    /// The rule that decides `name` (any case, trailing dot optional), or
    /// `None` when no rule applies.
    pub fn matches(&self, name: &str) -> Option<RuleMatch> {
        let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
        if name.is_empty() || self.rules.is_empty() {
            return None;
        }
        // Byte offsets where each suffix starts: 0 is the full name.
        let mut starts = vec![0];
        starts.extend(name.match_indices('.').map(|(i, _)| i + 1));
        if starts.len() >= MAX_LABELS {
            return None;
        }
        let mut block: Option<RuleMatch> = None;
        // Right to left, as the kernel walks: a later block hit is more
        // specific and replaces an earlier one; an allow ends the walk.
        for &start in starts.iter().rev() {
            let suffix = &name[start..];
            let Some(info) = self.rules.get(suffix) else { continue };
            let exact = start == 0;
            let hit = |kind| RuleMatch {
                kind,
                suffix: suffix.to_string(),
                exact,
                flags: info.flags,
                origin: Origin { list: Arc::clone(&info.origin.list), line: info.origin.line },
            };
            if info.flags & if exact { ALLOW_SELF } else { ALLOW_SUB } != 0 {
                return Some(hit(MatchKind::Allow));
            }
            if info.flags & if exact { BLOCK_SELF } else { BLOCK_SUB } != 0 {
                block = Some(hit(MatchKind::Block));
            }
        }
        block
    }

    /// True when `name` is blocked (a block rule applies and no allow).
    pub fn is_blocked(&self, name: &str) -> bool {
        matches!(self.matches(name), Some(RuleMatch { kind: MatchKind::Block, .. }))
    }
}

#[cfg(test)]
mod tests {
    use super::super::{parse_str, ListKind};
    use super::*;
    use std::path::Path;

    fn set(block: &str, allow: &str) -> RuleSet {
        let mut s = RuleSet::default();
        parse_str(block, Path::new("block.txt"), ListKind::Block, &mut s);
        parse_str(allow, Path::new("allow.txt"), ListKind::Allow, &mut s);
        s
    }

    fn kind(s: &RuleSet, name: &str) -> Option<MatchKind> {
        s.matches(name).map(|m| m.kind)
    }

    #[test]
    fn exact_name_blocks_only_itself() {
        let s = set("ads.example\n", "");
        assert_eq!(kind(&s, "ads.example"), Some(MatchKind::Block));
        assert_eq!(kind(&s, "ADS.Example."), Some(MatchKind::Block));
        assert_eq!(kind(&s, "www.ads.example"), None);
        assert_eq!(kind(&s, "example"), None);
        assert_eq!(kind(&s, "xads.example"), None);
        let m = s.matches("ads.example").unwrap();
        assert!(m.exact);
        assert_eq!(m.rule_text(), "ads.example");
        assert_eq!(m.list_line(), "block.txt:1");
    }

    #[test]
    fn adblock_syntax_blocks_name_and_subdomains() {
        let s = set("||tracker.example^\n", "");
        assert_eq!(kind(&s, "tracker.example"), Some(MatchKind::Block));
        let m = s.matches("a.b.tracker.example").unwrap();
        assert_eq!((m.kind, m.exact, m.suffix.as_str()), (MatchKind::Block, false, "tracker.example"));
        assert_eq!(m.rule_text(), "||tracker.example^");
        assert_eq!(kind(&s, "nottracker.example"), None);
    }

    #[test]
    fn wildcard_blocks_subdomains_only() {
        let s = set("*.wild.example\n", "");
        assert_eq!(kind(&s, "wild.example"), None);
        assert_eq!(kind(&s, "x.wild.example"), Some(MatchKind::Block));
        assert_eq!(s.matches("x.wild.example").unwrap().rule_text(), "*.wild.example");
    }

    #[test]
    fn allow_anywhere_wins() {
        // A more specific block under an allowed parent: the allow wins.
        let s = set("||bad.good.example^\n", "||good.example^\n");
        assert_eq!(kind(&s, "bad.good.example"), Some(MatchKind::Allow));
        assert_eq!(kind(&s, "x.bad.good.example"), Some(MatchKind::Allow));
        // An allowed child of a blocked parent: the allow wins too.
        let s = set("||blocked.example^\n", "ok.blocked.example\n");
        assert_eq!(kind(&s, "ok.blocked.example"), Some(MatchKind::Allow));
        assert_eq!(kind(&s, "x.ok.blocked.example"), Some(MatchKind::Block));
        assert_eq!(kind(&s, "other.blocked.example"), Some(MatchKind::Block));
        assert!(!s.is_blocked("ok.blocked.example"));
        assert!(s.is_blocked("other.blocked.example"));
    }

    #[test]
    fn most_specific_block_wins() {
        let s = set("||example^\n||ads.example^\n", "");
        let m = s.matches("x.ads.example").unwrap();
        assert_eq!(m.suffix, "ads.example");
        assert_eq!(m.list_line(), "block.txt:2");
    }

    #[test]
    fn empty_and_root_never_match() {
        let s = set("||example^\n", "");
        assert_eq!(s.matches(""), None);
        assert_eq!(s.matches("."), None);
        assert_eq!(RuleSet::default().matches("example"), None);
    }

    #[test]
    fn too_many_labels_never_match_like_the_kernel() {
        let s = set("||example^\n", "");
        let long = format!("{}example", "a.".repeat(MAX_LABELS));
        assert_eq!(s.matches(&long), None);
    }
}
