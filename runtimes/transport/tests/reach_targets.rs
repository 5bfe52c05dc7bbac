//! `exec:`, `ssh:` and `chroot:` target syntax: what each form parses to, its canonical
//! form, the command it runs, and the errors that say what was expected.

mod common;

use std::ffi::OsString;

use common::{err, parse};
use proptest::prelude::*;
use tuppence_transport::words::{self, WordsError};
use tuppence_transport::{
    DEFAULT_AGENT, Dialect, Endpoint, ListenOptions, Listener, ParseTargetError, Target,
    TransportError,
};

fn argv(e: &Endpoint) -> Vec<String> {
    e.command()
        .expect("a command")
        .into_iter()
        .map(|a| a.into_string().expect("utf-8"))
        .collect()
}

fn ssh(
    user: Option<&str>,
    host: &str,
    port: Option<u16>,
    agent: Option<&str>,
    options: &[&str],
) -> Endpoint {
    Endpoint::Ssh {
        user: user.map(str::to_owned),
        host: host.to_owned(),
        port,
        agent: agent.map(str::to_owned),
        options: options.iter().map(|o| (*o).to_owned()).collect(),
    }
}

/// `(input, endpoint, canonical form)`.
fn forms() -> Vec<(&'static str, Endpoint, &'static str)> {
    let exec = |w: &[&str]| Endpoint::Exec {
        argv: w.iter().map(|s| (*s).to_owned()).collect(),
    };
    vec![
        (
            "exec:podman exec -i CTR tuppence serve --stdio",
            exec(&[
                "podman", "exec", "-i", "CTR", "tuppence", "serve", "--stdio",
            ]),
            "exec:podman exec -i CTR tuppence serve --stdio",
        ),
        (
            "exec:kubectl exec -i POD -- tuppence serve --stdio",
            exec(&[
                "kubectl", "exec", "-i", "POD", "--", "tuppence", "serve", "--stdio",
            ]),
            "exec:kubectl exec -i POD -- tuppence serve --stdio",
        ),
        (
            r#"exec:  sh -c "exec tuppence serve --stdio 2>>/tmp/log"  "#,
            exec(&["sh", "-c", "exec tuppence serve --stdio 2>>/tmp/log"]),
            "exec:sh -c 'exec tuppence serve --stdio 2>>/tmp/log'",
        ),
        (
            // Colons in the command belong to it.
            "exec:virsh -c qemu:///system console vm1",
            exec(&["virsh", "-c", "qemu:///system", "console", "vm1"]),
            "exec:virsh -c qemu:///system console vm1",
        ),
        ("ssh:host", ssh(None, "host", None, None, &[]), "ssh:host"),
        (
            "ssh:me@host.example:2222",
            ssh(Some("me"), "host.example", Some(2222), None, &[]),
            "ssh:me@host.example:2222",
        ),
        (
            "ssh:root@[::1]:22?agent=/usr/local/bin/tuppence",
            ssh(
                Some("root"),
                "::1",
                Some(22),
                Some("/usr/local/bin/tuppence"),
                &[],
            ),
            "ssh:root@[::1]:22?agent=/usr/local/bin/tuppence",
        ),
        (
            "ssh:[fe80::1%eth0]",
            ssh(None, "fe80::1%eth0", None, None, &[]),
            "ssh:[fe80::1%eth0]",
        ),
        (
            // A user with @ (a directory account): the host follows the last @.
            "ssh:me@corp@10.0.0.7?o=Port=2200&o=IdentityFile=/k&agent=~/bin/tuppence",
            ssh(
                Some("me@corp"),
                "10.0.0.7",
                None,
                Some("~/bin/tuppence"),
                &["Port=2200", "IdentityFile=/k"],
            ),
            "ssh:me@corp@10.0.0.7?agent=~/bin/tuppence&o=Port=2200&o=IdentityFile=/k",
        ),
        (
            "chroot:/srv/root",
            Endpoint::Chroot {
                dir: "/srv/root".into(),
                agent: None,
            },
            "chroot:/srv/root",
        ),
        (
            "chroot:rel/dir?agent=/opt/tuppence",
            Endpoint::Chroot {
                dir: "rel/dir".into(),
                agent: Some("/opt/tuppence".into()),
            },
            "chroot:rel/dir?agent=/opt/tuppence",
        ),
    ]
}

#[test]
fn every_form_parses_displays_and_round_trips_in_both_dialects() {
    for (input, endpoint, canonical) in forms() {
        for (prefix, dialect) in [("", Dialect::V4), ("legacy+", Dialect::Legacy3)] {
            let t = parse(&format!("{prefix}{input}"));
            assert_eq!(t.endpoint, endpoint, "{input:?}");
            assert_eq!(t.dialect, dialect, "{input:?}");
            assert_eq!(t.to_string(), format!("{prefix}{canonical}"), "{input:?}");
            assert_eq!(parse(&t.to_string()), t, "{input:?}");
            assert!(
                !t.endpoint.may_be_device_link(),
                "{input:?}: one client per pipe"
            );
        }
    }
    assert_eq!(parse("exec:true").transport_name(), "exec");
    assert_eq!(parse("ssh:h").transport_name(), "ssh");
    assert_eq!(parse("chroot:/").transport_name(), "chroot");
}

#[test]
fn the_commands_they_run() {
    assert_eq!(
        argv(&parse("ssh:h").endpoint),
        [
            "ssh",
            "-T",
            "-o",
            "BatchMode=yes",
            "h",
            "tuppence serve --stdio"
        ]
    );
    // The target's own options first (ssh keeps the first value it reads), the agent
    // path as the remote shell's word.
    assert_eq!(
        argv(&parse("ssh:u@[::1]:2222?o=BatchMode=no&agent=$HOME/bin/tuppence").endpoint),
        [
            "ssh",
            "-o",
            "BatchMode=no",
            "-T",
            "-o",
            "BatchMode=yes",
            "-p",
            "2222",
            "-l",
            "u",
            "::1",
            "$HOME/bin/tuppence serve --stdio"
        ]
    );
    assert_eq!(
        argv(&parse("chroot:/srv/r").endpoint),
        [
            DEFAULT_AGENT,
            "serve",
            "--stdio",
            "--root-directory",
            "/srv/r"
        ]
    );
    assert_eq!(
        argv(&parse("chroot:/srv/r?agent=/x/tuppence").endpoint),
        [
            "/x/tuppence",
            "serve",
            "--stdio",
            "--root-directory",
            "/srv/r"
        ]
    );
    assert_eq!(
        argv(&parse(r"exec:a 'b c' d\ e").endpoint),
        ["a", "b c", "d e"]
    );
    assert_eq!(parse("unix:/x").endpoint.command(), None::<Vec<OsString>>);
}

#[test]
fn errors_say_what_was_expected() {
    let reach = |s: &str| match err(s) {
        ParseTargetError::Reach { transport, reason } => (transport, reason),
        other => panic!("{s:?}: {other:?}"),
    };
    assert_eq!(
        err("exec:"),
        ParseTargetError::ExecCommand(WordsError::Empty)
    );
    assert_eq!(
        err("exec"),
        ParseTargetError::ExecCommand(WordsError::Empty)
    );
    assert!(matches!(
        err("exec:ssh h 'cmd"),
        ParseTargetError::ExecCommand(WordsError::UnterminatedQuote { quote: '\'', .. })
    ));
    assert!(matches!(
        err("exec:podman exec -i c tuppence serve --stdio 2>/dev/null"),
        ParseTargetError::ExecCommand(WordsError::ShellSyntax { ch: '>', .. })
    ));
    assert!(matches!(
        err("exec:TERM=dumb ssh h"),
        ParseTargetError::ExecCommand(WordsError::Assignment { .. })
    ));
    for (input, needle) in [
        ("ssh:", "missing host"),
        ("ssh", "missing host"),
        ("ssh:@h", "empty user"),
        ("ssh:-oProxyCommand=x", "bad host"),
        ("ssh:-x@h", "bad user"),
        ("ssh:a b@h", "bad user"),
        ("ssh:h:0", "bad port"),
        ("ssh:h:65536", "bad port"),
        ("ssh:h:", "bad port"),
        ("ssh:::1", "must be in brackets"),
        ("ssh:[::1", "no ]"),
        ("ssh:[::1]x", "junk"),
        ("ssh:[host]", "bad IPv6"),
        ("ssh:h/x", "bad host"),
        ("ssh:h?agent", "no value"),
        ("ssh:h?agent=", "empty value"),
        ("ssh:h?port=22", "unknown parameter"),
        ("ssh:h?agent=a&agent=b", "agent given twice"),
        ("chroot:/r?o=x", "unknown parameter"),
    ] {
        let (_, reason) = reach(input);
        assert!(reason.contains(needle), "{input:?}: {reason}");
    }
    assert!(matches!(
        err("chroot:"),
        ParseTargetError::MissingPath {
            transport: "chroot",
            ..
        }
    ));
    assert!(matches!(
        err("chroot:?agent=/x"),
        ParseTargetError::MissingPath { .. }
    ));
    assert!(matches!(
        err("chroot:/a\0b"),
        ParseTargetError::NulInPath { .. }
    ));
    let msg = err("ssh:").to_string();
    assert!(msg.contains("ssh:[USER@]HOST[:PORT]"), "{msg}");
    let msg = err("exec:a | b").to_string();
    assert!(msg.starts_with("bad exec command: unquoted '|'"), "{msg}");
}

#[test]
fn they_are_not_listenable() {
    for s in ["exec:true", "ssh:h", "chroot:/"] {
        match Listener::bind(&parse(s), &ListenOptions::default()) {
            Err(TransportError::NotListenable { transport }) => {
                assert_eq!(transport, parse(s).transport_name());
            }
            other => panic!("{s}: {other:?}"),
        }
    }
}

proptest! {
    /// Any argument vector survives `join` + `split`, and so an `exec:` target's display.
    #[test]
    fn exec_targets_round_trip(w in prop::collection::vec(".{0,12}", 1..6)) {
        let joined = words::join(&w);
        prop_assert_eq!(words::split(&joined).expect("split"), w.clone());
        let t = Target::new(Endpoint::Exec { argv: w });
        prop_assert_eq!(parse(&t.to_string()), t);
    }

    /// Splitting arbitrary text never panics, and what it accepts joins back to the same
    /// words.
    #[test]
    fn splitting_is_total(line in ".{0,40}") {
        if let Ok(w) = words::split(&line) {
            prop_assert_eq!(words::split(&words::join(&w)).expect("split"), w);
        }
    }

    /// Any ssh target that parses prints in a form that parses back to it.
    #[test]
    fn ssh_and_chroot_targets_round_trip(s in "(ssh|chroot):[a-z@:\\[\\]0-9?=&/.-]{0,20}") {
        if let Ok(t) = s.parse::<Target>() {
            prop_assert_eq!(parse(&t.to_string()), t);
        }
    }
}
