//! A client and a server machine wired together in memory, with a toy agent that runs
//! nothing: it answers `echo` commands itself. Shows the sans-IO drive loop end to end:
//! `cargo run --example pair -- echo hello`.

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tuppence::Machine;
use tuppence::link::{
    Client, ClientConfig, ClientEvent, Command, Outcome, Server, ServerConfig, ServerEvent,
};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = if args.is_empty() {
        "echo hello from tuppence".to_string()
    } else {
        args.join(" ")
    };
    let now = Instant::now();
    let mut client = Client::new(ClientConfig::default(), now);
    let mut server = Server::new(
        ServerConfig {
            cid: 7,
            ..ServerConfig::default()
        },
        now,
    );
    let xid = client
        .run(Command::new(command.clone()))
        .expect("queue the command");

    let mut wire = BytesMut::new();
    let mut done = None;
    while done.is_none() {
        client.poll_transmit(now, &mut wire);
        let bytes = wire.split();
        server
            .handle_bytes(now, &bytes)
            .expect("server accepts the client's bytes");
        while let Some(event) = server.poll_event() {
            if let ServerEvent::RunCommand { xid, command, .. } = event {
                // The toy agent: `echo ARGS` prints ARGS; anything else is "not found".
                match command.strip_prefix(b"echo ") {
                    Some(text) => {
                        let mut line = text.to_vec();
                        line.push(b'\n');
                        server.output(xid, 1, Bytes::from(line)).unwrap();
                        server.command_exited(xid, 0).unwrap();
                    }
                    None => {
                        server
                            .output(
                                xid,
                                2,
                                Bytes::from_static(b"toy agent: only echo is known\n"),
                            )
                            .unwrap();
                        server.command_exited(xid, 127).unwrap();
                    }
                }
            }
        }
        server.poll_transmit(now, &mut wire);
        let bytes = wire.split();
        println!("server -> client: {} bytes", bytes.len());
        client
            .handle_bytes(now, &bytes)
            .expect("client accepts the server's bytes");
        while let Some(event) = client.poll_event() {
            match event {
                ClientEvent::Connected {
                    cid,
                    server_version,
                    ..
                } => {
                    println!(
                        "connected: cid {cid}, server protocol {}.{}",
                        server_version.0, server_version.1
                    )
                }
                ClientEvent::Output { channel, data, .. } => {
                    let name = if channel == 1 { "stdout" } else { "stderr" };
                    print!("{name}: {}", String::from_utf8_lossy(&data));
                }
                ClientEvent::Finished { xid: x, outcome } if x == xid => done = Some(outcome),
                _ => {}
            }
        }
    }
    match done {
        Some(Outcome::Exited(code)) => println!("`{command}` exited with {code}"),
        other => println!("`{command}` ended: {other:?}"),
    }
}
