/* SPDX-License-Identifier: (GPL-2.0 OR MIT) */
/*
 * guard_abi.h - the one contract between the XDP program and dns-guard.
 *
 * Every struct, constant, reason code and map key that crosses the
 * kernel/userspace boundary lives here. The Rust side is generated from this
 * file by bindgen (guard-ebpf/build.rs); layout drift is caught by the ABI
 * test in guard-ebpf/tests/abi.rs. Never mirror anything from here by hand.
 *
 * Structs are padded explicitly: no implicit holes, no bool, so the bytes
 * the kernel writes are the bytes Rust reads.
 */
#ifndef GUARD_ABI_H
#define GUARD_ABI_H

#ifdef __BPF__
#include <linux/types.h>
#else
#include <stdint.h>
typedef uint8_t __u8;
typedef uint16_t __u16;
typedef uint32_t __u32;
typedef uint64_t __u64;
#endif

/* Bumped on any change to a pinned map's layout: a restart that finds pins
 * of another version refuses to reuse them instead of misreading them. */
#define GUARD_ABI_VERSION 3

/* ---- limits ------------------------------------------------------------ */

/* RFC 1035 2.3.4: names are at most 255 octets on the wire, labels 63. */
#define GUARD_QNAME_MAX 255
#define GUARD_LABEL_MAX 63
/* 255 octets hold at most 127 one-byte labels plus the root. */
#define GUARD_MAX_LABELS 128
/* Scratch copy of the qname for the verdict log: 256 bytes plus one word
 * of slack, so that the copy's 8-byte store of the last word never leaves
 * the buffer. */
#define GUARD_NAME_BUF 264
#define GUARD_MAX_PORTS 8

/* ---- the name table (blocklist + allowlist) -----------------------------
 *
 * One BPF_ARRAY (BPF_F_MMAPABLE | BPF_F_INNER_MAP) per list generation,
 * installed in slot 0 of the guard_tables array-of-maps. Userspace builds a
 * new table, fills it through mmap and swaps it in with one map update, so a
 * reload is atomic and the steady state holds exactly one table.
 *
 * Element 0 is a guard_table_header; buckets follow from element 1. A key
 * is the 64-bit name hash of guard_hash.h (0 marks an empty slot; a hash of
 * 0 is stored as 1). Its home bucket is 1 + guard_home_bucket(key,
 * nbuckets), monotone in the key, and keys are inserted in ascending order
 * with linear probing and no wrap-around, so the whole table is sorted:
 * a lookup stops at the first empty slot or the first larger key. The
 * builder appends overflow buckets after the last home bucket and
 * guarantees every key sits at most max_probe <= GUARD_MAX_PROBE buckets
 * after its home, so the kernel's bounded loop never misses a stored name.
 *
 * A blocked Bloom filter follows the buckets (bloom_blocks elements from
 * element bloom_first; none when bloom_blocks is 0). Each block is one
 * element whose keys[] are read as 512 bits; a key sets 3 of them in one
 * block (see guard_bloom_* in guard_hash.h). About 1.1 bytes per name, and
 * about 1 MB at 1M names against 10.6 MB of buckets: most suffixes of a
 * clean name are ruled out there instead of by a bucket probe.
 *
 * Which block: a key of one or two labels uses its own, block
 * guard_bloom_block(key). A key of three or more labels uses its group's:
 * the block of the key of its last two labels, so all suffixes of a name
 * test one block, and a cold name costs one block miss, not one per label
 * (none at all under a busy domain, whose block stays cached). A block
 * whose groups would put too many keys in it has GUARD_BLOOM_SPILLED in
 * flags[0]; the 3+-label keys of those groups then use their own blocks.
 *
 * Deep marks (header flag GUARD_TABLE_DEEP_MARKS). The other 56 bits of a
 * block's flags[] (bits 8..63 of flags[] read as one little-endian word; a
 * group's bit is guard_deep_bit(group key)) mark the groups, among those
 * whose two-label key has this block, that hold a name of three or more
 * labels. A name whose group is unmarked cannot match past its last two
 * labels, so the walk stops there: most queries (Kubernetes'
 * *.cluster.local, names under a domain no list goes below) hash and test
 * two labels, not all of them. A mark is never missing for a group that
 * has such names; a false mark only costs the full walk. While dynamic
 * blocks are live the walk is always full, as their lookups need every
 * suffix's key.
 */
#define GUARD_BUCKET_SLOTS 8
#define GUARD_MAX_PROBE 128
#define GUARD_TABLE_MAGIC 0x32656c6261746764ULL /* "dgtable2" little-endian */
/* flags[0] of a Bloom block: keys grouped here use their own blocks. */
#define GUARD_BLOOM_SPILLED 1
/* guard_table_header.flags: the Bloom blocks carry deep marks. */
#define GUARD_TABLE_DEEP_MARKS 1
/* guard_table_header.flags: no name in the table is a single label (most
 * lists), so the walk hashes a top-level label but does not look it up. */
#define GUARD_TABLE_NO_TLD_NAMES 2

struct guard_bucket {
	__u64 keys[GUARD_BUCKET_SLOTS];
	__u8 flags[GUARD_BUCKET_SLOTS]; /* enum guard_rule_flags, per slot */
};

struct guard_table_header {
	__u64 magic;
	__u64 seed;      /* per-table hash seed: names are hashed with it */
	__u32 nbuckets;  /* home buckets 1..=nbuckets; overflow buckets follow */
	__u32 max_probe; /* longest displacement, in buckets, <= GUARD_MAX_PROBE */
	__u64 nnames;
	__u64 generation;
	__u32 bloom_first;  /* element index of the first Bloom block */
	__u32 bloom_blocks; /* 0: no Bloom filter, probe every suffix */
	__u32 flags;        /* GUARD_TABLE_* */
	__u8 _pad[20];      /* pads to sizeof(struct guard_bucket) */
};

/* What a table entry says about the name it was built from. A name can
 * carry several bits (a list with both "example.com" and "*.example.com").
 * The FORCE bits come from RPZ actions and, like the BLOCK bits, apply to
 * the name itself or to its subdomains: "x CNAME rpz-drop." beside
 * "*.x CNAME ." drops x and answers NXDOMAIN for its subdomains. */
enum guard_rule_flags {
	GUARD_RULE_BLOCK_SELF = 1 << 0,         /* block the name itself */
	GUARD_RULE_BLOCK_SUB = 1 << 1,          /* block every subdomain */
	GUARD_RULE_ALLOW_SELF = 1 << 2,         /* allow the name itself */
	GUARD_RULE_ALLOW_SUB = 1 << 3,          /* allow every subdomain */
	GUARD_RULE_FORCE_NXDOMAIN = 1 << 4,     /* RPZ "x CNAME .": NXDOMAIN for x */
	GUARD_RULE_FORCE_DROP = 1 << 5,         /* RPZ "x CNAME rpz-drop.": drop x */
	GUARD_RULE_FORCE_NXDOMAIN_SUB = 1 << 6, /* RPZ "*.x CNAME .": for x's subdomains */
	GUARD_RULE_FORCE_DROP_SUB = 1 << 7,     /* RPZ "*.x CNAME rpz-drop." */
};
/* A _SUB force bit is its self bit shifted by this much. Tables built
 * before the _SUB bits existed (bits 4-5 for both kinds) block the same
 * names under this program; only a subdomain rule's forced action falls
 * back to xdp.action, until the restart that loaded it installs its own
 * table (a magic change would instead fail open for that moment). */
#define GUARD_RULE_FORCE_SUB_SHIFT 2

/* ---- runtime configuration (guard_config[0]) ---------------------------- */

enum guard_action {
	GUARD_ACTION_PASS = 0,
	GUARD_ACTION_NXDOMAIN = 1,
	GUARD_ACTION_REFUSED = 2,
	GUARD_ACTION_DROP = 3,
	GUARD_ACTION_LOG = 4,      /* dry run: count and log, then pass */
	GUARD_ACTION_TRUNCATE = 5, /* TC=1, so real clients retry over TCP */
};

struct guard_config {
	__u32 abi_version;  /* GUARD_ABI_VERSION; 0 = not configured: pass all */
	__u8 block_action;  /* enum guard_action */
	__u8 rl_action;     /* enum guard_action */
	__u8 ipv4_prefix;   /* rate-limit aggregation, bits */
	__u8 ipv6_prefix;
	__u32 rl_qps;       /* 0 = rate limit off */
	__u32 rl_burst;
	__u16 ports[GUARD_MAX_PORTS]; /* DNS ports, host byte order; 0 = unused */
	__u32 nports;
	/* log.allow_sample: allowed queries are logged when a random u32 is
	 * below this (0 = none, 0xffffffff = all). */
	__u32 allow_sample;
	/* Live entries in guard_dynblock; 0 skips its lookups, so the
	 * random-subdomain defence costs nothing until it fires. */
	__u32 dynblocks;
};

/* ---- dynamic blocks (the random-subdomain defence) ----------------------
 *
 * When the proxy sees one zone answer NXDOMAIN/SERVFAIL for many different
 * names (a "water torture" flood of random subdomains, which no cache can
 * absorb), dns-guard blocks that zone's subdomains here for a while, as
 * dnsdist's suffix-match dynamic blocks do. Key: the zone's suffix key
 * under the live table's seed (guard_scratch.suffix_hash), so the lookup
 * reuses the hashes the name table walk already made; on a table reload
 * userspace inserts the keys under the new seed before the swap. The kernel
 * honours expires_ns itself, so a block lapses even if dns-guard is gone.
 */
#define GUARD_DYNBLOCK_MAX 4096

/* Bytes in the verdict-event ring buffer. Each event takes its size plus an
 * 8-byte record header, so it holds about 3,360 of them: the reader knows
 * every older event was read once it has read that many since. */
#define GUARD_EVENTS_RING_BYTES (1 << 20)

struct guard_dynblock {
	__u64 expires_ns; /* bpf_ktime_get_ns() (CLOCK_MONOTONIC) deadline */
	__u8 action;      /* enum guard_action */
	__u8 _pad[7];
};

/* ---- rate limiting ------------------------------------------------------ */

/* LRU key: the client address masked to its prefix. */
struct guard_rl_key {
	__u8 family; /* GUARD_FAMILY_* */
	__u8 _pad[3];
	__u8 addr[16];
};

/* GCRA state (a token bucket in one word): the theoretical arrival time. */
struct guard_rl_state {
	__u64 tat_ns;
};

#define GUARD_FAMILY_IPV4 4
#define GUARD_FAMILY_IPV6 6

/* ---- verdicts, reasons, counters --------------------------------------- */

enum guard_verdict {
	GUARD_VERDICT_ALLOW = 0,
	GUARD_VERDICT_BLOCK = 1,
	GUARD_VERDICT_RATELIMIT = 2,
	GUARD_VERDICT_MALFORMED = 3,
};

/* Why. Each reason is also the index of its counter in guard_stats, so
 * "why was this dropped?" is always answerable. Malformed names follow
 * Suricata/Zeek vocabulary. */
enum guard_reason {
	GUARD_REASON_PASS_NOT_DNS = 0,     /* not UDP to a DNS port: untouched */
	GUARD_REASON_PASS_NOT_QUERY,       /* QR=1: a response, not ours to judge */
	GUARD_REASON_PASS_IPV6_EXTHDR,     /* IPv6 extension headers: passed */
	GUARD_REASON_ALLOW_CLEAN,          /* parsed, no rule matched */
	GUARD_REASON_ALLOW_ALLOWLIST,      /* allowlist match won over the blocklist */
	GUARD_REASON_BLOCK_EXACT,          /* blocklisted name */
	GUARD_REASON_BLOCK_SUFFIX,         /* subdomain of a blocklisted suffix */
	GUARD_REASON_RATELIMIT,            /* client prefix over its rate */
	GUARD_REASON_MALFORMED_TRUNCATED_HEADER,
	GUARD_REASON_MALFORMED_OPCODE,     /* opcode is not QUERY (NOTIFY, UPDATE too): passed */
	GUARD_REASON_MALFORMED_QDCOUNT,    /* QDCOUNT != 1 */
	GUARD_REASON_MALFORMED_LABEL_TOO_LONG, /* over 63 bytes, or a 0x40/0x80 label type */
	GUARD_REASON_MALFORMED_NAME_TOO_LONG,
	GUARD_REASON_MALFORMED_COMPRESSION, /* a compression pointer in the question */
	GUARD_REASON_MALFORMED_TRUNCATED_QUESTION,
	GUARD_REASON_TX_FAILED,            /* reply could not be built: passed (dropped if half-written) */
	GUARD_REASON_NO_TABLE,             /* no table installed: lists not checked */
	GUARD_REASON_BLOCK_DYNAMIC,        /* subdomain of a zone under a dynamic block */
	GUARD_REASON__COUNT,
};

/* Counters beyond the reasons. */
enum guard_stat {
	GUARD_STAT_EVENTS_LOST = GUARD_REASON__COUNT, /* ring buffer was full */
	GUARD_STAT_REPLIES_TX,                        /* synthesized replies sent */
	GUARD_STAT__COUNT,
};

/* ---- events (guard_events ring buffer) ---------------------------------- */

/* One per non-pass verdict, and per log-action match. */
struct guard_event {
	__u64 ts_ns;      /* bpf_ktime_get_ns() */
	__u64 rule_id;    /* the matched table key (name hash); 0 if none */
	__u8 client_addr[16]; /* IPv4 in the first 4 bytes */
	__u16 client_port;    /* host byte order */
	__u16 qtype;          /* host byte order */
	__u16 qname_len;      /* wire-format length, including the root label */
	__u8 family;          /* GUARD_FAMILY_* */
	__u8 verdict;         /* enum guard_verdict */
	__u8 action;          /* enum guard_action actually taken */
	__u8 reason;          /* enum guard_reason */
	__u8 _pad[6];
	__u8 qname[256];      /* wire format, lower-cased; valid up to qname_len */
};

/* ---- per-CPU scratch ---------------------------------------------------- */

struct guard_scratch {
	__u8 name[GUARD_NAME_BUF];              /* qname, wire format */
	__u8 label_off[GUARD_MAX_LABELS];       /* offset of each length byte */
	__u64 suffix_hash[GUARD_MAX_LABELS];    /* hash of the suffix at label i */
	/* Working state of one packet, kept here rather than on the stack: a
	 * value re-read from a map is unknown to the verifier, so the code after
	 * a loop (or a bpf_loop callback) is verified once, not once per exit. */
	__u64 match_rule_id;                    /* key of the most specific block */
	__u32 qname_len;                        /* wire length, root included */
	__u32 nlabels;                          /* labels in label_off */
	__u8 match_allow;                       /* an allow rule matched */
	__u8 match_block;                       /* a block rule matched */
	__u8 match_exact;                       /* ... on the full name */
	__u8 match_flags;                       /* that rule's enum guard_rule_flags */
	__u8 match_dyn_action;                  /* a dynamic block's action; 0: none */
	__u8 _pad[3];
	__u32 bloom_group;                      /* Bloom block of the name's group; 0: none */
	__u8 _pad2[4];
};

/* ---- pinned names -------------------------------------------------------- */

/* Under the configured pin directory (default /sys/fs/bpf/dns-guard), in
 * <ifname>-netns<inode> (one per pod network namespace):
 * maps pin by their own names; these two are the program and its link. */
#define GUARD_PIN_PROG "prog"
#define GUARD_PIN_LINK "link"

#endif /* GUARD_ABI_H */
