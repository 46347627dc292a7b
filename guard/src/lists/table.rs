//! Compiles a rule set into the kernel's table (see guard_ebpf::table).

use guard_ebpf::{
    abi::GUARD_TABLE_NO_TLD_NAMES,
    table::{self, Entry, Table, TableError},
};

use super::RuleSet;

/// Hashes every rule (and its Bloom group) with `seed` and builds the table.
/// A rule set without single-label names (no `com`, no `*.zip`) says so in
/// the header, and the kernel skips the top-level label's lookup.
pub fn compile(rules: &RuleSet, seed: u64, generation: u64) -> Result<Table, TableError> {
    let entries: Vec<Entry> = rules.rules.iter().map(|(name, flags)| Entry::for_name(name, seed, flags)).collect();
    let mut table = table::build(&entries, seed, generation, table::DEFAULT_LOAD)?;
    if rules.rules.keys().all(|name| name.contains('.')) {
        table.header.flags |= GUARD_TABLE_NO_TLD_NAMES;
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::lists::{parse_str, ListKind};

    fn compiled(text: &str) -> Table {
        let mut rules = RuleSet::default();
        parse_str(text, Path::new("t.txt"), ListKind::Block, &mut rules);
        compile(&rules, 7, 1).unwrap()
    }

    #[test]
    fn only_a_list_without_single_label_names_skips_the_top_level() {
        let no_tld = |t: &Table| t.header.flags & GUARD_TABLE_NO_TLD_NAMES != 0;
        assert!(no_tld(&compiled("ads.example\n||tracker.example.org^\n")));
        assert!(!no_tld(&compiled("ads.example\n||zip^\n")), "||zip^ is a single-label name");
        assert!(!no_tld(&compiled("*.mov\n")), "*.mov is stored as the name mov");
    }
}
