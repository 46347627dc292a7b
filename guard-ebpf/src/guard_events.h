/* SPDX-License-Identifier: (GPL-2.0 OR MIT) */
/*
 * guard_events.h - per-reason counters and verdict events. Every packet the
 * program handles bumps exactly one reason counter, except in a rate-limit
 * dry run, where a query over its rate counts over_rate beside its own
 * reason (what enforcing would have dropped); every non-pass verdict, log
 * match and malformed query also becomes one event (two in that dry run).
 * A full ring buffer is itself counted, so nothing is lost silently.
 */
#ifndef GUARD_EVENTS_H
#define GUARD_EVENTS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "guard_abi.h"
#include "guard_maps.h"
#include "guard_consts.h"
#include "pckt_parsing.h"

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&guard_stats, &idx);

	if (v)
		*v += 1;
}

/* What the program decided about one query. */
struct decision {
	__u64 rule_id;
	__u8 verdict; /* enum guard_verdict */
	__u8 action;  /* enum guard_action */
	__u8 reason;  /* enum guard_reason */
	/* Named padding, so initializers zero every byte: without CAP_PERFMON
	 * the verifier rejects uninitialized stack passed to emit_event. */
	__u8 _pad[5];
};

/* Global, so the verifier checks it once rather than at every call site's
 * state. */
__attribute__((noinline)) int emit_event(const struct packet_description *pd,
					 const struct guard_scratch *s,
					 const struct decision *d, __u64 qname_len)
{
	struct guard_event *e;

	if (!pd || !d)
		return -1;

	e = bpf_ringbuf_reserve(&guard_events, sizeof(*e), 0);
	if (!e) {
		count(GUARD_STAT_EVENTS_LOST);
		return -1;
	}
	e->ts_ns = bpf_ktime_get_ns();
	e->rule_id = d->rule_id;
	__builtin_memcpy(e->client_addr, pd->client_addr, sizeof(e->client_addr));
	e->client_port = pd->client_port;
	e->qtype = pd->qtype;
	e->family = pd->family;
	e->verdict = d->verdict;
	e->action = d->action;
	e->reason = d->reason;
	__builtin_memset(e->_pad, 0, sizeof(e->_pad));
	if (s && qname_len && qname_len <= GUARD_QNAME_MAX) {
		int i;

		e->qname_len = qname_len;
		/* the scratch holds stale bytes after the name: mask them out */
#pragma clang loop unroll(disable)
		for (i = 0; i < sizeof(e->qname) / 8; i++) {
			__u64 w = load_word(&s->name[i * 8]);

			w &= word_mask_clamped((__s64)qname_len - i * 8);
			store_word(&e->qname[i * 8], w);
		}
	} else {
		e->qname_len = 0;
		__builtin_memset(e->qname, 0, sizeof(e->qname));
	}
	bpf_ringbuf_submit(e, 0);
	return 0;
}

#endif /* GUARD_EVENTS_H */
