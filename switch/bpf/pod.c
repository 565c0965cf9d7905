// SPDX-License-Identifier: GPL-2.0
// podswitch pod port: every frame that arrives on the veth goes to the
// AF_XDP socket bound to the rx queue it arrived on. A queue without a
// socket drops the frame: pod traffic must never leak into the node's own
// stack.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "xskmap.h"

SEC("xdp.frags")
int pod_port(struct xdp_md *ctx)
{
	return bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_DROP);
}

char LICENSE[] SEC("license") = "GPL";
