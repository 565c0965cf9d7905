// SPDX-License-Identifier: GPL-2.0
// podswitch uplink: only tunnel UDP addressed to this node's VTEP (one
// IPv4 or IPv6 address and one UDP destination port, read from the
// `filter` map so they can change at run time) goes to the AF_XDP socket
// of the rx queue it arrived on. Everything else, and tunnel packets on a
// queue without a socket, passes to the kernel: the node keeps its SSH,
// kubelet, ARP and neighbour discovery.
//
// Up to two in-band VLAN tags (802.1ad and/or 802.1Q) are skipped. IPv4
// fragments and IPv6 packets with extension headers pass to the kernel.
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "xskmap.h"

// What to redirect. Layout mirrored by `FilterEntry` in src/xdp.rs.
struct uplink_filter {
	__u32 family;   // 0: redirect nothing; 4: IPv4; 6: IPv6
	__be16 udp_port;
	__u16 flags;    // FILTER_*
	__u8 vtep[16];  // IPv4: the first 4 bytes
};

// VXLAN over IPv4 carrying TCP/IPv4 passes to the kernel, whose GRO
// merges a flow's packets and whose tc filter hands them to the switch's
// tunnel port (src/kernel_receive.rs).
#define FILTER_VXLAN_TCP_TO_KERNEL 1

// Packed: the inner IP header follows the 14-byte Ethernet header
// unaligned.
struct vxlan_tcp {
	__u8 vxlan[8];
	struct ethhdr eth;
	struct iphdr ip;
} __attribute__((packed));

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct uplink_filter);
} filter SEC(".maps");

// Per-CPU packet counters, indexed as `Counter` in src/xdp.rs.
enum counter { REDIRECTED, PASSED, REDIRECT_FAILED, TO_KERNEL, COUNTERS };

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, COUNTERS);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

struct vlan_hdr {
	__be16 tci;
	__be16 proto;
};

static __always_inline void count(__u32 counter)
{
	__u64 *value = bpf_map_lookup_elem(&counters, &counter);

	if (value)
		*value += 1;
}

static __always_inline int pass(void)
{
	count(PASSED);
	return XDP_PASS;
}

static __always_inline int uplink_frame(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct uplink_filter *want;
	struct udphdr *udp;
	__u32 key = 0;
	__be16 proto;
	void *l3;
	int plain_ipv4 = 0;

	want = bpf_map_lookup_elem(&filter, &key);
	if (!want)
		return pass();
	if ((void *)(eth + 1) > data_end)
		return pass();
	proto = eth->h_proto;
	l3 = eth + 1;

#pragma unroll
	for (int i = 0; i < 2; i++) {
		if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD)) {
			struct vlan_hdr *vlan = l3;

			if ((void *)(vlan + 1) > data_end)
				return pass();
			proto = vlan->proto;
			l3 = vlan + 1;
		}
	}

	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = l3;

		if (want->family != 4 || (void *)(ip + 1) > data_end)
			return pass();
		if (ip->protocol != IPPROTO_UDP || ip->ihl < 5)
			return pass();
		if (ip->daddr != *(__u32 *)want->vtep)
			return pass();
		// More-fragments set or a fragment offset: the kernel reassembles.
		if (ip->frag_off & bpf_htons(0x3fff))
			return pass();
		plain_ipv4 = ip->ihl == 5;
		udp = l3 + ip->ihl * 4;
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = l3;
		__u32 *dst, *vtep;

		if (want->family != 6 || (void *)(ip6 + 1) > data_end)
			return pass();
		if (ip6->nexthdr != IPPROTO_UDP)
			return pass();
		dst = ip6->daddr.in6_u.u6_addr32;
		vtep = (__u32 *)want->vtep;
		if (dst[0] != vtep[0] || dst[1] != vtep[1] || dst[2] != vtep[2] ||
		    dst[3] != vtep[3])
			return pass();
		udp = (void *)(ip6 + 1);
	} else {
		return pass();
	}

	if ((void *)(udp + 1) > data_end)
		return pass();
	if (udp->dest != want->udp_port)
		return pass();
	if ((want->flags & FILTER_VXLAN_TCP_TO_KERNEL) && plain_ipv4) {
		struct vxlan_tcp *inner = (void *)(udp + 1);

		if ((void *)(inner + 1) <= data_end &&
		    inner->eth.h_proto == bpf_htons(ETH_P_IP) &&
		    inner->ip.protocol == IPPROTO_TCP) {
			count(TO_KERNEL);
			return XDP_PASS;
		}
	}

	int action = bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);

	count(action == XDP_REDIRECT ? REDIRECTED : REDIRECT_FAILED);
	return action;
}

/* Native mode: frames may come in several buffers (a jumbo underlay). */
SEC("xdp.frags")
int uplink(struct xdp_md *ctx)
{
	return uplink_frame(ctx);
}

/*
 * Generic mode: without multi-buffer support, so that the kernel
 * linearizes an skb for it rather than copying it into one that loses its
 * link-layer length, which would send what this program passes to the
 * tunnel port without its Ethernet header.
 */
SEC("xdp")
int uplink_skb(struct xdp_md *ctx)
{
	return uplink_frame(ctx);
}

char LICENSE[] SEC("license") = "GPL";
