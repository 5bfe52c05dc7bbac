//! How a sniff answer is printed: as text for a terminal, or as one JSON object per answer
//! (written by hand, no serde: strings as lossy UTF-8), and the exit status it gives.

use std::fmt::Write as _;

use tuppence::sniff::cert::{CertReply, CertRequest, CertTarget};
use tuppence::sniff::nat::{NatParams, NatStatus};
use tuppence::sniff::ping::{PingReply, PingRequest, PingTarget};
use tuppence::sniff::{EncodeError, TaskId, TaskKind, TaskResult, code};
use tuppence_blocking::sniff::SniffRequest;

/// The task a request asks for, with its typed parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskArgs {
    Nop,
    Ping(PingRequest),
    Cert(CertRequest),
    Nat(NatParams),
}

impl TaskArgs {
    /// The request to send.
    pub fn to_request(&self) -> Result<SniffRequest, EncodeError> {
        match self {
            TaskArgs::Nop => Ok(SniffRequest::nop()),
            TaskArgs::Ping(r) => SniffRequest::ping(r.clone()),
            TaskArgs::Cert(r) => SniffRequest::cert(r.clone()),
            TaskArgs::Nat(p) => SniffRequest::nat(p),
        }
    }

    fn kind(&self) -> TaskKind {
        match self {
            TaskArgs::Nop => TaskKind::Nop,
            TaskArgs::Ping(r) => TaskKind::Ping(r.clone()),
            TaskArgs::Cert(r) => TaskKind::Cert(r.clone()),
            TaskArgs::Nat(_) => TaskKind::Nat,
        }
    }
}

/// 0 for an `O` answer, 1 for anything else (`F`, `U`, an answer that does not decode).
pub fn exit_code(result: &TaskResult) -> u8 {
    match result {
        TaskResult::Unknown | TaskResult::Failed(_) | TaskResult::Undecodable { .. } => 1,
        TaskResult::Nop
        | TaskResult::Ping(_)
        | TaskResult::Cert(_)
        | TaskResult::Nat(_)
        | TaskResult::Other(_) => 0,
    }
}

/// What a one-byte failure code means for the task that was asked.
pub fn failure_reason(kind: &TaskKind, c: u8) -> &'static str {
    match (kind, c) {
        (_, code::TIMEOUT) => "timed out",
        (_, code::OUTPUT_TOO_LARGE) => "output too large",
        (_, code::TOO_MANY_TASKS) => "too many tasks running on the agent",
        (TaskKind::Ping(_) | TaskKind::Cert(_) | TaskKind::Nat, b'I') => "bad parameters",
        (TaskKind::Ping(_) | TaskKind::Cert(_), b'F') => "the task could not be started",
        (TaskKind::Ping(_) | TaskKind::Cert(_), b'P') => "reading the task's output failed",
        (TaskKind::Ping(_) | TaskKind::Cert(_), b'R') => "the task printed nothing",
        (TaskKind::Ping(_), b'O') => "the ping output is malformed",
        (TaskKind::Cert(_), b'B') => "a host block of the output is malformed",
        (TaskKind::Cert(_), b'E') => "text after the last host block",
        (TaskKind::Cert(_), b'C') => "the output has the wrong number of host blocks",
        (TaskKind::Nat, b'S') => "the task could not be started",
        (TaskKind::Nat, b'M') => "a line of the output is missing",
        (TaskKind::Nat, b'U') => "the output holds an unknown word",
        _ => "unknown failure code",
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn hex(b: &[u8]) -> String {
    b.iter()
        .fold(String::with_capacity(b.len() * 2), |mut s, x| {
            let _ = write!(s, "{x:02x}");
            s
        })
}

fn ms(us: u32) -> String {
    format!("{}.{:03} ms", us / 1000, us % 1000)
}

fn nat_word(s: NatStatus) -> &'static str {
    match s {
        NatStatus::None => "none",
        NatStatus::Nat => "nat",
        NatStatus::Direct => "direct",
    }
}

/// The base64 body the agent sends, armoured again so it is a PEM file.
fn pem(body: &[u8]) -> String {
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----",
        lossy(body)
    )
}

fn names(b: &[u8]) -> Vec<String> {
    b.split(|&c| c == b'\n')
        .filter(|l| !l.is_empty())
        .map(lossy)
        .collect()
}

/// The answer as text for a terminal, ending with a newline.
pub fn render_text(task: &TaskArgs, result: &TaskResult) -> String {
    let mut s = String::new();
    match (task, result) {
        (_, TaskResult::Unknown) => s.push_str("the agent does not know this task type (U)\n"),
        (_, TaskResult::Failed(data)) => match result.failure_code() {
            Some(c) => {
                let _ = writeln!(
                    s,
                    "failed: {} ({})",
                    char::from(c),
                    failure_reason(&task.kind(), c)
                );
            }
            None => {
                let _ = writeln!(s, "failed: {}", hex(data));
            }
        },
        (_, TaskResult::Undecodable { data, error }) => {
            let _ = writeln!(s, "answer does not decode: {error}; data: {}", hex(data));
        }
        (_, TaskResult::Nop) => s.push_str("ok\n"),
        (TaskArgs::Ping(req), TaskResult::Ping(replies)) => {
            for (t, r) in req.targets.iter().zip(replies) {
                text_ping(&mut s, t, r);
            }
        }
        (TaskArgs::Cert(req), TaskResult::Cert(replies)) => {
            for (t, r) in req.targets.iter().zip(replies) {
                text_cert(&mut s, t, r);
            }
        }
        (_, TaskResult::Nat(r)) => {
            let _ = writeln!(s, "IPv4: {}\nIPv6: {}", nat_word(r.ipv4), nat_word(r.ipv6));
        }
        (_, TaskResult::Other(data)) => {
            let _ = writeln!(s, "ok: {}", hex(data));
        }
        (_, other) => {
            let _ = writeln!(s, "{other:?}");
        }
    }
    s
}

fn text_ping(s: &mut String, t: &PingTarget, r: &PingReply) {
    if !r.is_resolved() {
        let _ = writeln!(s, "{}: did not resolve", lossy(&t.host));
        return;
    }
    let times: Vec<String> = r
        .rtt_us
        .iter()
        .map(|v| v.map_or_else(|| "lost".to_owned(), ms))
        .collect();
    let _ = writeln!(
        s,
        "{} ({}): {}",
        lossy(&t.host),
        lossy(&r.ip),
        times.join(", ")
    );
}

fn text_cert(s: &mut String, t: &CertTarget, r: &CertReply) {
    let _ = writeln!(
        s,
        "{}:{}: {} certificate{}",
        lossy(&t.host),
        t.port,
        r.count(),
        if r.count() == 1 { "" } else { "s" }
    );
    if let Some(tls) = &r.tls {
        let _ = writeln!(
            s,
            "  protocol {}, cipher {}",
            lossy(&tls.protocol),
            lossy(&tls.cipher)
        );
    }
    for (i, c) in r.certs.iter().enumerate() {
        if t.want_cert {
            let _ = writeln!(s, "  [{i}]\n{}", pem(&c.value));
        } else {
            let _ = writeln!(s, "  [{i}] SHA-1 {}", lossy(&c.value));
        }
        if let Some(d) = &c.details {
            let _ = writeln!(s, "      names: {}", names(&d.names).join(", "));
            let _ = writeln!(s, "      expires: {}", lossy(&d.expiry));
        }
    }
}

/// Appends `b` as a JSON string (lossy UTF-8, control characters escaped).
fn json_str(out: &mut String, b: &[u8]) {
    out.push('"');
    for ch in String::from_utf8_lossy(b).chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn json_list<T>(out: &mut String, items: &[T], mut each: impl FnMut(&mut String, &T)) {
    out.push('[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        each(out, item);
    }
    out.push(']');
}

/// The answer as one JSON object on one line, ending with a newline:
/// `{"id":N,"task":"ping","status":"ok",…}`. `status` is `ok`, `failed` (with `code` and
/// `reason`, or `data_hex`), `unknown` or `undecodable` (with `error` and `data_hex`).
pub fn render_json(id: TaskId, task: &TaskArgs, result: &TaskResult) -> String {
    let mut s = String::new();
    let name = match task {
        TaskArgs::Nop => "nop",
        TaskArgs::Ping(_) => "ping",
        TaskArgs::Cert(_) => "cert",
        TaskArgs::Nat(_) => "nat",
    };
    let _ = write!(s, "{{\"id\":{},\"task\":\"{name}\",", id.get());
    match (task, result) {
        (_, TaskResult::Unknown) => s.push_str("\"status\":\"unknown\""),
        (_, TaskResult::Failed(data)) => {
            s.push_str("\"status\":\"failed\",");
            match result.failure_code() {
                Some(c) => {
                    s.push_str("\"code\":");
                    json_str(&mut s, &[c]);
                    s.push_str(",\"reason\":");
                    json_str(&mut s, failure_reason(&task.kind(), c).as_bytes());
                }
                None => {
                    s.push_str("\"data_hex\":");
                    json_str(&mut s, hex(data).as_bytes());
                }
            }
        }
        (_, TaskResult::Undecodable { data, error }) => {
            s.push_str("\"status\":\"undecodable\",\"error\":");
            json_str(&mut s, error.to_string().as_bytes());
            s.push_str(",\"data_hex\":");
            json_str(&mut s, hex(data).as_bytes());
        }
        (_, TaskResult::Nop) => s.push_str("\"status\":\"ok\""),
        (TaskArgs::Ping(req), TaskResult::Ping(replies)) => {
            s.push_str("\"status\":\"ok\",\"hosts\":");
            let pairs: Vec<_> = req.targets.iter().zip(replies).collect();
            json_list(&mut s, &pairs, |s, (t, r)| {
                s.push_str("{\"host\":");
                json_str(s, &t.host);
                s.push_str(",\"ip\":");
                json_str(s, &r.ip);
                s.push_str(",\"rtt_us\":");
                json_list(s, &r.rtt_us, |s, v| match v {
                    Some(us) => {
                        let _ = write!(s, "{us}");
                    }
                    None => s.push_str("null"),
                });
                s.push('}');
            });
        }
        (TaskArgs::Cert(req), TaskResult::Cert(replies)) => {
            s.push_str("\"status\":\"ok\",\"services\":");
            let pairs: Vec<_> = req.targets.iter().zip(replies).collect();
            json_list(&mut s, &pairs, |s, (t, r)| json_cert(s, t, r));
        }
        (_, TaskResult::Nat(r)) => {
            let _ = write!(
                s,
                "\"status\":\"ok\",\"ipv4\":\"{}\",\"ipv6\":\"{}\"",
                nat_word(r.ipv4),
                nat_word(r.ipv6)
            );
        }
        (_, TaskResult::Other(data)) => {
            s.push_str("\"status\":\"ok\",\"data_hex\":");
            json_str(&mut s, hex(data).as_bytes());
        }
        (_, other) => {
            s.push_str("\"status\":\"undecodable\",\"error\":");
            json_str(&mut s, format!("{other:?}").as_bytes());
        }
    }
    s.push_str("}\n");
    s
}

fn json_cert(s: &mut String, t: &CertTarget, r: &CertReply) {
    s.push_str("{\"host\":");
    json_str(s, &t.host);
    let _ = write!(s, ",\"port\":{}", t.port);
    if let Some(tls) = &r.tls {
        s.push_str(",\"protocol\":");
        json_str(s, &tls.protocol);
        s.push_str(",\"cipher\":");
        json_str(s, &tls.cipher);
    }
    s.push_str(",\"certificates\":");
    json_list(s, &r.certs, |s, c| {
        if t.want_cert {
            s.push_str("{\"pem\":");
            json_str(s, pem(&c.value).as_bytes());
        } else {
            s.push_str("{\"sha1\":");
            json_str(s, &c.value);
        }
        if let Some(d) = &c.details {
            s.push_str(",\"names\":");
            json_list(s, &names(&d.names), |s, n| json_str(s, n.as_bytes()));
            s.push_str(",\"expiry\":");
            json_str(s, &d.expiry);
        }
        s.push('}');
    });
    s.push('}');
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use tuppence::sniff::cert::{CertDetails, CertEntry, StartTls, TlsParams};
    use tuppence::sniff::nat::NatReply;
    use tuppence::sniff::ping::Family;

    #[test]
    fn json_and_text() {
        let ping = TaskArgs::Ping(PingRequest {
            targets: vec![
                PingTarget {
                    family: Family::Any,
                    count: 2,
                    size: 56,
                    host: Bytes::from_static(b"lo\"cal"),
                },
                PingTarget {
                    family: Family::Any,
                    count: 2,
                    size: 56,
                    host: Bytes::from_static(b"x.invalid"),
                },
            ],
        });
        let result = TaskResult::Ping(vec![
            PingReply {
                ip: Bytes::from_static(b"127.0.0.1"),
                rtt_us: vec![Some(1038), None],
            },
            PingReply::unresolved(),
        ]);
        assert_eq!(
            render_json(TaskId::from(3), &ping, &result),
            "{\"id\":3,\"task\":\"ping\",\"status\":\"ok\",\"hosts\":[\
             {\"host\":\"lo\\\"cal\",\"ip\":\"127.0.0.1\",\"rtt_us\":[1038,null]},\
             {\"host\":\"x.invalid\",\"ip\":\"\",\"rtt_us\":[]}]}\n"
        );
        assert_eq!(
            render_text(&ping, &result),
            "lo\"cal (127.0.0.1): 1.038 ms, lost\nx.invalid: did not resolve\n"
        );
        let fail = TaskResult::Failed(Bytes::from_static(b"T"));
        assert_eq!(
            render_json(TaskId::from(1), &ping, &fail),
            "{\"id\":1,\"task\":\"ping\",\"status\":\"failed\",\"code\":\"T\",\"reason\":\"timed out\"}\n"
        );
        assert_eq!(
            render_text(&TaskArgs::Nop, &TaskResult::Unknown),
            "the agent does not know this task type (U)\n"
        );
        assert_eq!(exit_code(&fail), 1);
        assert_eq!(exit_code(&TaskResult::Nop), 0);

        let cert = TaskArgs::Cert(CertRequest {
            targets: vec![CertTarget {
                starttls: StartTls::None,
                want_cert: false,
                want_chain: false,
                want_details: true,
                want_params: true,
                port: 443,
                host: Bytes::from_static(b"localhost"),
            }],
        });
        let result = TaskResult::Cert(vec![CertReply {
            tls: Some(TlsParams {
                cipher: Bytes::from_static(b"C"),
                protocol: Bytes::from_static(b"TLSv1.3"),
            }),
            certs: vec![CertEntry {
                value: Bytes::from_static(b"AB12"),
                details: Some(CertDetails {
                    names: Bytes::from_static(b"a\nb"),
                    expiry: Bytes::from_static(b"Dec 1 00:00:00 2030 GMT"),
                }),
            }],
        }]);
        assert_eq!(
            render_json(TaskId::from(9), &cert, &result),
            "{\"id\":9,\"task\":\"cert\",\"status\":\"ok\",\"services\":[{\"host\":\"localhost\",\
             \"port\":443,\"protocol\":\"TLSv1.3\",\"cipher\":\"C\",\"certificates\":[{\"sha1\":\
             \"AB12\",\"names\":[\"a\",\"b\"],\"expiry\":\"Dec 1 00:00:00 2030 GMT\"}]}]}\n"
        );
        assert!(render_text(&cert, &result).contains("names: a, b"));
        let nat = TaskArgs::Nat(NatParams::default());
        let r = TaskResult::Nat(NatReply {
            ipv4: NatStatus::Direct,
            ipv6: NatStatus::None,
        });
        assert_eq!(
            render_json(TaskId::from(2), &nat, &r),
            "{\"id\":2,\"task\":\"nat\",\"status\":\"ok\",\"ipv4\":\"direct\",\"ipv6\":\"none\"}\n"
        );
        let mut s = String::new();
        json_str(&mut s, b"\x01\x7f\xff");
        assert_eq!(s, "\"\\u0001\\u007f\u{fffd}\"");
    }
}
