/* SPDX-License-Identifier: (GPL-2.0 OR MIT) */
/*
 * guard_table.h - the qname against the name table: hash it suffix by
 * suffix straight from the packet (guard_hash.h) and look each suffix up in
 * the bucketised open-addressing table of guard_abi.h; and the copy of the
 * name that the verdict log gets.
 */
#ifndef GUARD_TABLE_H
#define GUARD_TABLE_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "guard_abi.h"
#include "guard_hash.h"
#include "guard_consts.h"
#include "guard_maps.h"
#include "pckt_parsing.h"

#define GUARD_NAME_WORDS (GUARD_NAME_BUF / 8)

/* State carried across the per-suffix bpf_loop callback. The callback is
 * verified once however many labels a name has; nested bounded loops over
 * labels, words and probes were the verifier's worst case. Results go to
 * the scratch map (match_*), not to this struct: stack writes would make
 * every callback exit a new verifier state. */
struct suffix_walk {
	struct xdp_md *ctx;
	struct guard_scratch *s;
	void *table;
	__u64 h;         /* hash state, carried right to left */
	__u64 n;         /* labels */
	__u64 start;     /* packet offset of the qname */
	__u64 len;       /* qname length */
	__u32 nbuckets;
	__u32 max_probe;
	__u32 bloom_first;
	__u32 bloom_blocks;
	__u32 deep_marks; /* the walk may stop at an unmarked group (guard_abi.h) */
	__u32 no_tld_names; /* 1: GUARD_TABLE_NO_TLD_NAMES is set */
};

/* The 8 bytes of the qname from offset `at` (0 is its first length byte),
 * read straight from the packet, little-endian, into *word. The caller has
 * checked that qtype/qclass (4 bytes) follow the name, so a word may reach
 * at most 4 bytes past the name; one that would reach further is read up to
 * 3 bytes earlier and shifted down (its top bytes are then zero). Branch-free
 * on purpose: a second packet-read path made the verifier walk 2^words
 * states (E2BIG). Returns -1 if the offsets fail the verifier's bounds,
 * which the parse before it rules out.
 *
 * Words come from the packet, not from a copy in the scratch: a copy's
 * stores and the hash's loads of the same bytes, one label later and
 * misaligned with them, stalled the CPU until the stores retired (30-50 ns
 * per query, measured), and the copy itself is only needed for the log. */
static __always_inline int qname_word(void *data, void *data_end, __u64 start, __u64 at,
				      __u64 len, __u64 *word)
{
	__u64 back, pos;
	__s64 over, neg;
	__u8 *p;

	/* bytes this word would read past qtype/qclass, 0..3 */
	over = (__s64)(at + 8) - (__s64)(len + DNS_QTAIL_LEN);
	neg = over >> 63;
	barrier_var(neg); /* or clang turns max(over, 0) into a branch */
	back = (__u64)(over & ~neg) & 7;
	/* start >= DNS_HDR_LEN > back: never before the packet. The offset is
	 * formed and bounded as a scalar first, or clang adds -back to the
	 * pointer and the verifier sees a negative offset. */
	pos = start + at - back;
	barrier_var(pos);
	if (pos > GUARD_DNS_OFF_MAX + DNS_HDR_LEN + GUARD_QNAME_MAX)
		return -1;
	p = data + pos;
	if (p + 8 > data_end)
		return -1;
	*word = load_word(p) >> (back * 8);
	return 0;
}

/* Copies the qname into the scratch for the verdict log, lower-cased a word
 * at a time, up to the word holding its last byte; the rest of that word is
 * zeroed. Bytes after it are stale: events mask them. Length bytes are
 * <= 63 and so untouched by guard_lower8. Called only for a query that
 * gets an event. A global function, so it is verified once and not once per
 * caller state. */
__attribute__((noinline)) int copy_qname(struct xdp_md *ctx, __u64 dns_off,
					  __u64 len, struct guard_scratch *s)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 start = dns_off + DNS_HDR_LEN, i;

	if (!s || len < 1 || len > GUARD_QNAME_MAX || start > GUARD_DNS_OFF_MAX + DNS_HDR_LEN)
		return -1;
#pragma clang loop unroll(disable)
	for (i = 0; i < GUARD_NAME_WORDS; i++) {
		__u64 at = i * 8, word;

		if (at >= len)
			break;
		if (qname_word(data, data_end, start, at, len, &word))
			return -1;
		store_word(&s->name[at],
			   guard_lower8(word & word_mask_clamped((__s64)len - (__s64)at)));
	}
	return 0;
}

/* Probes for one key. The table is sorted (see guard_abi.h): a key lives
 * in its home bucket or up to max_probe buckets after it, and a miss ends
 * at the first empty slot or the first larger key, almost always inside
 * the home bucket. Returns the slot's flags, or 0. */
static __always_inline __u8 table_probe(void *table, __u32 max_probe, __u32 nbuckets,
					__u64 key)
{
	__u32 b = 1 + guard_home_bucket(key, nbuckets);
	int p, j;

#pragma clang loop unroll(disable)
	for (p = 0; p <= GUARD_MAX_PROBE; p++) {
		struct guard_bucket *bk;

		if (p > max_probe)
			break;
		bk = bpf_map_lookup_elem(table, &b);
		if (!bk)
			break;
#pragma clang loop unroll(full)
		for (j = 0; j < GUARD_BUCKET_SLOTS; j++) {
			__u64 k = bk->keys[j];

			if (k == key)
				return bk->flags[j];
			if (k == 0 || k > key)
				return 0;
		}
		b++;
	}
	return 0;
}

#define BLOOM_MAY_HOLD 1  /* the suffix may be in the table: probe it */
#define BLOOM_LAST_STEP 2 /* no longer suffix can be: the walk may stop here */

/* What the Bloom filter says about the suffix at walk step k: BLOOM_MAY_HOLD
 * unless it rules the suffix out (always set when there is no filter or the
 * block cannot be read: then probe), and BLOOM_LAST_STEP when k is the
 * name's two-label group and its block has no deep mark for it. Steps 0
 * and 1 (one and two labels) test the key's own block; step 1's block is
 * also its group's, which steps 2.. test unless it spilled (guard_abi.h).
 * The group's block is kept in the scratch map, not in the walk's stack
 * struct: there the verifier would track its value and verify the callback
 * once per value (3.4x the instructions, measured). */
static __always_inline int bloom_may_hold(struct suffix_walk *w, __u64 k, __u64 key)
{
	struct guard_bucket *bk;
	__u32 b, p0, p1, p2;
	int last = 0;

	if (!w->bloom_blocks)
		return BLOOM_MAY_HOLD;
	b = k >= 2 ? *(volatile __u32 *)&w->s->bloom_group : 0;
	if (!b)
		b = w->bloom_first + guard_bloom_block(key, w->bloom_blocks);
	bk = bpf_map_lookup_elem(w->table, &b);
	if (!bk)
		return BLOOM_MAY_HOLD;
	if (k == 1) {
		__u64 f = load_word(bk->flags);

		w->s->bloom_group = f & GUARD_BLOOM_SPILLED ? 0 : b;
		if (w->deep_marks && !((f >> guard_deep_bit(key)) & 1))
			last = BLOOM_LAST_STEP;
	}
	p0 = guard_bloom_bit(key, 0);
	p1 = guard_bloom_bit(key, 1);
	p2 = guard_bloom_bit(key, 2);
	return last | ((bk->keys[p0 >> 6] >> (p0 & 63)) & (bk->keys[p1 >> 6] >> (p1 & 63)) &
		       (bk->keys[p2 >> 6] >> (p2 & 63)) & BLOOM_MAY_HOLD);
}

/* One label, right to left (k = 0 is the top-level label): fold its words,
 * read from the packet and lower-cased, into the hash as guard_suffix_keys()
 * does, then look the suffix up. A word that cannot be read ends the walk
 * with what it found so far (the parse rules that out). */
static long suffix_step(__u64 k, void *arg)
{
	struct suffix_walk *w = arg;
	struct guard_scratch *s = w->s;
	void *data = (void *)(long)w->ctx->data;
	void *data_end = (void *)(long)w->ctx->data_end;
	__u64 i = w->n - 1 - k, o, bytes, key, j, word;
	int bloom, done;
	__u8 flags;

	if (i >= GUARD_MAX_LABELS)
		return 1;
	o = s->label_off[i];
	if (qname_word(data, data_end, w->start, o, w->len, &word))
		return 1;
	bytes = (word & 0xff) + 1;
#pragma clang loop unroll(disable)
	for (j = 0; j < GUARD_LABEL_MAX + 1; j += 8) {
		if (j >= bytes)
			break;
		if (j && qname_word(data, data_end, w->start, o + j, w->len, &word))
			return 1;
		w->h = guard_hash_word(w->h, guard_lower8(word) & guard_word_mask(bytes - j));
	}
	w->h = guard_fmix64(w->h);
	key = guard_key(w->h);
	s->suffix_hash[i] = key;
	/* k < 1: the top-level label. Written as a compare with the flag (0
	 * or 1), not `k == 0 && flag`: that form cost the verifier 60 % more
	 * instructions (274k against 171k). */
	if (k < w->no_tld_names)
		return 0; /* no single-label name to find; the hash goes on */

	bloom = bloom_may_hold(w, k, key);
	done = bloom & BLOOM_LAST_STEP ? 1 : 0;
	if (!(bloom & BLOOM_MAY_HOLD))
		return done;
	flags = table_probe(w->table, w->max_probe, w->nbuckets, key);
	if (!flags)
		return done;
	if (flags & (i == 0 ? GUARD_RULE_ALLOW_SELF : GUARD_RULE_ALLOW_SUB)) {
		s->match_allow = 1;
		return 1; /* allow wins (Pi-hole, AdGuard): nothing left to learn */
	}
	if (flags & (i == 0 ? GUARD_RULE_BLOCK_SELF : GUARD_RULE_BLOCK_SUB)) {
		/* right to left: a later hit is more specific and overrides */
		s->match_block = 1;
		s->match_exact = i == 0;
		s->match_flags = flags;
		s->match_rule_id = key;
	}
	return done;
}

/* Matches the qname (at dns_off + DNS_HDR_LEN in the packet, label offsets
 * in the scratch) against the live table, leaving the result in s->match_*.
 * `full` walks every label even where deep marks would stop it, leaving
 * every suffix's key in s->suffix_hash (dynamic blocks need them). Returns
 * -1 if no valid table is installed. */
static __always_inline int match_name(struct xdp_md *ctx, __u64 dns_off, __u64 qname_len,
				      struct guard_scratch *s, __u64 nlabels, int full)
{
	__u32 zero = 0;
	struct guard_table_header *hdr;
	struct suffix_walk w = {};
	void *table;

	s->match_rule_id = 0;
	s->match_allow = 0;
	s->match_block = 0;
	s->match_exact = 0;
	s->match_flags = 0;
	s->bloom_group = 0;
	table = bpf_map_lookup_elem(&guard_tables, &zero);
	if (!table)
		return -1;
	hdr = bpf_map_lookup_elem(table, &zero);
	if (!hdr || hdr->magic != GUARD_TABLE_MAGIC || hdr->nbuckets == 0)
		return -1;
	if (nlabels == 0 || nlabels >= GUARD_MAX_LABELS)
		return 0; /* the root name: nothing to look up */
	/* An empty table (a node that only rate-limits) holds nothing to
	 * find. Without this the walk would probe every suffix: an empty
	 * table has no Bloom filter to rule them out. Dynamic blocks still
	 * need every suffix's key. */
	if (!full && hdr->nnames == 0)
		return 0;
	w.ctx = ctx;
	w.s = s;
	w.start = dns_off + DNS_HDR_LEN;
	w.len = qname_len;
	w.table = table;
	w.h = hdr->seed;
	w.n = nlabels;
	w.nbuckets = hdr->nbuckets;
	w.max_probe = hdr->max_probe > GUARD_MAX_PROBE ? GUARD_MAX_PROBE : hdr->max_probe;
	w.bloom_first = hdr->bloom_first;
	w.bloom_blocks = hdr->bloom_blocks;
	w.deep_marks = !full && (hdr->flags & GUARD_TABLE_DEEP_MARKS);
	w.no_tld_names = hdr->flags & GUARD_TABLE_NO_TLD_NAMES ? 1 : 0;
	bpf_loop(nlabels, suffix_step, &w, 0);
	return 0;
}

#endif /* GUARD_TABLE_H */
