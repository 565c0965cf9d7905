//! Held to the kernel's own check of IPv4 options (`ip_options_compile`):
//! UDP datagrams carrying options, well-formed, broken in one byte or
//! random, are sent as raw frames to a namespace whose kernel either
//! delivers each to a socket there or counts it in `InHdrErrors`; the
//! library must say the same of every one. Needs root.
//!
//! Options whose fate is the receiving host's configuration rather than
//! their shape are left out: source routes (dropped unless
//! `accept_source_route` is on) and CIPSO (refused unless its DOI is
//! configured).

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use podswitch_encap::ipv4_options::{MAX_LEN, OptionIter, Options, kind};
use podswitch_lab::flood::{UDP_HEADERS, UdpFlow, udp_frame, with_ipv4_options};
use podswitch_lab::{Lab, RawLink};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;

const SENDER: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 1);
const RECEIVER: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 2);
const PORT: u16 = 7000;
/// Random option areas tried, beyond the well-formed and broken ones.
const CASES: usize = 600;

/// A UDP frame to the receiver with `options` in its IPv4 header and case
/// number `n` as its payload.
fn frame(receiver_mac: [u8; 6], options: &[u8], n: u32) -> Result<Vec<u8>> {
    let flow = UdpFlow {
        src_mac: [0x02, 0, 0, 0, 0, 1],
        dst_mac: receiver_mac,
        src: SocketAddrV4::new(SENDER, PORT),
        dst: SocketAddrV4::new(RECEIVER, PORT),
    };
    let mut frame = udp_frame(&flow, UDP_HEADERS + 4)?;
    frame[UDP_HEADERS..].copy_from_slice(&n.to_be_bytes());
    Ok(with_ipv4_options(&frame, options))
}

/// An option of a type whose check is the kernel's alone: its length
/// sound, its pointer on a slot or anywhere near one.
fn option() -> impl Strategy<Value = Vec<u8>> {
    let sized = |t: u8, len: u8, pointer: u8, fourth: u8| {
        let mut o = vec![t, len, pointer, fourth];
        o.resize(usize::from(len).max(4), 0);
        o.truncate(usize::from(len));
        o
    };
    // On a slot, or anywhere from 0 to past the end.
    let pointer = |first: u8, slot: u8, slots: u8| {
        let len = first - 1 + slot * slots;
        prop_oneof![
            (0..=slots + 1).prop_map(move |used| first + slot * used.min(slots)),
            0..=len + slot + 1,
        ]
    };
    prop_oneof![
        Just(vec![kind::NOP]),
        (0u8..=3)
            .prop_flat_map(move |slots| (Just(slots), pointer(4, 4, slots)))
            .prop_map(move |(slots, p)| sized(kind::RECORD_ROUTE, 3 + 4 * slots, p, 0)),
        (0u8..=2, 0u8..4, 0u8..16)
            .prop_flat_map(move |(slots, flags, overflow)| {
                let slot = if flags & 1 == 0 { 4 } else { 8 };
                (
                    Just((slots, slot, flags, overflow)),
                    pointer(5, slot, slots),
                )
            })
            .prop_map(move |((slots, slot, flags, overflow), p)| {
                sized(kind::TIMESTAMP, 4 + slot * slots, p, overflow << 4 | flags)
            }),
        (2u8..=6, any::<u16>()).prop_map(move |(len, v)| sized(
            kind::ROUTER_ALERT,
            len,
            (v >> 8) as u8,
            v as u8
        )),
        (
            2u8..=8,
            prop_oneof![Just(130u8), Just(136), Just(0x6a), Just(0xfe)]
        )
            .prop_map(move |(len, t)| sized(t, len, 0, 0)),
    ]
}

/// An options area: options as [`option`] makes them, maybe one byte
/// changed to a value near a boundary; or random bytes.
fn area() -> impl Strategy<Value = Vec<u8>> {
    let built = (
        proptest::collection::vec(option(), 0..5),
        proptest::option::of((
            any::<prop::sample::Index>(),
            prop_oneof![
                prop::sample::select(vec![0u8, 1, 2, 3, 4, 5, 7, 8, 9, 11, 12, 13, 0xf0, 0xff]),
                any::<u8>(),
            ],
        )),
        any::<bool>(),
    )
        .prop_map(|(options, change, end)| {
            let mut area: Vec<u8> = options.concat();
            area.truncate(MAX_LEN);
            if end && area.len() < MAX_LEN {
                area.push(kind::END);
            }
            while !area.len().is_multiple_of(4) {
                area.push(kind::NOP);
            }
            if let Some((at, value)) = change.filter(|_| !area.is_empty()) {
                let at = at.index(area.len());
                area[at] = value;
            }
            area
        });
    let random =
        (1usize..=10).prop_flat_map(|words| proptest::collection::vec(any::<u8>(), words * 4));
    prop_oneof![3 => built, 1 => random]
}

/// Whether the options the kernel would get to in `area` include one whose
/// fate is configuration (see the module documentation).
fn configured(area: &[u8]) -> bool {
    OptionIter::new(area).map_while(Result::ok).any(|o| {
        matches!(
            o.kind(),
            kind::LOOSE_SOURCE_ROUTE | kind::STRICT_SOURCE_ROUTE | kind::CIPSO
        )
    })
}

/// The `InHdrErrors` counter of the calling thread's namespace.
fn in_hdr_errors() -> Result<u64> {
    let snmp = std::fs::read_to_string("/proc/thread-self/net/snmp")?;
    let mut ip = snmp.lines().filter(|l| l.starts_with("Ip:"));
    let (names, values) = (ip.next().context("no Ip:")?, ip.next().context("no Ip:")?);
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "InHdrErrors")
        .context("no InHdrErrors")?
        .1
        .parse()
        .context("InHdrErrors")
}

#[test]
fn options_are_judged_as_the_kernel_judges_them() -> Result<()> {
    let mut lab = Lab::new("options")?;
    let a = lab.netns("a")?;
    let b = lab.netns("b")?;
    a.add_veth("veth0", &b, "veth0")?;
    a.ip(&["link", "set", "veth0", "up"])?;
    b.ip(&["addr", "add", &format!("{RECEIVER}/24"), "dev", "veth0"])?;
    b.ip(&["link", "set", "veth0", "up"])?;
    let receiver_mac = b.mac("veth0")?;

    let mut runner = TestRunner::deterministic();
    let strategy = area();
    let mut areas = Vec::new();
    while areas.len() < CASES {
        let area = strategy.new_tree(&mut runner).unwrap().current();
        if !configured(&area) {
            areas.push(area);
        }
    }
    let mut link = RawLink::open(&a, "veth0", Duration::from_millis(100))?;
    let judged = b.enter(move || {
        let socket = UdpSocket::bind((RECEIVER, PORT))?;
        socket.set_read_timeout(Some(Duration::from_millis(20)))?;
        let mut mismatches = Vec::new();
        let (mut taken, mut refused) = (0, 0);
        for (n, area) in areas.iter().enumerate() {
            let n = n as u32;
            let errors = in_hdr_errors()?;
            link.send(&frame(receiver_mac, area, n)?)?;
            // The kernel's verdict: delivered, or counted as a header error.
            let deadline = Instant::now() + Duration::from_secs(5);
            let kernel_takes = loop {
                let mut buf = [0u8; 16];
                if let Ok(len) = socket.recv(&mut buf)
                    && buf[..len] == n.to_be_bytes()
                {
                    break true;
                }
                if in_hdr_errors()? > errors {
                    break false;
                }
                if Instant::now() > deadline {
                    bail!("case {n} {area:02x?}: neither delivered nor refused");
                }
            };
            let library = Options::new_unchecked(&area[..]).check();
            if kernel_takes != library.is_ok() {
                mismatches.push(format!(
                    "{area:02x?}: the kernel {}, the library {library:?}",
                    if kernel_takes {
                        "takes it"
                    } else {
                        "refuses it"
                    }
                ));
            }
            if kernel_takes {
                taken += 1;
            } else {
                refused += 1;
            }
        }
        Ok((mismatches, taken, refused))
    })?;
    let (mismatches, taken, refused) = judged;
    eprintln!("{taken} option areas taken and {refused} refused by both");
    ensure!(
        mismatches.is_empty(),
        "{} of {CASES} differ:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    ensure!(
        taken > CASES / 10 && refused > CASES / 10,
        "too one-sided to judge: {taken} taken, {refused} refused"
    );
    Ok(())
}
