//! Status words: the errno values of the system under test that `M`/`m` packets carry
//! (Linux numbers, as the C executor sends them). The one table of them: the agent reports
//! with these, the clients explain them with [`errno_text`].

/// Operation not permitted: the agent cannot act as the requested user.
pub const EPERM: u32 = 1;
/// No such user, file or directory; also "unknown event source".
pub const ENOENT: u32 = 2;
/// No such process: procinfo for a transaction that is not a running command.
pub const ESRCH: u32 = 3;
/// Interrupted: an inject or extract aborted by the client.
pub const EINTR: u32 = 4;
/// Input/output error; the agent's fallback for errors without an OS code.
pub const EIO: u32 = 5;
/// Too many transactions on this connection.
pub const EAGAIN: u32 = 11;
/// Permission denied (also: a user `--allow-user` does not allow).
pub const EACCES: u32 = 13;
/// Major status of a command killed by a signal (minor = signal number).
pub const EFAULT: u32 = 14;
/// A request on an xid whose transaction is still live: the agent answers it at once with
/// this (in the shape of that request: `M` and `m`=0 for a command, `M` alone otherwise)
/// and leaves the live transaction alone. (The C executor dropped such a request without
/// a word, so its client waited for an answer that never came.)
pub const EBUSY: u32 = 16;
/// Is a directory (also: not a regular file, as the C executor reported it).
pub const EISDIR: u32 = 21;
/// Invalid argument (also: a FIFO, socket or device named by an extract or a monitor).
pub const EINVAL: u32 = 22;
/// Hello refused: the agent is out of file descriptors (see [`super::Refusal`]).
pub const EMFILE: u32 = 24;
/// File name too long.
pub const ENAMETOOLONG: u32 = 36;
/// Too many levels of symbolic links.
pub const ELOOP: u32 = 40;
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
        EPERM => "Operation not permitted",
        ENOENT => "No such file or directory",
        ESRCH => "No such process",
        EINTR => "Interrupted",
        EIO => "Input/output error",
        EAGAIN => "Resource temporarily unavailable",
        12 => "Out of memory",
        EACCES => "Permission denied",
        EBUSY => "Device or resource busy",
        17 => "File exists",
        20 => "Not a directory",
        EISDIR => "Is a directory",
        EINVAL => "Invalid argument",
        EMFILE => "Too many open files",
        28 => "No space left on device",
        30 => "Read-only file system",
        ENAMETOOLONG => "File name too long",
        ENODATA => "No data available",
        EPROTO => "Protocol error (request not understood)",
        EUSERS => "Too many users",
        _ => return format!("errno {errno}"),
    };
    format!("errno {errno} ({text})")
}
