/* Host build of guard_hash.h, linked into tests only: it is the oracle the
 * Rust list compiler's hash is checked against. */
#include "guard_hash.h"

int guard_host_suffix_keys(const __u8 *name, __u32 len, __u64 seed, __u64 *out,
			   __u32 out_cap)
{
	return guard_suffix_keys(name, len, seed, out, out_cap);
}
