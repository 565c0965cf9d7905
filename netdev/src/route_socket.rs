//! A synchronous rtnetlink socket (netlink-sys, blocking): each request
//! goes out with an acknowledgement asked for, and its answers are read up
//! to that acknowledgement, or to the end of a dump; an NLMSG_ERROR
//! becomes an [`io::Error`] carrying the kernel's errno.

use std::io;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_REQUEST, NetlinkBuffer, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::{Socket, SocketAddr};

/// A NETLINK_ROUTE socket in the namespace it was opened in.
pub(crate) struct RouteSocket {
    socket: Socket,
    sequence: u32,
}

impl RouteSocket {
    /// Open one in the calling thread's network namespace.
    pub(crate) fn open() -> io::Result<RouteSocket> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(RouteSocket {
            socket,
            sequence: 0,
        })
    }

    /// Send `message` with NLM_F_REQUEST, NLM_F_ACK and `flags`
    /// (NLM_F_DUMP, NLM_F_CREATE, …): the messages the kernel answered
    /// with, or its error.
    pub(crate) fn request(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.sequence = self.sequence.wrapping_add(1);
        let mut packet = NetlinkMessage::from(message);
        packet.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        packet.header.sequence_number = self.sequence;
        packet.finalize();
        let mut bytes = vec![0; packet.buffer_len()];
        packet.serialize(&mut bytes);
        retry_interrupted(|| self.socket.send(&bytes, 0))?;

        let mut answers = Answers::new(self.sequence);
        loop {
            let (datagram, _) = retry_interrupted(|| self.socket.recv_from_full())?;
            if answers.take(&datagram)? {
                return Ok(answers.messages);
            }
        }
    }
}

/// Run `call` again for as long as a signal interrupts it.
fn retry_interrupted<T>(mut call: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match call() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            result => return result,
        }
    }
}

/// The answers to one request, read datagram by datagram.
struct Answers {
    sequence: u32,
    messages: Vec<RouteNetlinkMessage>,
}

impl Answers {
    /// Answers to the request numbered `sequence`.
    fn new(sequence: u32) -> Answers {
        Answers {
            sequence,
            messages: Vec::new(),
        }
    }

    /// Take in one datagram from the kernel: true once the request is
    /// answered in full (acknowledged, or its dump done), its error if the
    /// kernel refused it. Messages for earlier requests (the rest of one
    /// that failed part-way) are skipped.
    fn take(&mut self, datagram: &[u8]) -> io::Result<bool> {
        let mut rest = datagram;
        while !rest.is_empty() {
            let header = NetlinkBuffer::new_checked(rest).map_err(invalid_data)?;
            let sequence = header.sequence_number();
            // new_checked saw that the length fits in `rest`.
            let (bytes, after) = rest.split_at(header.length() as usize);
            let padding = bytes.len().next_multiple_of(4) - bytes.len();
            rest = after.get(padding..).unwrap_or_default();
            if sequence != self.sequence {
                continue;
            }
            let reply =
                NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes).map_err(invalid_data)?;
            match reply.payload {
                NetlinkPayload::Error(error) if error.code.is_some() => return Err(error.to_io()),
                NetlinkPayload::Done(done) if done.code < 0 => {
                    return Err(io::Error::from_raw_os_error(-done.code));
                }
                NetlinkPayload::Error(_) | NetlinkPayload::Done(_) => return Ok(true),
                NetlinkPayload::InnerMessage(message) => self.messages.push(message),
                _ => {}
            }
        }
        Ok(false)
    }
}

/// A reply the kernel should not have sent.
fn invalid_data(error: netlink_packet_core::DecodeError) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("unreadable rtnetlink reply: {error}"),
    )
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::{DoneMessage, ErrorMessage, NLM_F_MULTIPART, NetlinkHeader};
    use netlink_packet_route::link::{LinkAttribute, LinkMessage};

    use super::*;

    const SEQUENCE: u32 = 7;

    /// The kernel's bytes for one message with `payload`, numbered `sequence`.
    fn reply(sequence: u32, flags: u16, payload: NetlinkPayload<RouteNetlinkMessage>) -> Vec<u8> {
        let mut header = NetlinkHeader::default();
        header.sequence_number = sequence;
        header.flags = flags;
        let mut message = NetlinkMessage::new(header, payload);
        message.finalize();
        let mut bytes = vec![0; message.buffer_len()];
        message.serialize(&mut bytes);
        bytes
    }

    /// A `struct nlmsghdr` as the kernel writes it.
    fn nlmsghdr(length: u32, kind: u16, flags: u16, sequence: u32) -> Vec<u8> {
        [
            &length.to_ne_bytes()[..],
            &kind.to_ne_bytes(),
            &flags.to_ne_bytes(),
            &sequence.to_ne_bytes(),
            &0u32.to_ne_bytes(),
        ]
        .concat()
    }

    fn new_link(index: u32, name: &str) -> NetlinkPayload<RouteNetlinkMessage> {
        let mut link = LinkMessage::default();
        link.header.index = index;
        link.attributes.push(LinkAttribute::IfName(name.into()));
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link))
    }

    fn ack(sequence: u32) -> Vec<u8> {
        let mut ack = ErrorMessage::default();
        ack.code = None;
        reply(sequence, 0, NetlinkPayload::Error(ack))
    }

    /// The answer to a link lookup: the link, then the acknowledgement.
    fn eth0_then_ack() -> Vec<u8> {
        [reply(SEQUENCE, 0, new_link(2, "eth0")), ack(SEQUENCE)].concat()
    }

    fn done(sequence: u32, code: i32) -> Vec<u8> {
        let mut done = DoneMessage::default();
        done.code = code;
        reply(sequence, NLM_F_MULTIPART, NetlinkPayload::Done(done))
    }

    fn names(answers: &Answers) -> Vec<String> {
        answers
            .messages
            .iter()
            .map(|m| match m {
                RouteNetlinkMessage::NewLink(link) => link
                    .attributes
                    .iter()
                    .find_map(|a| match a {
                        LinkAttribute::IfName(name) => Some(name.clone()),
                        _ => None,
                    })
                    .unwrap(),
                other => panic!("unexpected {}", other.message_type()),
            })
            .collect()
    }

    #[test]
    fn an_answer_then_the_ack_ends_a_request() {
        let mut answers = Answers::new(SEQUENCE);
        let datagram = eth0_then_ack();
        assert!(answers.take(&datagram).unwrap());
        assert_eq!(names(&answers), ["eth0"]);
    }

    #[test]
    fn an_error_carries_the_kernels_errno() {
        // struct nlmsghdr { len 36, NLMSG_ERROR, NLM_F_CAPPED, seq 7, port 0 },
        // then struct nlmsgerr { error -EEXIST, the request's header }.
        let datagram = [
            nlmsghdr(36, 2, 0x100, SEQUENCE),
            (-libc::EEXIST).to_ne_bytes().to_vec(),
            nlmsghdr(32, 20, 0x605, SEQUENCE),
        ]
        .concat();
        let err = Answers::new(SEQUENCE).take(&datagram).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EEXIST));
    }

    #[test]
    fn a_dump_runs_over_datagrams_until_done() {
        let mut answers = Answers::new(SEQUENCE);
        let first = [
            reply(SEQUENCE, NLM_F_MULTIPART, new_link(1, "lo")),
            reply(SEQUENCE, NLM_F_MULTIPART, new_link(2, "eth0")),
        ]
        .concat();
        assert!(!answers.take(&first).unwrap());
        let second = [
            reply(SEQUENCE, NLM_F_MULTIPART, new_link(3, "veth0")),
            done(SEQUENCE, 0),
        ]
        .concat();
        assert!(answers.take(&second).unwrap());
        assert_eq!(names(&answers), ["lo", "eth0", "veth0"]);

        // NLMSG_DONE may come without its error field.
        let bare_done = nlmsghdr(16, 3, NLM_F_MULTIPART, SEQUENCE);
        assert!(Answers::new(SEQUENCE).take(&bare_done).unwrap());
    }

    #[test]
    fn a_failed_dump_is_an_error() {
        let mut answers = Answers::new(SEQUENCE);
        let datagram = [
            reply(SEQUENCE, NLM_F_MULTIPART, new_link(1, "lo")),
            done(SEQUENCE, -libc::EINVAL),
        ]
        .concat();
        let err = answers.take(&datagram).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
    }

    #[test]
    fn answers_to_earlier_requests_are_skipped() {
        let mut answers = Answers::new(SEQUENCE);
        let mut refused = ErrorMessage::default();
        refused.code = std::num::NonZeroI32::new(-libc::ENODEV);
        let datagram = [
            reply(SEQUENCE - 1, NLM_F_MULTIPART, new_link(9, "old")),
            reply(SEQUENCE - 1, 0, NetlinkPayload::Error(refused)),
            done(SEQUENCE - 1, 0),
        ]
        .concat();
        assert!(!answers.take(&datagram).unwrap());
        let datagram = eth0_then_ack();
        assert!(answers.take(&datagram).unwrap());
        assert_eq!(names(&answers), ["eth0"]);
    }

    #[test]
    fn messages_are_read_at_their_aligned_offsets() {
        // An NLMSG_NOOP 17 bytes long, padded to 20, then the ack.
        let datagram = [
            nlmsghdr(17, 1, 0, SEQUENCE),
            vec![0xaa, 0, 0, 0],
            ack(SEQUENCE),
        ]
        .concat();
        let mut answers = Answers::new(SEQUENCE);
        assert!(answers.take(&datagram).unwrap());
        assert!(answers.messages.is_empty());
    }

    #[test]
    fn truncated_or_garbled_replies_are_errors_not_panics() {
        let whole = eth0_then_ack();
        for cut in 1..whole.len() {
            // Either an error, or (cut after a whole message) more to come.
            if let Ok(finished) = Answers::new(SEQUENCE).take(&whole[..cut]) {
                assert!(!finished, "cut at {cut}");
            }
        }
        // A length field shorter than a header.
        let short = nlmsghdr(4, 2, 0, SEQUENCE);
        let err = Answers::new(SEQUENCE).take(&short).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
