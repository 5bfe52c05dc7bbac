//! The two sniff messages: a request `id[4] | type u8 | params` and an answer
//! `id[4] | status u8 | data`.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

use super::DecodeError;

/// Bytes of the id plus the type/status byte: the shortest valid message.
pub const MESSAGE_HEADER_LEN: usize = 5;

/// A task id: 4 opaque bytes that the agent echoes verbatim.
///
/// The C plugin never converts the id's byte order, it only compares and copies it; the
/// Python server packs it as a big-endian u32. So the bytes are the identity and the u32 is
/// only how we show and allocate them.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct TaskId(pub [u8; 4]);

impl TaskId {
    /// The id as the big-endian u32 the server uses.
    pub const fn get(self) -> u32 {
        u32::from_be_bytes(self.0)
    }
}

impl From<u32> for TaskId {
    fn from(v: u32) -> Self {
        TaskId(v.to_be_bytes())
    }
}

impl From<TaskId> for u32 {
    fn from(id: TaskId) -> Self {
        id.get()
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.get())
    }
}

impl fmt::Debug for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TaskId({})", self.get())
    }
}

/// The status byte of an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    /// `U`: the agent does not know the requested task type (no data). A task already
    /// running under the same id keeps running.
    Unknown,
    /// `A`: the *previous* task under this id was aborted (no data). Sent before the new
    /// task's answer.
    Aborted,
    /// `O`: the task succeeded; task-specific data follows.
    Ok,
    /// `F`: the task failed; task-specific data follows (usually one code byte).
    Failed,
}

impl Status {
    /// The wire byte.
    pub const fn byte(self) -> u8 {
        match self {
            Status::Unknown => b'U',
            Status::Aborted => b'A',
            Status::Ok => b'O',
            Status::Failed => b'F',
        }
    }

    /// The status for a wire byte, `None` for anything else.
    pub const fn from_byte(b: u8) -> Option<Status> {
        match b {
            b'U' => Some(Status::Unknown),
            b'A' => Some(Status::Aborted),
            b'O' => Some(Status::Ok),
            b'F' => Some(Status::Failed),
            _ => None,
        }
    }

    /// Whether answers with this status carry task data.
    pub const fn has_data(self) -> bool {
        matches!(self, Status::Ok | Status::Failed)
    }
}

/// Splits the 5-byte header off a message.
fn split_header(mut msg: Bytes) -> Result<(TaskId, u8, Bytes), DecodeError> {
    let Some(head) = msg.get(..MESSAGE_HEADER_LEN) else {
        return Err(DecodeError::MessageTooShort { len: msg.len() });
    };
    let Ok([a, b, c, d, kind]) = <[u8; MESSAGE_HEADER_LEN]>::try_from(head) else {
        return Err(DecodeError::MessageTooShort { len: msg.len() });
    };
    let rest = msg.split_off(MESSAGE_HEADER_LEN);
    Ok((TaskId([a, b, c, d]), kind, rest))
}

/// A request from the server: run task `task_type` with `params` under `id`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub id: TaskId,
    /// The task type byte (`N`, `P`, `C`, `n`, or a user-defined one).
    pub task_type: u8,
    /// Everything after the type byte, uninterpreted here (each task type parses its own).
    pub params: Bytes,
}

impl Request {
    /// Decodes one unframed request. Zero-copy: `params` shares `msg`'s storage.
    pub fn decode(msg: Bytes) -> Result<Request, DecodeError> {
        let (id, task_type, params) = split_header(msg)?;
        Ok(Request {
            id,
            task_type,
            params,
        })
    }

    /// Bytes of the unframed message.
    pub fn encoded_len(&self) -> usize {
        self.params.len().saturating_add(MESSAGE_HEADER_LEN)
    }

    /// Appends the unframed message.
    pub fn encode(&self, out: &mut BytesMut) {
        out.reserve(self.encoded_len());
        out.put_slice(&self.id.0);
        out.put_u8(self.task_type);
        out.put_slice(&self.params);
    }
}

/// An answer from the agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub id: TaskId,
    pub status: Status,
    /// Task data of `O`/`F` answers; always empty for `U`/`A`.
    pub data: Bytes,
}

impl Answer {
    /// `U` for `id`.
    pub fn unknown(id: TaskId) -> Answer {
        Answer {
            id,
            status: Status::Unknown,
            data: Bytes::new(),
        }
    }

    /// `A` for `id`.
    pub fn aborted(id: TaskId) -> Answer {
        Answer {
            id,
            status: Status::Aborted,
            data: Bytes::new(),
        }
    }

    /// Decodes one unframed answer. Strict: an unknown status byte, or data behind `U`/`A`
    /// (the C plugin always sends those as exactly 5 bytes), is an error.
    pub fn decode(msg: Bytes) -> Result<Answer, DecodeError> {
        let (id, status, data) = split_header(msg)?;
        let Some(status) = Status::from_byte(status) else {
            return Err(DecodeError::UnknownStatus { id, status });
        };
        if !status.has_data() && !data.is_empty() {
            return Err(DecodeError::UnexpectedData {
                id,
                status,
                len: data.len(),
            });
        }
        Ok(Answer { id, status, data })
    }

    /// Bytes of the unframed message.
    pub fn encoded_len(&self) -> usize {
        self.data.len().saturating_add(MESSAGE_HEADER_LEN)
    }

    /// Appends the unframed message.
    pub fn encode(&self, out: &mut BytesMut) {
        out.reserve(self.encoded_len());
        out.put_slice(&self.id.0);
        out.put_u8(self.status.byte());
        out.put_slice(&self.data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_is_big_endian_u32_of_opaque_bytes() {
        let id = TaskId::from(0x0102_0304);
        assert_eq!(id.0, [1, 2, 3, 4]);
        assert_eq!(id.get(), 0x0102_0304);
        assert_eq!(id.to_string(), "16909060");
    }

    #[test]
    fn request_decodes_and_encodes() {
        let msg = Bytes::from_static(b"\x00\x00\x00\x01Pxyz");
        let r = Request::decode(msg.clone()).unwrap();
        assert_eq!(r.id, TaskId::from(1));
        assert_eq!(r.task_type, b'P');
        assert_eq!(r.params, Bytes::from_static(b"xyz"));
        let mut out = BytesMut::new();
        r.encode(&mut out);
        assert_eq!(out.freeze(), msg);
    }

    #[test]
    fn short_messages_are_typed_errors() {
        for len in 0..5 {
            let msg = Bytes::from(vec![b'N'; len]);
            assert_eq!(
                Request::decode(msg.clone()),
                Err(DecodeError::MessageTooShort { len })
            );
            assert_eq!(
                Answer::decode(msg),
                Err(DecodeError::MessageTooShort { len })
            );
        }
    }

    #[test]
    fn answers_are_strict() {
        let a = Answer::decode(Bytes::from_static(b"\x00\x00\x00\x07U")).unwrap();
        assert_eq!(a, Answer::unknown(TaskId::from(7)));
        assert_eq!(
            Answer::decode(Bytes::from_static(b"\x00\x00\x00\x07X")),
            Err(DecodeError::UnknownStatus {
                id: TaskId::from(7),
                status: b'X'
            })
        );
        assert_eq!(
            Answer::decode(Bytes::from_static(b"\x00\x00\x00\x07Az")),
            Err(DecodeError::UnexpectedData {
                id: TaskId::from(7),
                status: Status::Aborted,
                len: 1
            })
        );
        let a = Answer::decode(Bytes::from_static(b"\x00\x00\x00\x07FI")).unwrap();
        assert_eq!((a.status, &a.data[..]), (Status::Failed, &b"I"[..]));
    }
}
