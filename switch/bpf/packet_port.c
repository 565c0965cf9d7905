// SPDX-License-Identifier: GPL-2.0
// podswitch packet port: on the ingress of a pod veth's host end whose
// frames the switch reads through a packet socket. The socket has its
// copy by the time tc runs (packet taps come first), so the frame is
// dropped here: pod traffic must never also go through the node's own
// stack. Attached through tcx, which needs no qdisc.
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

SEC("classifier")
int packet_port(struct __sk_buff *skb)
{
	return TC_ACT_SHOT;
}

char LICENSE[] SEC("license") = "GPL";
