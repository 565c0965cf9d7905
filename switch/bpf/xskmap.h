// SPDX-License-Identifier: GPL-2.0
// The map every podswitch XDP program redirects through. Key: rx queue id;
// value: the AF_XDP socket bound to that queue. Size mirrored by
// XSKMAP_ENTRIES in src/xdp.rs.
#pragma once
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");
