//! The Service stage on one packet: the connection table first, the
//! Service table for a new connection, then the rewrite.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::Pass;
use crate::conntrack::{ConnTable, Direction, Refused, Timeouts};
use crate::flow::{self, FlowKey, IcmpError};
use crate::fragments::Fragments;
use crate::rewrite::{self, L4Checksum, Nat};
use crate::table::{Affinity, Selection, ServiceTable};

/// What the Service stage did with a packet; the switch counts each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing to translate: not a Service packet (or not one the stage
    /// reads: a fragment, another protocol). Forward it as it is.
    Pass,
    /// Rewritten (a packet of a connection, or an ICMP error about one);
    /// `new` for the first packet of a connection.
    Translated {
        /// Whether it started a connection.
        new: bool,
    },
    /// A Service port with no usable endpoint: drop
    /// (`service_no_endpoints`).
    NoEndpoints,
    /// The connection table is full: drop (`conntrack_full`).
    TableFull,
    /// The reply tuple is taken by another connection: drop
    /// (`conntrack_clash`).
    Clash,
    /// A later IP fragment to a Service address whose first fragment was
    /// not translated (lost, refused, or not come yet): drop
    /// (`service_fragment_unknown`) rather than hand it to the node.
    FragmentUnknown,
}

/// The Service stage's long-lived state: the connection table and the
/// session-affinity memory. The Service table itself is a snapshot the
/// caller passes with each packet.
#[derive(Debug)]
pub struct Translator {
    /// The connections, shared by every worker.
    pub conns: ConnTable,
    /// `sessionAffinity: ClientIP` memory.
    pub affinity: Affinity,
    /// Connections translated since start.
    translated: AtomicU64,
    /// The rewrites of fragmented datagrams, for their later fragments.
    fragments: Fragments,
}

impl Translator {
    /// A translator whose connection table holds `capacity` connections.
    pub fn new(capacity: usize, timeouts: Timeouts) -> Translator {
        Translator {
            conns: ConnTable::new(capacity, timeouts),
            affinity: Affinity::default(),
            translated: AtomicU64::new(0),
            fragments: Fragments::default(),
        }
    }

    /// How many connections it translated since it started.
    pub fn translated(&self) -> u64 {
        self.translated.load(Ordering::Relaxed)
    }

    /// Whether [`Translator::prefetch`] would do anything: the connection
    /// table is large enough for it to pay
    /// ([`ConnTable::worth_prefetching`]). A caller that reads the
    /// batch's tuples only to prefetch can skip that too.
    pub fn wants_prefetch(&self) -> bool {
        self.conns.worth_prefetching()
    }

    /// Prepare a batch of packets, given by their tuples
    /// ([`flow::connection_key`]), for [`Translator::outbound`] and
    /// [`Translator::inbound`]: the connection table's probes of those
    /// that are a Service's (TCP, UDP or SCTP to a ClusterIP, or from an
    /// endpoint) are prefetched together, so that their cache misses
    /// overlap rather than one per packet in turn. Nothing unless
    /// [`Translator::wants_prefetch`].
    pub fn prefetch(&self, table: &ServiceTable, keys: impl IntoIterator<Item = FlowKey>) {
        if !self.wants_prefetch() {
            return;
        }
        self.conns.prefetch(keys.into_iter().filter(|key| {
            matches!(key.protocol, flow::TCP | flow::UDP | flow::SCTP)
                && (table.is_service_address(key.dst)
                    || table.is_endpoint(key.src, key.protocol, key.sport))
        }));
    }

    /// A packet a pod sent (`ipv4` starts at its IPv4 header), before the
    /// route lookup: a packet of a known connection is rewritten (either
    /// direction: a hairpin endpoint's reply is sent to the ClusterIP); a
    /// new connection to a Service port gets an endpoint. Hairpin (the
    /// client picked as its own endpoint) also gets the ClusterIP as its
    /// source, so that the endpoint's reply comes back through the switch.
    /// An ICMP error a pod sends to a Service address about a connection
    /// (a hairpin endpoint's, or a client's about a reply) is translated
    /// ([`rewrite::apply_error`]). A fragmented datagram is translated by
    /// its first fragment ([`crate::fragments`]). A [`Pass::DryRun`] (a
    /// trace) gets the same rewrite but opens, notes and counts nothing.
    pub fn outbound(
        &self,
        table: &ServiceTable,
        ipv4: &mut [u8],
        checksum: L4Checksum,
        now_ms: u64,
        pass: Pass,
    ) -> Verdict {
        let unknown = |dst| match table.is_service_address(dst) {
            true => Verdict::FragmentUnknown,
            false => Verdict::Pass,
        };
        self.minding_fragments(ipv4, now_ms, pass, unknown, |ipv4| {
            self.outbound_packet(table, ipv4, checksum, now_ms, pass)
        })
    }

    /// [`Translator::outbound`] on a whole packet or a first fragment.
    fn outbound_packet(
        &self,
        table: &ServiceTable,
        ipv4: &mut [u8],
        checksum: L4Checksum,
        now_ms: u64,
        pass: Pass,
    ) -> Verdict {
        let Some(parsed) = flow::parse(ipv4) else {
            return match flow::parse_error(ipv4) {
                Some(error) if table.is_service_address(error.dst) => {
                    self.related(ipv4, &error, checksum, now_ms, None)
                }
                _ => Verdict::Pass,
            };
        };
        let key = parsed.key;
        if !table.is_service_address(key.dst) {
            return Verdict::Pass;
        }
        if !self.conns.is_empty()
            && let Some(hit) = self.conns.find(&key, parsed.tcp_flags, now_ms, pass)
        {
            rewrite::apply_parsed(ipv4, &parsed, &hit.nat, checksum);
            return Verdict::Translated { new: false };
        }
        let backend = match table.select(&key, &self.affinity, now_ms, pass) {
            Selection::NotAService => return Verdict::Pass,
            Selection::NoEndpoints => return Verdict::NoEndpoints,
            Selection::Endpoint(backend) => backend,
        };
        let src = if backend.address == key.src {
            key.dst
        } else {
            key.src
        };
        let nat = Nat {
            src: (src, key.sport),
            dst: (backend.address, backend.port),
        };
        if pass == Pass::DryRun {
            rewrite::apply_parsed(ipv4, &parsed, &nat, checksum);
            return Verdict::Translated { new: true };
        }
        match self.conns.insert(key, nat, backend, now_ms) {
            Ok(hit) => {
                rewrite::apply_parsed(ipv4, &parsed, &hit.nat, checksum);
                self.translated.fetch_add(1, Ordering::Relaxed);
                Verdict::Translated { new: true }
            }
            Err(Refused::Full) => Verdict::TableFull,
            Err(Refused::Clash) => Verdict::Clash,
        }
    }

    /// A packet about to be delivered to a local pod (from a pod, the
    /// uplink or the tunnel): an endpoint's reply to a client is given the
    /// ClusterIP and port back, and so is an ICMP error about a client's
    /// packet to an endpoint (the endpoint's port unreachable, a router's
    /// "fragmentation needed"), so that the client's socket, connected to
    /// the ClusterIP, sees it. Nothing else is touched. Fragments and
    /// `pass` as for [`Translator::outbound`].
    pub fn inbound(
        &self,
        table: &ServiceTable,
        ipv4: &mut [u8],
        checksum: L4Checksum,
        now_ms: u64,
        pass: Pass,
    ) -> Verdict {
        self.minding_fragments(
            ipv4,
            now_ms,
            pass,
            |_| Verdict::Pass,
            |ipv4| self.inbound_packet(table, ipv4, checksum, now_ms, pass),
        )
    }

    /// `translate` (for a whole packet or a first fragment), minding IP
    /// fragments: a later fragment gets its datagram's rewrite if the
    /// first fragment's was remembered, else the verdict `unknown` gives
    /// for its destination; a first fragment that `translate` rewrote has
    /// its rewrite remembered for the rest of its datagram (not by a
    /// trace).
    fn minding_fragments(
        &self,
        ipv4: &mut [u8],
        now_ms: u64,
        pass: Pass,
        unknown: impl FnOnce(Ipv4Addr) -> Verdict,
        translate: impl FnOnce(&mut [u8]) -> Verdict,
    ) -> Verdict {
        let fragment = flow::fragment(ipv4);
        if let Some(later) = fragment.filter(|f| !f.first) {
            return match self.fragments.follow(&later, ipv4, now_ms, pass) {
                true => Verdict::Translated { new: false },
                false => unknown(later.key.1),
            };
        }
        let verdict = translate(ipv4);
        if let Some(first) = fragment
            && pass == Pass::Live
            && matches!(verdict, Verdict::Translated { .. })
        {
            self.fragments.remember(&first, ipv4, now_ms);
        }
        verdict
    }

    /// [`Translator::inbound`] on a whole packet or a first fragment.
    fn inbound_packet(
        &self,
        table: &ServiceTable,
        ipv4: &mut [u8],
        checksum: L4Checksum,
        now_ms: u64,
        pass: Pass,
    ) -> Verdict {
        if self.conns.is_empty() {
            return Verdict::Pass;
        }
        let Some(parsed) = flow::parse(ipv4) else {
            return match flow::parse_error(ipv4) {
                Some(error)
                    if table.is_endpoint(
                        error.quoted.dst,
                        error.quoted.protocol,
                        error.quoted.dport,
                    ) =>
                {
                    self.related(ipv4, &error, checksum, now_ms, Some(Direction::Reply))
                }
                _ => Verdict::Pass,
            };
        };
        let key = &parsed.key;
        if !table.is_endpoint(key.src, key.protocol, key.sport) {
            return Verdict::Pass;
        }
        match self.conns.find(key, parsed.tcp_flags, now_ms, pass) {
            Some(hit) if hit.direction == Direction::Reply => {
                rewrite::apply_parsed(ipv4, &parsed, &hit.nat, checksum);
                Verdict::Translated { new: false }
            }
            _ => Verdict::Pass,
        }
    }

    /// An ICMP error about a packet of a connection (the quoted packet,
    /// which travelled in `direction` if given): rewritten as the
    /// connection's packets travelling the error's way are. The quoted
    /// packet went the other way, so its reversed tuple finds the
    /// connection, and it gets the addresses its own direction's packets
    /// had before their rewrite. The connection is not noted: the error
    /// is no packet of it.
    fn related(
        &self,
        ipv4: &mut [u8],
        error: &IcmpError,
        checksum: L4Checksum,
        now_ms: u64,
        direction: Option<Direction>,
    ) -> Verdict {
        match self.conns.peek(&error.quoted.reversed(), now_ms) {
            Some(hit) if direction.is_none_or(|d| d == hit.direction) => {
                let quoted = Nat {
                    src: hit.nat.dst,
                    dst: hit.nat.src,
                };
                if rewrite::apply_error(ipv4, error, &quoted, checksum) {
                    Verdict::Translated { new: false }
                } else {
                    Verdict::Pass
                }
            }
            _ => Verdict::Pass,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use podswitch_control::service::{Endpoint, Service, ServicePort, ServiceProtocol};
    use podswitch_encap::checksum::ipv4_header_ok;

    use super::*;
    use crate::flow::tests::{icmp, key, l4_verifies};
    use crate::flow::{FlowKey, TCP, UDP};
    use crate::table::{NodeAddress, Nodes};

    const VIP: [u8; 4] = [10, 96, 0, 10];
    /// A node serving the TCP port's NodePort 30080.
    const NODE: [u8; 4] = [192, 168, 0, 2];

    fn table(endpoints: &[[u8; 4]]) -> ServiceTable {
        let port = |protocol, port| {
            let endpoints = endpoints
                .iter()
                .map(|&a| Endpoint::ready(a.into(), port + 8000));
            ServicePort::new(protocol, port, endpoints.collect())
        };
        let ports = vec![
            port(ServiceProtocol::Tcp, 80),
            port(ServiceProtocol::Udp, 53),
        ];
        let nodes = Nodes {
            local: None,
            all: vec![NodeAddress {
                address: NODE.into(),
                pod_cidr: "10.244.2.0/24".parse().unwrap(),
            }],
        };
        let mut web = Service::new("default/web", VIP.into(), ports);
        web.ports[0].node_port = Some(30080);
        ServiceTable::new(vec![web], &nodes)
    }

    fn checked(flow: FlowKey) -> Vec<u8> {
        flow::tests::checked(flow, b"hello")
    }

    fn verifies(p: &[u8]) -> bool {
        ipv4_header_ok(&p[..20]) && l4_verifies(p)
    }

    #[test]
    fn a_connection_is_translated_there_and_back_keeping_the_client_address() {
        // To the ClusterIP, and to the NodePort at a node's address.
        for (address, port) in [(VIP, 80), (NODE, 30080)] {
            there_and_back(address, port);
        }
        // The node's other ports are not Services.
        let services = table(&[[10, 244, 2, 7]]);
        let translator = Translator::new(100, Timeouts::default());
        let mut ssh = checked(key([10, 244, 1, 9], 40001, NODE, 22, TCP));
        assert_eq!(
            translator.outbound(&services, &mut ssh, L4Checksum::Full, 2, Pass::Live),
            Verdict::Pass
        );
    }

    /// `datagram` cut into IP fragments, the first holding `first_len`
    /// transport bytes (a multiple of 8), as a sender's kernel cuts it.
    fn fragments_of(datagram: &[u8], first_len: usize, id: u16) -> Vec<Vec<u8>> {
        let l4 = &datagram[20..];
        [
            (0, &l4[..first_len], true),
            (first_len, &l4[first_len..], false),
        ]
        .into_iter()
        .map(|(offset, bytes, more)| {
            let mut p = datagram[..20].to_vec();
            p.extend_from_slice(bytes);
            let len = p.len() as u16;
            p[2..4].copy_from_slice(&len.to_be_bytes());
            p[4..6].copy_from_slice(&id.to_be_bytes());
            let flags = if more { 0x2000 } else { 0 } | (offset / 8) as u16;
            p[6..8].copy_from_slice(&flags.to_be_bytes());
            podswitch_encap::checksum::fill_ipv4_header(&mut p[..20]);
            p
        })
        .collect()
    }

    /// The datagram `fragments` make, its header the first's.
    fn reassembled(fragments: &[Vec<u8>]) -> Vec<u8> {
        let mut p = fragments[0].clone();
        for later in &fragments[1..] {
            assert!(ipv4_header_ok(&later[..20]));
            assert_eq!(later[12..20], p[12..20], "a fragment's addresses differ");
            p.extend_from_slice(&later[20..]);
        }
        let len = p.len() as u16;
        p[2..4].copy_from_slice(&len.to_be_bytes());
        p[6..8].fill(0);
        podswitch_encap::checksum::fill_ipv4_header(&mut p[..20]);
        p
    }

    #[test]
    fn a_fragmented_datagram_is_translated_by_its_first_fragment_both_ways() {
        let services = table(&[[10, 244, 2, 7]]);
        let translator = Translator::new(100, Timeouts::default());
        let request = key([10, 244, 1, 9], 40000, VIP, 53, UDP);
        let datagram = flow::tests::checked(request, &[7u8; 40]);
        let mut sent = fragments_of(&datagram, 24, 0x1111);
        let verdicts: Vec<Verdict> = sent
            .iter_mut()
            .map(|p| translator.outbound(&services, p, L4Checksum::Full, 0, Pass::Live))
            .collect();
        assert_eq!(
            verdicts,
            [
                Verdict::Translated { new: true },
                Verdict::Translated { new: false }
            ]
        );
        let arrived = reassembled(&sent);
        assert_eq!(
            flow::parse(&arrived).unwrap().key,
            key([10, 244, 1, 9], 40000, [10, 244, 2, 7], 8053, UDP)
        );
        assert!(verifies(&arrived));

        // The endpoint's fragmented answer, delivered to the client.
        let answer = flow::tests::checked(
            key([10, 244, 2, 7], 8053, [10, 244, 1, 9], 40000, UDP),
            &[9u8; 64],
        );
        let mut answered = fragments_of(&answer, 32, 0x2222);
        for p in &mut answered {
            assert!(matches!(
                translator.inbound(&services, p, L4Checksum::Full, 1, Pass::Live),
                Verdict::Translated { .. }
            ));
        }
        let arrived = reassembled(&answered);
        assert_eq!(flow::parse(&arrived).unwrap().key, request.reversed());
        assert!(verifies(&arrived));

        // A later fragment whose first was not translated: to a Service
        // address it is dropped, to a pod it passes as it is.
        let mut traced = fragments_of(&datagram, 24, 0x3333);
        assert!(matches!(
            translator.outbound(&services, &mut traced[0], L4Checksum::Full, 2, Pass::DryRun),
            Verdict::Translated { .. }
        ));
        assert_eq!(
            translator.outbound(&services, &mut traced[1], L4Checksum::Full, 2, Pass::Live),
            Verdict::FragmentUnknown
        );
        let mut stray = fragments_of(&answer, 32, 0x4444).remove(1);
        let before = stray.clone();
        assert_eq!(
            translator.inbound(&services, &mut stray, L4Checksum::Full, 2, Pass::Live),
            Verdict::Pass
        );
        assert_eq!(stray, before);
    }

    /// A connection from a client to `address:port`, served by one
    /// endpoint: translated both ways, and nothing else touched.
    fn there_and_back(address: [u8; 4], port: u16) {
        let services = table(&[[10, 244, 2, 7]]);
        let translator = Translator::new(100, Timeouts::default());
        let request = key([10, 244, 1, 9], 40000, address, port, TCP);
        let mut p = checked(request);
        assert_eq!(
            translator.outbound(&services, &mut p, L4Checksum::Full, 0, Pass::Live),
            Verdict::Translated { new: true }
        );
        assert_eq!(
            flow::parse(&p).unwrap().key,
            key([10, 244, 1, 9], 40000, [10, 244, 2, 7], 8080, TCP)
        );
        assert!(verifies(&p));
        // Delivered to the endpoint's pod: not a reply, left alone.
        let before = p.clone();
        assert_eq!(
            translator.inbound(&services, &mut p, L4Checksum::Full, 1, Pass::Live),
            Verdict::Pass
        );
        assert_eq!(p, before);
        // The endpoint's answer, delivered to the client.
        let mut answer = checked(key([10, 244, 2, 7], 8080, [10, 244, 1, 9], 40000, TCP));
        assert_eq!(
            translator.inbound(&services, &mut answer, L4Checksum::Full, 2, Pass::Live),
            Verdict::Translated { new: false }
        );
        assert_eq!(flow::parse(&answer).unwrap().key, request.reversed());
        assert!(verifies(&answer));
        // The next request packet is a known connection.
        let mut next = checked(request);
        assert_eq!(
            translator.outbound(&services, &mut next, L4Checksum::Full, 3, Pass::Live),
            Verdict::Translated { new: false }
        );
        assert_eq!(next, before);
        assert_eq!(translator.translated(), 1);
        // Traffic to anything else passes untouched.
        let mut other = checked(key([10, 244, 1, 9], 40000, [10, 96, 0, 11], 80, TCP));
        let copy = other.clone();
        assert_eq!(
            translator.outbound(&services, &mut other, L4Checksum::Full, 4, Pass::Live),
            Verdict::Pass
        );
        assert_eq!(
            translator.inbound(&services, &mut other, L4Checksum::Full, 4, Pass::Live),
            Verdict::Pass
        );
        assert_eq!(other, copy);
    }

    #[test]
    fn hairpin_gets_the_cluster_ip_as_source_both_ways() {
        let client = [10, 244, 1, 9];
        let services = table(&[client]);
        let translator = Translator::new(100, Timeouts::default());
        let mut p = checked(key(client, 5000, VIP, 53, UDP));
        assert_eq!(
            translator.outbound(&services, &mut p, L4Checksum::Full, 0, Pass::Live),
            Verdict::Translated { new: true }
        );
        assert_eq!(
            flow::parse(&p).unwrap().key,
            key(VIP, 5000, client, 8053, UDP)
        );
        assert!(verifies(&p));
        // The pod answers the ClusterIP: that comes back as a pod's packet.
        let mut answer = checked(key(client, 8053, VIP, 5000, UDP));
        assert_eq!(
            translator.outbound(&services, &mut answer, L4Checksum::Full, 1, Pass::Live),
            Verdict::Translated { new: false }
        );
        assert_eq!(
            flow::parse(&answer).unwrap().key,
            key(VIP, 53, client, 5000, UDP)
        );
        assert!(verifies(&answer));
        assert_eq!(
            translator.inbound(&services, &mut answer, L4Checksum::Full, 1, Pass::Live),
            Verdict::Pass
        );
    }

    /// Whether an ICMP error with the quote `quoted` (its start) is well
    /// formed: every IPv4 header checksum and the ICMP checksum verify,
    /// and the quoted packet has the tuple `quoted`.
    fn error_is(p: &[u8], src: [u8; 4], dst: [u8; 4], quoted: FlowKey) -> bool {
        let error = flow::parse_error(p).unwrap();
        ipv4_header_ok(&p[..20])
            && ipv4_header_ok(&p[28..48])
            && podswitch_encap::checksum::sum(&p[20..]) == 0xffff
            && (error.src, error.dst) == (src.into(), dst.into())
            && error.quoted == quoted
    }

    #[test]
    fn an_endpoint_s_icmp_error_reaches_the_client_about_the_cluster_ip() {
        let (client, endpoint, router) = ([10, 244, 1, 9], [10, 244, 2, 7], [10, 244, 2, 1]);
        let services = table(&[endpoint]);
        let translator = Translator::new(100, Timeouts::default());
        let request = key(client, 5000, VIP, 53, UDP);
        let mut sent = checked(request);
        translator.outbound(&services, &mut sent, L4Checksum::Full, 0, Pass::Live);
        // The endpoint's port unreachable quoting the whole request, and a
        // router's "fragmentation needed" quoting its start.
        let unreachable = icmp(endpoint, client, 3, 0, &sent);
        let mut refused = unreachable.clone();
        for pass in [Pass::DryRun, Pass::Live] {
            refused.copy_from_slice(&unreachable);
            assert_eq!(
                translator.inbound(&services, &mut refused, L4Checksum::Full, 1, pass),
                Verdict::Translated { new: false }
            );
        }
        assert!(error_is(&refused, VIP, client, request));
        assert!(l4_verifies(&refused[28..]));
        let mut too_big = icmp(router, client, 3, 0, &sent[..28]);
        assert_eq!(
            translator.inbound(&services, &mut too_big, L4Checksum::Full, 1, Pass::Live),
            Verdict::Translated { new: false }
        );
        assert!(error_is(&too_big, router, client, request));
        // Not noted: unanswered, the connection ends on the request's clock.
        assert_eq!(translator.conns.sweep(Timeouts::default().udp), 1);
        let mut late = unreachable.clone();
        assert_eq!(
            translator.inbound(&services, &mut late, L4Checksum::Full, 2, Pass::Live),
            Verdict::Pass
        );
        assert_eq!(late, unreachable);
    }

    #[test]
    fn hairpin_and_reply_errors_sent_to_the_service_are_turned_around() {
        let (client, endpoint) = ([10, 244, 1, 9], [10, 244, 2, 7]);
        let translator = Translator::new(100, Timeouts::default());
        // Hairpin: the client, its own endpoint, refuses its own request,
        // which came from the ClusterIP.
        let services = table(&[client]);
        let request = key(client, 5000, VIP, 53, UDP);
        let mut sent = checked(request);
        translator.outbound(&services, &mut sent, L4Checksum::Full, 0, Pass::Live);
        let mut refused = icmp(client, VIP, 3, 3, &sent);
        assert_eq!(
            translator.outbound(&services, &mut refused, L4Checksum::Full, 1, Pass::Live),
            Verdict::Translated { new: false }
        );
        assert!(error_is(&refused, VIP, client, request));
        // A client refuses the endpoint's answer (its socket closed): the
        // endpoint hears of its own packet.
        let services = table(&[endpoint]);
        let request = key(client, 6000, VIP, 53, UDP);
        translator.outbound(
            &services,
            &mut checked(request),
            L4Checksum::Full,
            2,
            Pass::Live,
        );
        let mut answer = checked(key(endpoint, 8053, client, 6000, UDP));
        translator.inbound(&services, &mut answer, L4Checksum::Full, 3, Pass::Live);
        let mut refused = icmp(client, VIP, 3, 3, &answer);
        assert_eq!(
            translator.outbound(&services, &mut refused, L4Checksum::Full, 4, Pass::Live),
            Verdict::Translated { new: false }
        );
        assert!(error_is(
            &refused,
            client,
            endpoint,
            key(endpoint, 8053, client, 6000, UDP)
        ));
        // Delivered to a pod, an error about a reply is not turned around.
        let mut other = icmp(client, endpoint, 3, 3, &answer);
        let copy = other.clone();
        assert_eq!(
            translator.inbound(&services, &mut other, L4Checksum::Full, 4, Pass::Live),
            Verdict::Pass
        );
        assert_eq!(other, copy);
    }

    #[test]
    fn a_dry_run_gives_the_rewrite_but_opens_and_counts_nothing() {
        let services = table(&[[10, 244, 2, 7], [10, 244, 2, 8]]);
        let translator = Translator::new(100, Timeouts::default());
        let request = key([10, 244, 1, 9], 40000, VIP, 80, TCP);
        let mut dry = checked(request);
        assert_eq!(
            translator.outbound(&services, &mut dry, L4Checksum::Full, 0, Pass::DryRun),
            Verdict::Translated { new: true }
        );
        assert!(translator.conns.is_empty());
        assert_eq!(translator.translated(), 0);
        let mut live = checked(request);
        translator.outbound(&services, &mut live, L4Checksum::Full, 0, Pass::Live);
        assert_eq!(dry, live);
        let mut again = checked(request);
        assert_eq!(
            translator.outbound(&services, &mut again, L4Checksum::Full, 1, Pass::DryRun),
            Verdict::Translated { new: false }
        );
        assert_eq!(again, live);
    }

    #[test]
    fn no_endpoints_and_a_full_table_are_verdicts_not_rewrites() {
        let translator = Translator::new(1, Timeouts::default());
        let mut p = checked(key([10, 244, 1, 9], 1, VIP, 80, TCP));
        let copy = p.clone();
        assert_eq!(
            translator.outbound(&table(&[]), &mut p, L4Checksum::Full, 0, Pass::Live),
            Verdict::NoEndpoints
        );
        assert_eq!(p, copy);
        let services = table(&[[10, 244, 2, 7]]);
        assert_eq!(
            translator.outbound(&services, &mut p, L4Checksum::Full, 0, Pass::Live),
            Verdict::Translated { new: true }
        );
        let mut second = checked(key([10, 244, 1, 9], 2, VIP, 80, TCP));
        assert_eq!(
            translator.outbound(&services, &mut second, L4Checksum::Full, 0, Pass::Live),
            Verdict::TableFull
        );
        let mut clash = checked(key([10, 244, 1, 9], 1, [10, 96, 0, 99], 80, TCP));
        let other = ServiceTable::new(
            vec![Service {
                cluster_ip: Ipv4Addr::new(10, 96, 0, 99),
                ..services.services()[0].clone()
            }],
            &Nodes::default(),
        );
        let roomy = Translator::new(10, Timeouts::default());
        assert!(matches!(
            roomy.outbound(
                &services,
                &mut checked(key([10, 244, 1, 9], 1, VIP, 80, TCP)),
                L4Checksum::Full,
                0,
                Pass::Live
            ),
            Verdict::Translated { .. }
        ));
        assert_eq!(
            roomy.outbound(&other, &mut clash, L4Checksum::Full, 0, Pass::Live),
            Verdict::Clash
        );
    }
}
