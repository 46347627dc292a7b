/* SPDX-License-Identifier: (GPL-2.0 OR MIT) */
/*
 * guard_maps.h - every map of the XDP program. Layouts come from
 * guard_abi.h; all maps but the scratch pin by name, so dns-guard can
 * restart (or be upgraded) without dropping configuration or counters.
 */
#ifndef GUARD_MAPS_H
#define GUARD_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "guard_abi.h"

/* Runtime knobs written by dns-guard: actions, ports, rate limits. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct guard_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} guard_config SEC(".maps");

/* Template of one name table (header + buckets); real tables are created by
 * userspace at any size with the same flags and filled through mmap. */
struct guard_table_inner {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE | BPF_F_INNER_MAP);
	__uint(max_entries, 1);
	/* Sizes, not __type: clang 14 emits struct guard_bucket only as a BTF
	 * forward here, so loaders cannot size the value, and a BTF key type
	 * without a value type makes the kernel refuse the map. */
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(struct guard_bucket));
};

/* Slot 0 holds the live name table; a list reload swaps it atomically. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 1);
	__type(key, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct guard_table_inner); /* must come last */
} guard_tables SEC(".maps");

/* One counter per enum guard_reason, then enum guard_stat, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, GUARD_STAT__COUNT);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} guard_stats SEC(".maps");

/* GCRA state per client prefix; LRU so a spoofed-source flood evicts
 * itself instead of filling the map. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 131072);
	__type(key, struct guard_rl_key);
	__type(value, struct guard_rl_state);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} guard_ratelimit SEC(".maps");

/* Zones whose subdomains are under a dynamic block, by suffix key. A plain
 * hash: userspace bounds it and removes expired entries. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, GUARD_DYNBLOCK_MAX);
	__type(key, __u64);
	__type(value, struct guard_dynblock);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} guard_dynblock SEC(".maps");

/* Verdict events (struct guard_event) for the verdict log. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, GUARD_EVENTS_RING_BYTES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} guard_events SEC(".maps");

/* Per-CPU working memory: the qname copy and its suffix keys are too big
 * for the 512-byte stack. Not pinned: nothing outlives one packet. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct guard_scratch);
} guard_scratch SEC(".maps");

#endif /* GUARD_MAPS_H */
