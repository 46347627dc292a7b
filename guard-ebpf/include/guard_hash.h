/* SPDX-License-Identifier: (GPL-2.0 OR MIT) */
/*
 * guard_hash.h - the name hash shared by the kernel and the list compiler.
 *
 * Pure C with no BPF helpers, so the same text is compiled into the XDP
 * program and into a host test library (guard-ebpf/build.rs) that checks the
 * Rust implementation (guard-ebpf/src/table.rs) byte for byte.
 *
 * A name is hashed suffix by suffix, right to left: the key of the suffix
 * starting at label i is mix(key of label i+1, bytes of label i). One pass
 * over the name yields every suffix key, so suffix matching costs one table
 * lookup per label (dnsdist's eBPF filter cannot do suffixes at all).
 *
 * Labels are hashed 8 bytes at a time, length byte included, lower-cased
 * with SWAR bit tricks. The per-table seed makes precomputed collisions
 * useless; the false-match rate is n / 2^64 per lookup (n = names in table).
 */
#ifndef GUARD_HASH_H
#define GUARD_HASH_H

#include "guard_abi.h"

#define GUARD_HASH_K1 0x9e3779b97f4a7c15ULL
#define GUARD_SWAR_LOW7 0x7f7f7f7f7f7f7f7fULL
#define GUARD_SWAR_HIGH 0x8080808080808080ULL

#ifndef GUARD_INLINE
#define GUARD_INLINE static inline __attribute__((always_inline))
#endif

/* ASCII A-Z -> a-z in all 8 bytes at once; other bytes unchanged. */
GUARD_INLINE __u64 guard_lower8(__u64 w)
{
	__u64 heptets = w & GUARD_SWAR_LOW7;
	__u64 ge_a = heptets + 0x3f3f3f3f3f3f3f3fULL; /* high bit: byte >= 'A' */
	__u64 gt_z = heptets + 0x2525252525252525ULL; /* high bit: byte >  'Z' */
	__u64 upper = ge_a & ~gt_z & ~w & GUARD_SWAR_HIGH;
	return w | (upper >> 2);
}

/* murmur3's fmix64: full avalanche at the end of each label. */
GUARD_INLINE __u64 guard_fmix64(__u64 x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdULL;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ULL;
	x ^= x >> 33;
	return x;
}

/* Folds one 8-byte word of a label into the running state. */
GUARD_INLINE __u64 guard_hash_word(__u64 h, __u64 w)
{
	h = (h ^ w) * GUARD_HASH_K1;
	return h ^ (h >> 32);
}

/* Mask keeping the low `bytes` bytes of a little-endian word (1..8). */
GUARD_INLINE __u64 guard_word_mask(__u32 bytes)
{
	return bytes >= 8 ? ~0ULL : ((1ULL << (bytes * 8)) - 1);
}

/* The stored form of a key: 0 is reserved for empty slots. */
GUARD_INLINE __u64 guard_key(__u64 h)
{
	return h ? h : 1;
}

/* Home bucket of a key: fastrange on the high 32 bits. */
GUARD_INLINE __u32 guard_home_bucket(__u64 key, __u32 nbuckets)
{
	return (__u32)(((key >> 32) * (__u64)nbuckets) >> 32);
}

/* Bloom filter block of a key: fastrange on the low 32 bits (the home
 * bucket uses the high ones). */
GUARD_INLINE __u32 guard_bloom_block(__u64 key, __u32 blocks)
{
	return (__u32)(((key & 0xffffffffULL) * (__u64)blocks) >> 32);
}

/* Bit i (0..2) of a key in its 512-bit block: 9 bits each from bit 32 up. */
GUARD_INLINE __u32 guard_bloom_bit(__u64 key, int i)
{
	return (__u32)(key >> (32 + 9 * i)) & 511;
}

/* Deep mark of a group key in its block's flags word: bit 8 + (0..55), from
 * the key's low 16 bits, which neither the block choice (the high bits of
 * the low 32, for up to 65,536 blocks) nor the Bloom bits use. */
GUARD_INLINE __u32 guard_deep_bit(__u64 group_key)
{
	return 8 + (__u32)(((group_key & 0xffff) * 56) >> 16);
}

#ifndef __BPF__
/*
 * Reference implementation for hosts: fills out[i] with the key of the
 * suffix starting at label i of a wire-format name, returns the label count
 * or -1 if the name is not a valid uncompressed wire name. The kernel takes
 * the same steps over the packet's bytes (guard_table.h).
 */
static inline int guard_suffix_keys(const __u8 *name, __u32 len, __u64 seed,
				    __u64 *out, __u32 out_cap)
{
	__u32 offs[GUARD_MAX_LABELS];
	__u32 n = 0, off = 0;

	while (off < len) {
		__u8 l = name[off];
		if (l == 0)
			break;
		if (l > GUARD_LABEL_MAX || n >= GUARD_MAX_LABELS || off + 1 + l >= len)
			return -1;
		offs[n++] = off;
		off += 1 + l;
	}
	if (n > out_cap)
		return -1;

	__u64 h = seed;
	for (int i = (int)n - 1; i >= 0; i--) {
		__u32 o = offs[i], bytes = name[o] + 1;
		for (__u32 j = 0; j < bytes; j += 8) {
			__u64 w = 0;
			for (__u32 b = 0; b < 8 && j + b < bytes; b++)
				w |= (__u64)name[o + j + b] << (8 * b);
			h = guard_hash_word(h, guard_lower8(w) & guard_word_mask(bytes - j));
		}
		h = guard_fmix64(h);
		out[i] = guard_key(h);
	}
	return (int)n;
}
#endif

#endif /* GUARD_HASH_H */
