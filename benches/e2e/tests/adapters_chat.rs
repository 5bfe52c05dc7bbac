//! chat/expect (issue #16) through the real agent, with the blocking and the smol
//! adapters, in both dialects: a shell script that prompts, reads and answers on a tty;
//! the per-expect deadline; the end of output during an expect; the buffer's bound; and
//! `su` refusing a wrong password where it can run.

use std::time::{Duration, Instant};

use tuppence::link::{ClientConfig, Command, Outcome, Signal};
use tuppence::wire::Dialect;
use tuppence_blocking::{ChatError, Pattern, Patterns};
use tuppence_e2e::{LocalAgent, local_agent, me};

/// Long enough never to fire on a loaded machine when a match is due.
const LONG: Duration = Duration::from_secs(30);

/// Prompts for a name, greets, prompts for a number, exits with it.
const SCRIPT: &str =
    r#"printf 'name? '; read N; echo "hi $N"; printf 'code: '; read C; echo "bye"; exit $C"#;

fn config(dialect: Dialect) -> ClientConfig {
    ClientConfig {
        dialect,
        ..ClientConfig::default()
    }
}

fn blocking(dialect: Dialect) -> (LocalAgent, tuppence_blocking::Session) {
    let (agent, stream) = local_agent();
    let session =
        tuppence_blocking::Session::new(stream, config(dialect), Duration::from_secs(10)).unwrap();
    (agent, session)
}

fn cmd(line: &str) -> Command {
    Command::new(line.to_owned())
        .user(me())
        .timeout(Duration::from_secs(60))
}

fn p(items: &[Pattern]) -> Patterns {
    Patterns::new(items.iter().cloned()).unwrap()
}

#[test]
fn blocking_chat_with_a_prompting_script() {
    for dialect in [Dialect::V4, Dialect::Legacy3] {
        let (_agent, session) = blocking(dialect);
        let chat = session.chat(cmd(SCRIPT)).unwrap();
        let m = chat.expect(&p(&["name? ".into()]), LONG).unwrap();
        assert_eq!(m.matched(), b"name? ", "{dialect:?}");
        chat.send_line(b"world").unwrap();
        // The tty echoes what was typed, then the script answers.
        let m = chat
            .expect(&p(&[Pattern::regex(r"hi (\w+)\r\n"), "error".into()]), LONG)
            .unwrap();
        assert_eq!(m.pattern, 0);
        assert_eq!(m.consumed, &b"world\r\nhi world\r\n"[..], "{dialect:?}");
        chat.expect(&p(&["code: ".into()]), LONG).unwrap();
        chat.send_line(b"7").unwrap();
        assert_eq!(chat.read_line(LONG).unwrap().as_deref(), Some(&b"7"[..]));
        assert_eq!(chat.read_line(LONG).unwrap().as_deref(), Some(&b"bye"[..]));
        assert_eq!(chat.wait(Some(LONG)).unwrap(), Outcome::Exited(7));
        assert_eq!(chat.read_line(LONG).unwrap(), None);
    }
}

#[test]
fn blocking_expect_deadline_is_enforced_and_the_chat_goes_on() {
    let (_agent, session) = blocking(Dialect::V4);
    let chat = session
        .chat(cmd("printf 'ready\\n'; read X; echo \"got $X\"; sleep 30"))
        .unwrap();
    let t = Instant::now();
    let err = chat
        .expect(&p(&["never".into()]), Duration::from_millis(400))
        .unwrap_err();
    let took = t.elapsed();
    assert!(matches!(err, ChatError::Timeout(_)), "{err:?}");
    assert!(took >= Duration::from_millis(400), "{took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    // What arrived meanwhile is kept, and the chat goes on.
    chat.expect(&p(&["ready".into()]), LONG).unwrap();
    chat.send_line(b"x").unwrap();
    chat.expect(&p(&["got x".into()]), LONG).unwrap();
    chat.interrupt(Signal::named("KILL")).unwrap();
    assert_eq!(chat.wait(Some(LONG)).unwrap(), Outcome::Signaled(9));
}

#[test]
fn blocking_end_of_output_during_expect_is_not_a_timeout() {
    for dialect in [Dialect::V4, Dialect::Legacy3] {
        let (_agent, session) = blocking(dialect);
        let chat = session.chat(cmd("echo partial; exit 4")).unwrap();
        let t = Instant::now();
        let err = chat.expect(&p(&["never".into()]), LONG).unwrap_err();
        assert!(t.elapsed() < LONG / 2, "waited for the deadline");
        assert!(
            matches!(err, ChatError::Eof(Outcome::Exited(4))),
            "{dialect:?}: {err:?}"
        );
        assert_eq!(chat.take_buffered(), &b"partial\r\n"[..]);
    }
}

#[test]
fn blocking_full_buffer_is_an_error_and_loses_nothing() {
    let (_agent, session) = blocking(Dialect::V4);
    let run = session
        .run(cmd("printf '%0100d' 0; echo END").tty(true))
        .unwrap();
    let chat = tuppence_blocking::Chat::with_limit(run, 64);
    let (mut seen, mut fulls) = (Vec::new(), 0);
    loop {
        match chat.expect(&p(&["END".into()]), LONG) {
            Ok(m) => {
                seen.extend_from_slice(&m.consumed);
                break;
            }
            Err(ChatError::Full { limit: 64 }) => {
                fulls += 1;
                seen.extend_from_slice(&chat.take_buffered());
            }
            Err(ChatError::Eof(_)) => break,
            Err(e) => panic!("{e:?}"),
        }
    }
    assert!(fulls > 0, "the 64-byte limit was never reached");
    assert_eq!(chat.wait(Some(LONG)).unwrap(), Outcome::Exited(0));
    seen.extend_from_slice(&chat.take_buffered());
    let mut want = vec![b'0'; 100];
    want.extend_from_slice(b"END\r\n");
    assert_eq!(seen, want);
}

/// `su` as an unprivileged user asks for root's password; a wrong one is refused.
#[test]
fn blocking_su_refuses_a_wrong_password() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP su chat: the agent must run as root to act as tuppence-test");
        return;
    }
    if std::process::Command::new("id")
        .arg("tuppence-test")
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
        || !std::path::Path::new("/bin/su").exists()
    {
        eprintln!("SKIP su chat: no user tuppence-test or no /bin/su");
        return;
    }
    let (_agent, session) = blocking(Dialect::V4);
    let chat = session
        .chat(
            Command::new("LC_ALL=C su root -c true")
                .user("tuppence-test")
                .timeout(Duration::from_secs(60)),
        )
        .unwrap();
    chat.expect(&p(&[Pattern::regex("(?i)password: ?")]), LONG)
        .unwrap();
    chat.send_line(b"certainly-not-the-password").unwrap();
    let m = chat
        .expect(&p(&["Authentication failure".into(), "#".into()]), LONG)
        .unwrap();
    assert_eq!(m.pattern, 0);
    assert_eq!(chat.wait(Some(LONG)).unwrap(), Outcome::Exited(1));
}

#[test]
fn smol_chat_with_a_prompting_script_deadline_and_eof() {
    for dialect in [Dialect::V4, Dialect::Legacy3] {
        let (_agent, stream) = local_agent();
        smol::block_on(async {
            let io = async_io::Async::new(stream).unwrap();
            let session = tuppence_smol::Session::new(io, config(dialect))
                .await
                .unwrap();
            let mut chat = session.chat(cmd(SCRIPT)).await.unwrap();
            chat.expect(&p(&["name? ".into()]), LONG).await.unwrap();
            // Nothing more comes until we answer: the deadline fires.
            let t = Instant::now();
            let err = chat
                .expect(&p(&["hi".into()]), Duration::from_millis(300))
                .await
                .unwrap_err();
            assert!(matches!(err, ChatError::Timeout(_)), "{err:?}");
            assert!(t.elapsed() >= Duration::from_millis(300));
            chat.send_line("smol").await.unwrap();
            let m = chat
                .expect(&p(&["hi smol\r\n".into()]), LONG)
                .await
                .unwrap();
            assert_eq!(m.consumed, &b"smol\r\nhi smol\r\n"[..], "{dialect:?}");
            chat.expect(&p(&["code: ".into()]), LONG).await.unwrap();
            chat.send_line("0").await.unwrap();
            // The script ends before "never" shows up: end of output, not a timeout.
            let err = chat.expect(&p(&["never".into()]), LONG).await.unwrap_err();
            assert!(
                matches!(err, ChatError::Eof(Outcome::Exited(0))),
                "{dialect:?}: {err:?}"
            );
            assert_eq!(chat.take_buffered(), &b"0\r\nbye\r\n"[..]);
            assert_eq!(chat.wait(Some(LONG)).await.unwrap(), Outcome::Exited(0));
        });
    }
}
