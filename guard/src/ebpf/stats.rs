//! The kernel's per-reason counters (`guard_stats`, a per-CPU array), and
//! the names they go by in the verdict log and metrics.

use aya::maps::{MapData, PerCpuArray};
use guard_ebpf::abi::{guard_action, guard_reason, guard_stat, guard_verdict};

use super::XdpGuard;

/// Log and metric name of a reason. The match is exhaustive, so a reason
/// added to guard_abi.h does not build until it has a name.
pub fn reason_name(reason: guard_reason) -> &'static str {
    use guard_reason::*;
    match reason {
        GUARD_REASON_PASS_NOT_DNS => "not_dns",
        GUARD_REASON_PASS_NOT_QUERY => "not_query",
        GUARD_REASON_PASS_IPV6_EXTHDR => "ipv6_extension_header",
        GUARD_REASON_ALLOW_CLEAN => "clean",
        GUARD_REASON_ALLOW_ALLOWLIST => "allowlist",
        GUARD_REASON_BLOCK_EXACT => "blocklist_exact",
        GUARD_REASON_BLOCK_SUFFIX => "blocklist_suffix",
        GUARD_REASON_RATELIMIT => "over_rate",
        GUARD_REASON_MALFORMED_TRUNCATED_HEADER => "truncated_header",
        GUARD_REASON_MALFORMED_OPCODE => "invalid_opcode",
        GUARD_REASON_MALFORMED_QDCOUNT => "qdcount_not_one",
        GUARD_REASON_MALFORMED_LABEL_TOO_LONG => "label_too_long",
        GUARD_REASON_MALFORMED_NAME_TOO_LONG => "name_too_long",
        GUARD_REASON_MALFORMED_COMPRESSION => "compression_in_question",
        GUARD_REASON_MALFORMED_TRUNCATED_QUESTION => "truncated_question",
        GUARD_REASON_TX_FAILED => "reply_failed",
        GUARD_REASON_NO_TABLE => "no_table",
        GUARD_REASON_BLOCK_DYNAMIC => "random_subdomain",
        GUARD_REASON__COUNT => "invalid",
    }
}

pub fn reason_from_u8(v: u8) -> Option<guard_reason> {
    ALL_REASONS.get(v as usize).copied()
}

pub const ALL_REASONS: [guard_reason; guard_reason::GUARD_REASON__COUNT as usize] = {
    use guard_reason::*;
    [
        GUARD_REASON_PASS_NOT_DNS,
        GUARD_REASON_PASS_NOT_QUERY,
        GUARD_REASON_PASS_IPV6_EXTHDR,
        GUARD_REASON_ALLOW_CLEAN,
        GUARD_REASON_ALLOW_ALLOWLIST,
        GUARD_REASON_BLOCK_EXACT,
        GUARD_REASON_BLOCK_SUFFIX,
        GUARD_REASON_RATELIMIT,
        GUARD_REASON_MALFORMED_TRUNCATED_HEADER,
        GUARD_REASON_MALFORMED_OPCODE,
        GUARD_REASON_MALFORMED_QDCOUNT,
        GUARD_REASON_MALFORMED_LABEL_TOO_LONG,
        GUARD_REASON_MALFORMED_NAME_TOO_LONG,
        GUARD_REASON_MALFORMED_COMPRESSION,
        GUARD_REASON_MALFORMED_TRUNCATED_QUESTION,
        GUARD_REASON_TX_FAILED,
        GUARD_REASON_NO_TABLE,
        GUARD_REASON_BLOCK_DYNAMIC,
    ]
};

pub fn verdict_name(v: u8) -> &'static str {
    match v {
        x if x == guard_verdict::GUARD_VERDICT_ALLOW as u8 => "allow",
        x if x == guard_verdict::GUARD_VERDICT_BLOCK as u8 => "block",
        x if x == guard_verdict::GUARD_VERDICT_RATELIMIT as u8 => "ratelimit",
        x if x == guard_verdict::GUARD_VERDICT_MALFORMED as u8 => "malformed",
        _ => "unknown",
    }
}

pub fn action_name(a: u8) -> &'static str {
    use guard_action::*;
    match a {
        x if x == GUARD_ACTION_PASS as u8 => "pass",
        x if x == GUARD_ACTION_NXDOMAIN as u8 => "nxdomain",
        x if x == GUARD_ACTION_REFUSED as u8 => "refused",
        x if x == GUARD_ACTION_DROP as u8 => "drop",
        x if x == GUARD_ACTION_LOG as u8 => "log",
        x if x == GUARD_ACTION_TRUNCATE as u8 => "truncate",
        _ => "unknown",
    }
}

/// A snapshot of every counter, summed over CPUs.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    pub by_reason: Vec<(&'static str, u64)>,
    pub events_lost: u64,
    pub replies_tx: u64,
}

impl Counters {
    pub fn reason(&self, name: &str) -> u64 {
        self.by_reason.iter().find(|(n, _)| *n == name).map_or(0, |(_, v)| *v)
    }
}

pub fn read_counters(map: &PerCpuArray<&MapData, u64>) -> Result<Counters, aya::maps::MapError> {
    let sum = |i: u32| -> Result<u64, aya::maps::MapError> { Ok(map.get(&i, 0)?.iter().sum()) };
    let mut by_reason = Vec::with_capacity(ALL_REASONS.len());
    for r in ALL_REASONS {
        by_reason.push((reason_name(r), sum(r as u32)?));
    }
    Ok(Counters {
        by_reason,
        events_lost: sum(guard_stat::GUARD_STAT_EVENTS_LOST as u32)?,
        replies_tx: sum(guard_stat::GUARD_STAT_REPLIES_TX as u32)?,
    })
}

impl XdpGuard {
    pub fn counters(&self) -> Result<Counters, aya::maps::MapError> {
        let map = self.ebpf.map("guard_stats").expect("guard_stats is in the object");
        let array = PerCpuArray::try_from(map)?;
        read_counters(&array)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_a_distinct_name_and_round_trips() {
        let mut seen = std::collections::HashSet::new();
        for (i, r) in ALL_REASONS.iter().enumerate() {
            assert_eq!(*r as usize, i, "ALL_REASONS must be in ABI order");
            assert_eq!(reason_from_u8(i as u8), Some(*r));
            assert!(seen.insert(reason_name(*r)));
        }
        assert_eq!(reason_from_u8(guard_reason::GUARD_REASON__COUNT as u8), None);
    }
}
