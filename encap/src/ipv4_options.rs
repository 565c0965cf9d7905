//! IPv4 options (RFC 791 section 3.1), in the manner of `smoltcp::wire`,
//! checked as the Linux kernel checks the options of a packet it receives
//! (`ip_options_compile` in `net/ipv4/ip_options.c`, on the receive path).
//!
//! ```text
//! A header with IHL > 5 carries 4 × (IHL − 5) bytes of options (at most
//! 40) after its fixed 20 bytes. Each option is:
//!
//!   End of Option List (type 0): one byte; the rest of the area is padding
//!   No Operation (type 1):       one byte
//!   any other type:              +--------+--------+---------------------
//!                                |  type  | length | length − 2 bytes …
//!                                +--------+--------+---------------------
//!
//! Record Route (7), Loose and Strict Source Route (131, 137):
//!   | type | length | pointer | route data: 4-byte addresses … |
//! Timestamp (68):
//!   | 68 | length | pointer | overflow (4 bits) | flags (4 bits) | data … |
//! ```
//!
//! What the kernel refuses, [`Options::check`] refuses: a type byte with
//! no length after it; a length under 2 or past the area; Record Route,
//! source routes, Timestamp and Router Alert too short for their fields;
//! a pointer before the data, or into a slot the option cuts short; a
//! Timestamp whose overflow count is full; a second Record Route,
//! Timestamp, source route or CIPSO option. Everything else passes:
//! unknown types with a sound length, and whatever follows an End of
//! Option List. A CIPSO option (134) is checked for its shape only (at
//! least 8 bytes, a non-zero DOI, tags that fit): whether its DOI is
//! known is the receiving host's configuration. Nothing is rewritten: a
//! router records its address in Record Route and Timestamp options, this
//! check only reads them.

use core::fmt;

use smoltcp::wire::IPV4_HEADER_LEN;

/// The longest options area: IHL 15 less the fixed header.
pub const MAX_LEN: usize = 40;

/// Check the options of `header`, an IPv4 header of exactly its IHL × 4
/// bytes, as [`Options::check`] does; a header without options (IHL 5,
/// the common case) costs one comparison.
pub fn check_header(header: &[u8]) -> Result<(), OptionError> {
    match header.get(IPV4_HEADER_LEN..) {
        Some(area) if !area.is_empty() => Options::new_unchecked(area).check(),
        _ => Ok(()),
    }
}

/// The option types with rules of their own.
pub mod kind {
    /// End of Option List: the rest of the area is padding.
    pub const END: u8 = 0;
    /// No Operation: one byte, for alignment.
    pub const NOP: u8 = 1;
    /// Record Route.
    pub const RECORD_ROUTE: u8 = 7;
    /// Internet Timestamp.
    pub const TIMESTAMP: u8 = 68;
    /// Loose Source and Record Route.
    pub const LOOSE_SOURCE_ROUTE: u8 = 131;
    /// Commercial IP Security Option (CIPSO).
    pub const CIPSO: u8 = 134;
    /// Strict Source and Record Route.
    pub const STRICT_SOURCE_ROUTE: u8 = 137;
    /// Router Alert (RFC 2113).
    pub const ROUTER_ALERT: u8 = 148;
}

/// Timestamp flags (the low 4 bits of the option's fourth byte) with
/// slots larger than a timestamp: an address and a timestamp each.
const TS_AND_ADDRESS: u8 = 1;
const TS_PRESPECIFIED: u8 = 3;
/// The largest overflow count a Timestamp option can hold.
const TS_OVERFLOW_MAX: u8 = 15;

/// What is wrong with an options area.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Problem {
    /// An option's type is the last byte of the area: it has no length.
    NoLength,
    /// A length under 2, or running past the end of the area.
    BadLength,
    /// A length too short for the fields of the option's type.
    TooShort,
    /// A pointer before the option's data, or into a slot the option's
    /// length cuts short.
    BadPointer,
    /// A Timestamp option whose overflow count cannot go higher.
    Overflow,
    /// A second option of a type that may appear once.
    Repeated,
    /// A CIPSO option with DOI 0 or tags that do not fit it.
    BadCipso,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            Problem::NoLength => "no length byte",
            Problem::BadLength => "length under 2 or past the options",
            Problem::TooShort => "too short for its type",
            Problem::BadPointer => "pointer out of place",
            Problem::Overflow => "timestamp overflow count full",
            Problem::Repeated => "option repeated",
            Problem::BadCipso => "malformed CIPSO option",
        })
    }
}

/// Why an options area is malformed, and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[error("IPv4 options: {problem} at byte {offset} of the options")]
pub struct OptionError {
    /// The offending byte, counted from the start of the options area
    /// (always within it): the kernel's ICMP Parameter Problem pointer
    /// less 20.
    pub offset: usize,
    /// What is wrong there.
    pub problem: Problem,
}

fn error(offset: usize, problem: Problem) -> OptionError {
    OptionError { offset, problem }
}

/// A view of the options area of an IPv4 header: its bytes after the
/// first 20, up to IHL × 4.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Options<T> {
    /// View `buffer` as an options area without checking it.
    pub const fn new_unchecked(buffer: T) -> Options<T> {
        Options { buffer }
    }

    /// View `buffer` as an options area, refusing what the kernel refuses
    /// (see [`Options::check`]).
    pub fn new_checked(buffer: T) -> Result<Options<T>, OptionError> {
        let options = Self::new_unchecked(buffer);
        options.check()?;
        Ok(options)
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Check the options as the kernel does on receipt: every option
    /// framed within the area, each sound for its type, Record Route,
    /// Timestamp, source route and CIPSO at most once each. Reads only.
    pub fn check(&self) -> Result<(), OptionError> {
        // Bits of the types that may appear once, as the kernel keeps them.
        const RR: u8 = 1;
        const TS: u8 = 2;
        const SRR: u8 = 4;
        const CIPSO: u8 = 8;
        let mut seen = 0u8;
        for option in OptionIter::new(self.buffer.as_ref()) {
            let option = option?;
            let once = match option.kind() {
                kind::RECORD_ROUTE => RR,
                kind::TIMESTAMP => TS,
                kind::LOOSE_SOURCE_ROUTE | kind::STRICT_SOURCE_ROUTE => SRR,
                kind::CIPSO => CIPSO,
                _ => 0,
            };
            // The kernel looks for a repeat before the option's fields,
            // except for source routes, where it looks after.
            if once & (RR | TS | CIPSO) & seen != 0 {
                return Err(error(option.offset(), Problem::Repeated));
            }
            option.check()?;
            if once & SRR & seen != 0 {
                return Err(error(option.offset(), Problem::Repeated));
            }
            seen |= once;
        }
        Ok(())
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Options<&'a T> {
    /// The options, one at a time.
    pub fn iter(&self) -> OptionIter<'a> {
        OptionIter::new(self.buffer.as_ref())
    }
}

/// One option: where it starts in the options area and its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Option<'a> {
    offset: usize,
    bytes: &'a [u8],
}

impl<'a> Ipv4Option<'a> {
    /// Where the option starts, from the start of the options area.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// The option's type.
    pub fn kind(&self) -> u8 {
        self.bytes[0]
    }

    /// The whole option: type, length and data; for an End of Option
    /// List, its byte and the padding after it.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The option's data, after its type and length (empty for End of
    /// Option List and No Operation).
    pub fn data(&self) -> &'a [u8] {
        match self.kind() {
            kind::END | kind::NOP => &[],
            _ => &self.bytes[2..],
        }
    }

    /// Check the option's fields for its type, as the kernel does (see
    /// the [module documentation](self)).
    pub fn check(&self) -> Result<(), OptionError> {
        let b = self.bytes;
        let len = b.len();
        let at = |field: usize, problem| Err(error(self.offset + field, problem));
        match self.kind() {
            kind::LOOSE_SOURCE_ROUTE | kind::STRICT_SOURCE_ROUTE => {
                if len < 3 {
                    return at(1, Problem::TooShort);
                }
                if b[2] < 4 {
                    return at(2, Problem::BadPointer);
                }
            }
            kind::RECORD_ROUTE => {
                if len < 3 {
                    return at(1, Problem::TooShort);
                }
                let pointer = usize::from(b[2]);
                // Not full yet: the next slot must fit whole.
                if pointer < 4 || (pointer <= len && pointer + 3 > len) {
                    return at(2, Problem::BadPointer);
                }
            }
            kind::TIMESTAMP => {
                if len < 4 {
                    return at(1, Problem::TooShort);
                }
                let pointer = usize::from(b[2]);
                let (overflow, flags) = (b[3] >> 4, b[3] & 0x0f);
                let slot = match flags {
                    TS_AND_ADDRESS | TS_PRESPECIFIED => 8,
                    _ => 4,
                };
                if pointer < 5 || (pointer <= len && pointer + slot - 1 > len) {
                    return at(2, Problem::BadPointer);
                }
                // Full: the kernel counts this hop in the overflow field.
                if pointer > len && flags != TS_PRESPECIFIED && overflow == TS_OVERFLOW_MAX {
                    return at(3, Problem::Overflow);
                }
            }
            kind::ROUTER_ALERT if len < 4 => return at(1, Problem::TooShort),
            kind::CIPSO => return self.check_cipso(),
            _ => {}
        }
        Ok(())
    }

    /// A CIPSO option's shape: at least 8 bytes, a non-zero DOI, and tags
    /// (type, length ≥ 2, data) that fit the option.
    fn check_cipso(&self) -> Result<(), OptionError> {
        const HEADER_LEN: usize = 6;
        let b = self.bytes;
        if b.len() < 8 {
            return Err(error(self.offset + 1, Problem::TooShort));
        }
        if b[2..HEADER_LEN] == [0; 4] {
            return Err(error(self.offset + 2, Problem::BadCipso));
        }
        let mut tag = HEADER_LEN;
        while tag < b.len() {
            let Some(&tag_len) = b.get(tag + 1) else {
                return Err(error(self.offset + tag, Problem::BadCipso));
            };
            let tag_len = usize::from(tag_len);
            if tag_len < 2 || tag_len > b.len() - tag {
                return Err(error(self.offset + tag + 1, Problem::BadCipso));
            }
            tag += tag_len;
        }
        Ok(())
    }
}

/// Iterator over the options of an options area: each framed within the
/// area (a type and, but for End of Option List and No Operation, a
/// length of at least 2 that fits), not yet checked for its type. Stops
/// after an End of Option List, and after yielding an error.
#[derive(Debug, Clone)]
pub struct OptionIter<'a> {
    area: &'a [u8],
    offset: usize,
}

impl<'a> OptionIter<'a> {
    /// Iterate over the options in `area`.
    pub fn new(area: &'a [u8]) -> OptionIter<'a> {
        OptionIter { area, offset: 0 }
    }
}

impl<'a> Iterator for OptionIter<'a> {
    type Item = Result<Ipv4Option<'a>, OptionError>;

    fn next(&mut self) -> Option<Self::Item> {
        let offset = self.offset;
        let rest = self.area.get(offset..).filter(|r| !r.is_empty())?;
        let len = match rest[0] {
            kind::END => rest.len(),
            kind::NOP => 1,
            _ => match rest.get(1).map(|&l| usize::from(l)) {
                None => {
                    self.offset = self.area.len();
                    return Some(Err(error(offset, Problem::NoLength)));
                }
                Some(len) if len < 2 || len > rest.len() => {
                    self.offset = self.area.len();
                    return Some(Err(error(offset, Problem::BadLength)));
                }
                Some(len) => len,
            },
        };
        self.offset += len;
        Some(Ok(Ipv4Option {
            offset,
            bytes: &rest[..len],
        }))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn check(area: &[u8]) -> Result<(), OptionError> {
        Options::new_unchecked(area).check()
    }

    fn fails(area: &[u8], offset: usize, problem: Problem) {
        assert_eq!(
            check(area),
            Err(OptionError { offset, problem }),
            "{area:02x?}"
        );
    }

    /// A Record Route with room for two addresses, nothing recorded yet.
    const RECORD_ROUTE: [u8; 11] = [7, 11, 4, 0, 0, 0, 0, 0, 0, 0, 0];
    /// A timestamps-only option with room for two, one taken.
    const TIMESTAMP: [u8; 12] = [68, 12, 9, 0x00, 0, 0, 0, 1, 0, 0, 0, 0];
    /// Router Alert, "examine this packet".
    const ROUTER_ALERT: [u8; 4] = [148, 4, 0, 0];

    #[test]
    fn deconstructs_well_formed_options() {
        // NOP, Router Alert, Record Route, Timestamp, End and padding: 32 bytes.
        let area: Vec<u8> = [
            &[1u8][..],
            &ROUTER_ALERT,
            &RECORD_ROUTE,
            &TIMESTAMP,
            &[0, 0, 0, 0],
        ]
        .concat();
        assert_eq!(area.len(), 32);
        let options = Options::new_checked(&area[..]).unwrap();
        let parsed: Vec<(usize, u8, &[u8])> = options
            .iter()
            .map(|o| o.map(|o| (o.offset(), o.kind(), o.data())).unwrap())
            .collect();
        assert_eq!(
            parsed,
            [
                (0, kind::NOP, &[][..]),
                (1, kind::ROUTER_ALERT, &[0, 0][..]),
                (5, kind::RECORD_ROUTE, &RECORD_ROUTE[2..]),
                (16, kind::TIMESTAMP, &TIMESTAMP[2..]),
                (28, kind::END, &[][..]),
            ]
        );
        let end = options.iter().last().unwrap().unwrap();
        assert_eq!(end.bytes(), &[0, 0, 0, 0]);
        assert_eq!(
            Options::new_checked(&area[..]).unwrap().into_inner(),
            &area[..]
        );
    }

    #[test]
    fn accepts_what_the_kernel_accepts() {
        let accepted: &[&[u8]] = &[
            &[],
            &[1, 1, 1, 1],
            &[0, 0, 0, 0],
            // Anything after End of Option List is padding.
            &[0, 0xff, 0x07, 0x00],
            // Full Record Route (pointer past the end).
            &[7, 7, 8, 10, 0, 0, 1, 0],
            // A pointer off a slot boundary, the slot it points at whole.
            &[7, 8, 5, 0, 0, 0, 0, 0],
            // Record Route with no slot at all, full from the start.
            &[7, 3, 4, 0],
            // Timestamp and address, and prespecified, with one slot free.
            &[68, 12, 5, 0x01, 0, 0, 0, 0, 0, 0, 0, 0],
            &[68, 12, 5, 0x03, 10, 1, 0, 11, 0, 0, 0, 0],
            // A full timestamp option counts one more overflow.
            &[68, 8, 9, 0xe0, 0, 0, 0, 1],
            // A full prespecified one does not count overflows at all.
            &[68, 12, 13, 0xf3, 10, 1, 0, 11, 0, 0, 0, 1],
            // Flags the kernel does not know: it leaves them alone.
            &[68, 8, 5, 0x02, 0, 0, 0, 0],
            // Loose and strict source routes: each sound on its own.
            &[131, 7, 4, 10, 1, 0, 12, 0],
            &[137, 3, 4, 0],
            // Router Alert with another value, and longer.
            &[148, 6, 0, 1, 0, 0, 1, 0],
            // Unknown types, Security and Stream ID with sound lengths.
            &[0x6a, 2, 130, 4, 0, 0, 136, 4, 0, 1, 0, 0],
            // CIPSO: DOI 1, one tag of 4 bytes.
            &[134, 10, 0, 0, 0, 1, 1, 4, 0, 0, 0, 0],
        ];
        for area in accepted {
            assert_eq!(check(area), Ok(()), "{area:02x?}");
        }
    }

    #[test]
    fn refuses_what_the_kernel_refuses_where_it_does() {
        // Framing.
        fails(&[0x94], 0, Problem::NoLength);
        fails(&[1, 1, 1, 7], 3, Problem::NoLength);
        fails(&[130, 0, 0, 0], 0, Problem::BadLength);
        fails(&[130, 1, 0, 0], 0, Problem::BadLength);
        fails(&[1, 7, 11, 4], 1, Problem::BadLength);
        fails(&[130, 5, 0, 0], 0, Problem::BadLength);
        fails(&[0x6a; 40], 0, Problem::BadLength);
        // Record Route.
        fails(&[7, 2, 0, 0], 1, Problem::TooShort);
        fails(&[7, 3, 3, 0], 2, Problem::BadPointer);
        fails(&[7, 6, 4, 0, 0, 0], 2, Problem::BadPointer);
        fails(&[7, 8, 6, 0, 0, 0, 0, 0], 2, Problem::BadPointer);
        // Timestamp.
        fails(&[68, 3, 5, 0], 1, Problem::TooShort);
        fails(&[68, 8, 4, 0, 0, 0, 0, 0], 2, Problem::BadPointer);
        fails(&[68, 8, 6, 0, 0, 0, 0, 0], 2, Problem::BadPointer);
        fails(&[68, 8, 5, 0x01, 0, 0, 0, 0], 2, Problem::BadPointer);
        fails(&[68, 8, 5, 0x03, 0, 0, 0, 0], 2, Problem::BadPointer);
        fails(&[68, 8, 9, 0xf0, 0, 0, 0, 1], 3, Problem::Overflow);
        fails(&[68, 8, 9, 0xf1, 0, 0, 0, 1], 3, Problem::Overflow);
        // Source routes.
        fails(&[131, 2, 0, 0], 1, Problem::TooShort);
        fails(&[137, 3, 3, 0], 2, Problem::BadPointer);
        // Router Alert.
        fails(&[148, 3, 0, 0], 1, Problem::TooShort);
        // CIPSO.
        fails(&[134, 6, 0, 0, 0, 1, 0, 0], 1, Problem::TooShort);
        fails(&[134, 8, 0, 0, 0, 0, 1, 2], 2, Problem::BadCipso);
        fails(&[134, 8, 0, 0, 0, 1, 1, 3], 7, Problem::BadCipso);
        fails(&[134, 8, 0, 0, 0, 1, 1, 0], 7, Problem::BadCipso);
        fails(
            &[134, 9, 0, 0, 0, 1, 1, 2, 5, 0, 0, 0],
            8,
            Problem::BadCipso,
        );
    }

    #[test]
    fn some_types_appear_once() {
        let twice = |a: &[u8], b: &[u8]| [a, b].concat();
        fails(&twice(&[7, 3, 4], &[7, 3, 4, 0]), 3, Problem::Repeated);
        fails(&twice(&[68, 4, 5, 0], &[68, 4, 5, 0]), 4, Problem::Repeated);
        fails(&twice(&[131, 3, 4], &[137, 3, 4, 0]), 3, Problem::Repeated);
        let cipso = [134, 8, 0, 0, 0, 1, 1, 2];
        fails(&twice(&cipso, &cipso), 8, Problem::Repeated);
        // A repeated Record Route is refused before its fields are read; a
        // repeated source route only once they are sound.
        fails(&twice(&[7, 3, 4], &[7, 3, 0, 0]), 3, Problem::Repeated);
        fails(
            &twice(&[131, 3, 4], &[131, 3, 0, 0]),
            5,
            Problem::BadPointer,
        );
        // Others may repeat.
        assert_eq!(check(&[148, 4, 0, 0, 148, 4, 0, 0]), Ok(()));
        assert_eq!(check(&[130, 2, 130, 2]), Ok(()));
    }

    #[test]
    fn iteration_stops_at_the_first_framing_error() {
        let area = [1, 130, 0, 1];
        let items: Vec<_> = Options::new_unchecked(&area[..]).iter().collect();
        assert_eq!(items.len(), 2);
        assert_eq!(items[1], Err(error(1, Problem::BadLength)));
    }

    #[test]
    fn errors_read_well() {
        let e = check(&[1, 7, 11, 4]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "IPv4 options: length under 2 or past the options at byte 1 of the options"
        );
    }

    /// A well-formed option of a random type and shape.
    fn well_formed_option() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            Just(vec![kind::NOP]),
            (0u8..=2, 0u8..=2).prop_map(|(slots, used)| {
                let used = used.min(slots);
                let len = 3 + 4 * slots;
                let mut o = vec![kind::RECORD_ROUTE, len, 4 + 4 * used];
                o.resize(usize::from(len), 0);
                o
            }),
            (
                0u8..=2,
                0u8..=2,
                prop_oneof![Just(0u8), Just(1), Just(3)],
                0u8..15
            )
                .prop_map(|(slots, used, flags, overflow)| {
                    let used = used.min(slots);
                    let slot = if flags == 0 { 4 } else { 8 };
                    let len = 4 + slot * slots;
                    let mut o = vec![kind::TIMESTAMP, len, 5 + slot * used, overflow << 4 | flags];
                    o.resize(usize::from(len), 0);
                    o
                }),
            any::<u16>().prop_map(|v| {
                let [a, b] = v.to_be_bytes();
                vec![kind::ROUTER_ALERT, 4, a, b]
            }),
            (
                2u8..=10,
                prop_oneof![Just(130u8), Just(136), Just(0x6a), Just(0xfe)]
            )
                .prop_map(|(len, t)| {
                    let mut o = vec![t, len];
                    o.resize(usize::from(len), 0xa5);
                    o
                }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Any bytes: no panic, and the iterator's options lie end to end.
        #[test]
        fn arbitrary_bytes(area in proptest::collection::vec(any::<u8>(), 0..=MAX_LEN)) {
            let _ = check(&area);
            let mut next = 0;
            for option in Options::new_unchecked(&area[..]).iter() {
                let Ok(option) = option else { break };
                prop_assert_eq!(option.offset(), next);
                prop_assert_eq!(option.bytes(), &area[next..next + option.bytes().len()]);
                next += option.bytes().len();
            }
        }

        /// Well-formed options pass, each type at most once where the
        /// kernel wants it once, whatever padding follows.
        #[test]
        fn well_formed_options_pass(
            options in proptest::collection::vec(well_formed_option(), 0..5),
            padding in proptest::collection::vec(any::<u8>(), 0..4),
        ) {
            let mut area = Vec::new();
            let mut seen = Vec::new();
            for option in options {
                let once = matches!(option[0], kind::RECORD_ROUTE | kind::TIMESTAMP);
                if area.len() + option.len() > MAX_LEN || (once && seen.contains(&option[0])) {
                    continue;
                }
                seen.push(option[0]);
                area.extend_from_slice(&option);
            }
            if area.len() < MAX_LEN {
                area.push(kind::END);
                area.extend(padding.iter().take(MAX_LEN - area.len()));
            }
            prop_assert_eq!(check(&area), Ok(()));
        }

        /// A length byte of 0 or 1, or past the area, anywhere an option
        /// starts, is refused there.
        #[test]
        fn a_broken_length_is_refused_where_it_is(
            options in proptest::collection::vec(well_formed_option(), 1..5),
            which in any::<prop::sample::Index>(),
            bad in prop_oneof![Just(0u8), Just(1), 41u8..],
        ) {
            let mut len = 0;
            let options: Vec<Vec<u8>> = options
                .into_iter()
                .filter(|o| o.len() > 1)
                .take_while(|o| {
                    len += o.len();
                    len <= MAX_LEN
                })
                .collect();
            prop_assume!(!options.is_empty());
            let which = which.index(options.len());
            let offset: usize = options[..which].iter().map(Vec::len).sum();
            let mut area = options.concat();
            area[offset + 1] = bad;
            let result = check(&area);
            // A repeat earlier in the area is found first.
            if result != Err(error(offset, Problem::BadLength)) {
                prop_assert_eq!(result.map_err(|e| e.problem), Err(Problem::Repeated));
            }
        }
    }
}
