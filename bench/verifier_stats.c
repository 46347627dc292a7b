// SPDX-License-Identifier: (GPL-2.0 OR MIT)
/*
 * verifier_stats: loads dns_guard from guard.bpf.o with a verifier log and
 * prints it. Level 4 (BPF_LOG_STATS, the default) gives the processed and
 * state counts; level 2 logs every instruction the verifier walks (about
 * 1 GB for this program: the kernel keeps the last 900 MiB). Maps are
 * created unpinned and everything is released at exit, so nothing is left
 * in /sys/fs/bpf. Root.
 *
 *   gcc -O2 -o /tmp/verifier_stats bench/verifier_stats.c -lbpf
 *   /tmp/verifier_stats target/release/build/guard-ebpf-HASH/out/guard.bpf.o [level]
 */
#include <stdio.h>
#include <stdlib.h>
#include <bpf/libbpf.h>

int main(int argc, char **argv)
{
	size_t size = (size_t)900 << 20;
	char *log = calloc(1, size);
	struct bpf_object *obj;
	struct bpf_program *prog;
	struct bpf_map *map;
	int err;

	if (argc < 2 || !log) {
		fprintf(stderr, "usage: %s guard.bpf.o [log level, default 4]\n", argv[0]);
		return 2;
	}
	obj = bpf_object__open_file(argv[1], NULL);
	if (!obj) {
		perror(argv[1]);
		return 1;
	}
	bpf_object__for_each_map(map, obj)
		bpf_map__set_pin_path(map, NULL);
	prog = bpf_object__find_program_by_name(obj, "dns_guard");
	if (!prog) {
		fprintf(stderr, "%s: no program dns_guard\n", argv[1]);
		return 1;
	}
	bpf_program__set_log_buf(prog, log, size);
	bpf_program__set_log_level(prog, argc > 2 ? atoi(argv[2]) : 4);
	err = bpf_object__load(obj);
	fputs(log, stdout);
	printf("load: %d\n", err);
	bpf_object__close(obj);
	return err ? 1 : 0;
}
