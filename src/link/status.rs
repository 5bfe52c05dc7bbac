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
/// An extract's file shrank while the agent read it (it was truncated or rewritten in
/// place): the bytes received are not a state the file was ever in.
pub const ENODATA: u32 = 61;
/// The request was not understood.
pub const EPROTO: u32 = 71;

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
        17 => "File exists",
        20 => "Not a directory",
        21 => "Is a directory",
        22 => "Invalid argument",
        28 => "No space left on device",
        30 => "Read-only file system",
        36 => "File name too long",
        61 => "No data available",
        71 => "Protocol error (request not understood)",
        _ => return format!("errno {errno}"),
    };
    format!("errno {errno} ({text})")
}
