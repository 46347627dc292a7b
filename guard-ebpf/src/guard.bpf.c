/* SPDX-License-Identifier: (GPL-2.0 OR MIT) */
/*
 * guard.bpf.c - DNS Guard's XDP fast path.
 *
 * Reads top to bottom in the order a packet is handled: configuration,
 * Ethernet/VLAN, IPv4/IPv6, UDP port, DNS header, question, name table,
 * rate limit, action. Anything that is not a well-formed DNS query is
 * passed (fail-open): this program only ever drops or answers queries it
 * fully understood, with one exception: a malformed packet from a client
 * over its rate limit is dropped, since no reply can be built for it.
 * Each outcome has a reason code, counted per CPU.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "guard_abi.h"
#include "guard_hash.h"
#include "guard_consts.h"
#include "guard_maps.h"
#include "pckt_parsing.h"
#include "guard_table.h"
#include "guard_dynblock.h"
#include "guard_ratelimit.h"
#include "guard_events.h"
#include "dns_reply.h"

/*
 * The program is cut into global (non-static, never inlined) functions at
 * the points where verifier state would otherwise multiply: the verifier
 * checks a global function once, with unknown arguments, instead of once per
 * caller state (VLAN or not, IPv4 or IPv6, each exit of the qname walk ...).
 * That is why each of them re-checks the offsets it is handed.
 */

/* Steps 2-3: Ethernet, IP, UDP to a DNS port, the DNS header. */
__attribute__((noinline)) int parse_packet(struct xdp_md *ctx,
					   const struct guard_config *cfg,
					   struct packet_description *pd)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u16 l3_proto;
	int r;

	if (!cfg || !pd)
		return GUARD_REASON_PASS_NOT_DNS;
	r = parse_eth(data, data_end, pd, &l3_proto);
	if (r != GUARD_PARSE_OK)
		return r;
	if (l3_proto == GUARD_ETH_P_IP)
		r = parse_ipv4(data, data_end, pd);
	else if (l3_proto == GUARD_ETH_P_IPV6)
		r = parse_ipv6(data, data_end, pd);
	else
		r = GUARD_REASON_PASS_NOT_DNS;
	if (r != GUARD_PARSE_OK)
		return r;
	r = parse_udp(data, data_end, cfg, pd);
	if (r != GUARD_PARSE_OK)
		return r;
	return parse_dns_header(data, data_end, pd);
}

/* Steps 4-5: the question. Leaves qname_len, nlabels and the label offsets
 * in the scratch. */
__attribute__((noinline)) int parse_question(struct xdp_md *ctx,
					     struct packet_description *pd,
					     struct guard_scratch *s)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 dns_off, qname_len;
	int r;

	if (!pd || !s)
		return GUARD_REASON_MALFORMED_TRUNCATED_QUESTION;
	dns_off = pd->dns_off;
	barrier_var(dns_off);
	if (dns_off > GUARD_DNS_OFF_MAX)
		return GUARD_REASON_MALFORMED_TRUNCATED_QUESTION;
	r = parse_qname(data, data_end, dns_off, s);
	if (r != GUARD_PARSE_OK)
		return r;
	/* Re-read through memory and fresh packet pointers: otherwise each
	 * exit of the walk (its own offset and verified range) is a separate
	 * verifier state for everything below. */
	asm volatile("" ::: "memory");
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	qname_len = *(volatile __u32 *)&s->qname_len;
	if (qname_len < 1 || qname_len > GUARD_QNAME_MAX ||
	    *(volatile __u32 *)&s->nlabels >= GUARD_MAX_LABELS)
		return GUARD_REASON_MALFORMED_NAME_TOO_LONG;
	return parse_question_tail(data, data_end, pd, dns_off, qname_len);
}

/* Not DNS, or not ours to judge: counted and passed untouched. */
static __always_inline int pass(__u32 reason)
{
	count(reason);
	return XDP_PASS;
}

/* Malformed queries are passed too (the resolver answers FORMERR), but
 * logged: they are what fuzzers and parser exploits look like. They count
 * against the sender's rate like any query, or garbage would be a way
 * around the limit; over it they are dropped whatever rl_action says, as
 * no reply can be built for them (except in a dry run, which passes). */
static __always_inline int malformed(const struct guard_config *cfg,
				     const struct packet_description *pd, __u32 reason)
{
	struct decision d = {
		.verdict = GUARD_VERDICT_MALFORMED,
		.action = GUARD_ACTION_PASS,
		.reason = reason,
	};

	if (cfg->rl_qps && rl_over_rate(cfg, pd)) {
		d.verdict = GUARD_VERDICT_RATELIMIT;
		d.reason = GUARD_REASON_RATELIMIT;
		d.action = cfg->rl_action == GUARD_ACTION_LOG ? GUARD_ACTION_LOG : GUARD_ACTION_DROP;
		emit_event(pd, NULL, &d, 0);
		if (d.action == GUARD_ACTION_LOG)
			return pass(GUARD_REASON_RATELIMIT);
		count(GUARD_REASON_RATELIMIT);
		return XDP_DROP;
	}
	emit_event(pd, NULL, &d, 0);
	return pass(reason);
}

/* The block action a matched rule gets: its own FORCE_* flags for the kind
 * of match (the name itself, or a subdomain of it), else the configured
 * one. A LOG (dry run) configuration wins over both: dry run must never
 * touch traffic. */
static __always_inline __u8 block_action(const struct guard_config *cfg, __u8 flags, __u8 exact)
{
	if (cfg->block_action == GUARD_ACTION_LOG)
		return GUARD_ACTION_LOG;
	if (!exact)
		flags >>= GUARD_RULE_FORCE_SUB_SHIFT;
	if (flags & GUARD_RULE_FORCE_DROP)
		return GUARD_ACTION_DROP;
	if (flags & GUARD_RULE_FORCE_NXDOMAIN)
		return GUARD_ACTION_NXDOMAIN;
	return cfg->block_action;
}

/* Every verdict but allow gets an event; log.allow_sample also logs a
 * random fraction of allowed queries, so operators see what normal traffic
 * looks like. */
static __always_inline int wants_event(const struct decision *d, __u32 allow_sample)
{
	return d->verdict != GUARD_VERDICT_ALLOW ||
	       (allow_sample && (allow_sample == 0xffffffff || bpf_get_prandom_u32() < allow_sample));
}

/* Step 8: carries out a decision: event, counter, XDP verdict. `logged`
 * is wants_event(); the qname is in the scratch (or qname_len is 0). */
static __always_inline int act(struct xdp_md *ctx, const struct packet_description *pd,
			       const struct guard_scratch *s, struct decision *d,
			       __u64 qname_len, int logged)
{
	switch (d->action) {
	case GUARD_ACTION_DROP:
		emit_event(pd, s, d, qname_len);
		count(d->reason);
		return XDP_DROP;
	case GUARD_ACTION_NXDOMAIN:
	case GUARD_ACTION_REFUSED:
	case GUARD_ACTION_TRUNCATE:
		switch (dns_reply(ctx, pd, d->action)) {
		case 0:
			emit_event(pd, s, d, qname_len);
			count(d->reason);
			count(GUARD_STAT_REPLIES_TX);
			return XDP_TX;
		case DNS_REPLY_MANGLED:
			/* half rewritten: no longer the query, so it cannot pass */
			d->action = GUARD_ACTION_DROP;
			d->reason = GUARD_REASON_TX_FAILED;
			emit_event(pd, s, d, qname_len);
			count(GUARD_REASON_TX_FAILED);
			return XDP_DROP;
		default:
			/* never drop legitimate DNS because of our own limits */
			d->action = GUARD_ACTION_PASS;
			d->reason = GUARD_REASON_TX_FAILED;
			emit_event(pd, s, d, qname_len);
			return pass(GUARD_REASON_TX_FAILED);
		}
	case GUARD_ACTION_LOG:
		emit_event(pd, s, d, qname_len);
		return pass(d->reason);
	default:
		d->action = GUARD_ACTION_PASS;
		if (logged)
			emit_event(pd, s, d, qname_len);
		return pass(d->reason);
	}
}

SEC("xdp")
int dns_guard(struct xdp_md *ctx)
{
	struct packet_description pd = {};
	struct decision d = {};
	struct guard_config *cfg;
	struct guard_scratch *s;
	__u64 qname_len, rule_id;
	__u8 allow, block, exact, flags, dyn = 0;
	__u32 zero = 0, dynblocks;
	int r, logged, over, rl_dry;

	/* 1. Unconfigured (or configured by another ABI): hands off. */
	cfg = bpf_map_lookup_elem(&guard_config, &zero);
	if (!cfg || cfg->abi_version != GUARD_ABI_VERSION)
		return XDP_PASS;

	/* 2-3. Headers. Responses (QR=1) are not ours to judge. */
	r = parse_packet(ctx, cfg, &pd);
	if (r == GUARD_REASON_MALFORMED_TRUNCATED_HEADER ||
	    r == GUARD_REASON_MALFORMED_OPCODE || r == GUARD_REASON_MALFORMED_QDCOUNT)
		return malformed(cfg, &pd, r);
	if (r != GUARD_PARSE_OK)
		return pass(r);

	/* 4-5. The question. */
	s = bpf_map_lookup_elem(&guard_scratch, &zero);
	if (!s)
		return pass(GUARD_REASON_PASS_NOT_DNS); /* cannot happen */
	r = parse_question(ctx, &pd, s);
	if (r != GUARD_PARSE_OK)
		return malformed(cfg, &pd, r);
	qname_len = *(volatile __u32 *)&s->qname_len;

	/* 6. The name against the table. Read once: a dynamic-block lookup
	 * needs the full walk, and userspace may set dynblocks meanwhile. */
	dynblocks = cfg->dynblocks;
	r = match_name(ctx, pd.dns_off, qname_len, s, *(volatile __u32 *)&s->nlabels, dynblocks);
	allow = *(volatile __u8 *)&s->match_allow;
	block = *(volatile __u8 *)&s->match_block;
	exact = *(volatile __u8 *)&s->match_exact;
	flags = *(volatile __u8 *)&s->match_flags;
	rule_id = *(volatile __u64 *)&s->match_rule_id;

	/* 6b. No rule: is the name under a zone the proxy saw being flooded
	 * with random subdomains? Only while a dynamic block is live. */
	if (!r && !allow && !block && dynblocks) {
		dynblock_match(s, *(volatile __u32 *)&s->nlabels);
		dyn = *(volatile __u8 *)&s->match_dyn_action;
		rule_id = *(volatile __u64 *)&s->match_rule_id;
	}

	/* 7. Verdict: rate limit first (it applies to every query, and a
	 * flood of blocked names is still a flood), then allow, then block.
	 * A rate-limit dry run (LOG) only logs and counts: the query goes on
	 * to the allow and block checks as if under its rate, so trying out
	 * the limit never lifts a block. */
	over = cfg->rl_qps && rl_over_rate(cfg, &pd);
	rl_dry = over && cfg->rl_action == GUARD_ACTION_LOG;
	if (over && !rl_dry) {
		d.verdict = GUARD_VERDICT_RATELIMIT;
		d.reason = GUARD_REASON_RATELIMIT;
		d.action = cfg->rl_action;
		d.rule_id = block && !allow ? rule_id : 0;
	} else if (allow) {
		d.verdict = GUARD_VERDICT_ALLOW;
		d.reason = GUARD_REASON_ALLOW_ALLOWLIST;
		d.action = GUARD_ACTION_PASS;
	} else if (block) {
		d.verdict = GUARD_VERDICT_BLOCK;
		d.reason = exact ? GUARD_REASON_BLOCK_EXACT : GUARD_REASON_BLOCK_SUFFIX;
		d.action = block_action(cfg, flags, exact);
		d.rule_id = rule_id;
	} else if (dyn) {
		d.verdict = GUARD_VERDICT_BLOCK;
		d.reason = GUARD_REASON_BLOCK_DYNAMIC;
		/* dry run (xdp.action: log) wins here too */
		d.action = cfg->block_action == GUARD_ACTION_LOG ? GUARD_ACTION_LOG : dyn;
		d.rule_id = rule_id;
	} else {
		d.verdict = GUARD_VERDICT_ALLOW;
		d.reason = r ? GUARD_REASON_NO_TABLE : GUARD_REASON_ALLOW_CLEAN;
		d.action = GUARD_ACTION_PASS;
	}

	/* 8. Act. The name is copied for the log only when there is an
	 * event: a clean query never pays for the copy. */
	logged = wants_event(&d, cfg->allow_sample);
	if ((logged || rl_dry) && copy_qname(ctx, pd.dns_off, qname_len, s))
		qname_len = 0; /* the parse rules it out; log the rest */
	if (rl_dry) {
		struct decision rl = {
			.verdict = GUARD_VERDICT_RATELIMIT,
			.reason = GUARD_REASON_RATELIMIT,
			.action = GUARD_ACTION_LOG,
			.rule_id = d.rule_id,
		};

		emit_event(&pd, s, &rl, qname_len);
		count(GUARD_REASON_RATELIMIT);
	}
	return act(ctx, &pd, s, &d, qname_len, logged);
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
