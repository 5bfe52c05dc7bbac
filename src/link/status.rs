//! Status words: the errno values of the system under test that `M`/`m` packets carry
//! (Linux numbers, as the C executor sends them).

/// No such user / file / event source.
pub const ENOENT: u32 = 2;
/// Procinfo for a transaction that is not a running command.
pub const ESRCH: u32 = 3;
/// A transfer was interrupted by the client.
pub const EINTR: u32 = 4;
/// Too many transactions on this connection.
pub const EAGAIN: u32 = 11;
/// Major status of a command killed by a signal (minor = signal number).
pub const EFAULT: u32 = 14;
/// A request on an xid whose transaction is still live: the agent answers it at once with
/// this (in the shape of that request: `M` and `m`=0 for a command, `M` alone otherwise)
/// and leaves the live transaction alone. (The C executor dropped such a request without
/// a word, so its client waited for an answer that never came.)
pub const EBUSY: u32 = 16;
/// Hello refused: the agent is out of file descriptors (see [`super::Refusal`]).
pub const EMFILE: u32 = 24;
/// An extract's file shrank while the agent read it (it was truncated or rewritten in
/// place): the bytes received are not a state the file was ever in.
pub const ENODATA: u32 = 61;
/// The request was not understood; as a hello refusal: the hello could not be read.
pub const EPROTO: u32 = 71;
/// Hello refused: the agent serves its maximum number of clients (`m` = that maximum).
pub const EUSERS: u32 = 87;

/// `errno 2 (No such file or directory)`: the agent's status words are Linux errno values,
/// shown with their meaning so a log line is readable without a lookup table.
pub fn errno_text(errno: u32) -> String {
    let text = match errno {
        1 => "Operation not permitted",
        2 => "No such file or directory",
        3 => "No such process",
        4 => "Interrupted",
        5 => "Input/output error",
        11 => "Resource temporarily unavailable",
        12 => "Out of memory",
        13 => "Permission denied",
        16 => "Device or resource busy",
        17 => "File exists",
        20 => "Not a directory",
        21 => "Is a directory",
        22 => "Invalid argument",
        24 => "Too many open files",
        28 => "No space left on device",
        30 => "Read-only file system",
        36 => "File name too long",
        61 => "No data available",
        71 => "Protocol error (request not understood)",
        87 => "Too many users",
        _ => return format!("errno {errno}"),
    };
    format!("errno {errno} ({text})")
}
