/* SPDX-License-Identifier: (GPL-2.0 OR MIT) */
/*
 * guard_dynblock.h - is the qname a subdomain of a zone under a dynamic
 * block (guard_abi.h, "dynamic blocks")? Runs after match_name(), whose
 * walk left the seeded key of every suffix in s->suffix_hash, so this costs
 * one hash lookup per proper suffix and no hashing at all; and only while
 * some block is live (guard_config.dynblocks != 0).
 */
#ifndef GUARD_DYNBLOCK_H
#define GUARD_DYNBLOCK_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "guard_abi.h"
#include "guard_maps.h"

struct dynblock_walk {
	struct guard_scratch *s;
	__u64 now;
};

/* Suffix k + 1 (k = 0 is the suffix below the full name): a zone strictly
 * above the qname. The zone apex itself is never blocked: the attack is on
 * its random subdomains, and the apex (SOA, NS, MX ...) keeps resolving. */
static long dynblock_step(__u64 k, void *arg)
{
	struct dynblock_walk *w = arg;
	struct guard_scratch *s = w->s;
	struct guard_dynblock *b;
	__u64 i = k + 1, key;

	if (i >= GUARD_MAX_LABELS)
		return 1;
	key = s->suffix_hash[i];
	b = bpf_map_lookup_elem(&guard_dynblock, &key);
	if (!b || b->expires_ns <= w->now)
		return 0; /* an expired entry is as good as none */
	s->match_dyn_action = b->action;
	s->match_rule_id = key;
	return 1;
}

/* Leaves the block's action in s->match_dyn_action (0: no block) and the
 * zone's key in s->match_rule_id. Call only after match_name() found no
 * rule, with the label count it was given. */
static __always_inline void dynblock_match(struct guard_scratch *s, __u64 nlabels)
{
	struct dynblock_walk w = { .s = s };

	s->match_dyn_action = 0;
	if (nlabels < 2 || nlabels >= GUARD_MAX_LABELS)
		return;
	w.now = bpf_ktime_get_ns();
	bpf_loop(nlabels - 1, dynblock_step, &w, 0);
}

#endif /* GUARD_DYNBLOCK_H */
