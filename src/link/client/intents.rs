//! The application's requests: each opens or acts on a transaction and queues its packets
//! whole or not at all.

use std::time::Duration;

use bytes::Bytes;

use super::deadlines::Deadline;
use super::{Client, Kind, Transaction};
use crate::link::{Command, Signal, UsageError};
use crate::wire::{CommandRequest, Dialect, Packet};

impl Client {
    /// Starts a command; returns its xid.
    ///
    /// The timeout sent is [`Command::timeout_secs_in`] the dialect: without one, a 4.0
    /// agent applies its own default, while a 3.0 agent is sent 60 s (the C executor would
    /// read 0 as 12 s). A command with a timeout also gets a client deadline (see
    /// [`ClientConfig::deadline_grace`](crate::link::ClientConfig::deadline_grace)). Refused with [`UsageError::TooLarge`] when user,
    /// command and environment do not fit in one packet of the dialect.
    pub fn run(&mut self, cmd: Command) -> Result<u16, UsageError> {
        let timeout = cmd.timeout_secs_in(self.config.dialect);
        let deadline = match self.config.deadline_grace {
            Some(grace) if timeout > 0 => {
                Deadline::Unarmed(Duration::from_secs(u64::from(timeout)).saturating_add(grace))
            }
            _ => Deadline::None,
        };
        let packet = Packet::Command(CommandRequest {
            user: cmd.user,
            command: cmd.command,
            timeout,
            request_tty: u32::from(cmd.tty),
            reserved: [0, 0],
            env: cmd.env,
        });
        let xid = self.open(Kind::Command, packet)?;
        if deadline != Deadline::None
            && let Some(tx) = self.transactions.get_mut(&xid)
        {
            tx.deadline = deadline;
            // Before the hello reply the request waits in `pending`; it is counted from
            // when it is queued for the transport (`on_handshake`).
            if self.cid.is_some() {
                self.unarmed.push(xid);
            }
        }
        Ok(xid)
    }

    /// Starts a command whose stdin is empty: the request and the end of its stdin are
    /// queued as one intent, so they leave in one write and the agent reads them in one
    /// (a [`Client::run`] followed by [`Client::close_stdin`] is two intents, which an
    /// adapter that wakes its writer per intent sends in two writes).
    pub fn run_without_stdin(&mut self, cmd: Command) -> Result<u16, UsageError> {
        let xid = self.run(cmd)?;
        // `run` checked the room for this intent; the end of stdin rides with it.
        self.end_stdin(xid)?;
        Ok(xid)
    }

    /// Sends bytes to a command's stdin.
    pub fn send_stdin(&mut self, xid: u16, data: Bytes) -> Result<(), UsageError> {
        let tx = self.live(xid)?;
        if !matches!(tx.kind, Kind::Command) || tx.stdin_closed {
            return Err(UsageError::WrongState {
                xid,
                what: "take stdin (not a command, or stdin closed)",
            });
        }
        self.send_data(xid, data)
    }

    /// Closes a command's stdin (the command reads EOF).
    pub fn close_stdin(&mut self, xid: u16) -> Result<(), UsageError> {
        let tx = self.live(xid)?;
        if !matches!(tx.kind, Kind::Command) || tx.stdin_closed {
            return Err(UsageError::WrongState {
                xid,
                what: "close stdin (not a command, or already closed)",
            });
        }
        self.check_room()?;
        self.end_stdin(xid)
    }

    /// Queues the end of a command's stdin and marks it closed (the caller checked the
    /// room for its intent).
    fn end_stdin(&mut self, xid: u16) -> Result<(), UsageError> {
        self.enqueue(xid, Packet::Eof { channel: 0 })?;
        if let Some(tx) = self.transactions.get_mut(&xid) {
            tx.stdin_closed = true;
        }
        Ok(())
    }

    /// Sends a signal to a command's process group. In protocol 3.0 the signal is always
    /// KILL (the packet has no payload there); an interrupt also aborts a transfer.
    pub fn interrupt(&mut self, xid: u16, signal: Signal) -> Result<(), UsageError> {
        self.live(xid)?;
        let packet = self.interrupt_packet(signal);
        self.send(xid, packet)
    }

    /// An interrupt as the dialect says it: by name in 4.0; without payload (KILL) in 3.0.
    pub(super) fn interrupt_packet(&self, signal: Signal) -> Packet {
        let signal = match self.config.dialect {
            Dialect::V4 => signal.into_bytes(),
            Dialect::Legacy3 => Bytes::new(),
        };
        Packet::Interrupt { signal }
    }

    /// Asks the agent to create `path` as `user` with `mode`; wait for
    /// [`ClientEvent::InjectReady`](crate::link::ClientEvent::InjectReady), then `send_file_data` and `finish_file`.
    pub fn inject(
        &mut self,
        user: impl Into<Bytes>,
        path: impl Into<Bytes>,
        mode: u32,
    ) -> Result<u16, UsageError> {
        let packet = Packet::Inject {
            user: user.into(),
            path: path.into(),
            mode,
        };
        self.open(
            Kind::Inject {
                ready: false,
                sent_eof: false,
            },
            packet,
        )
    }

    /// File content for an inject that is ready.
    pub fn send_file_data(&mut self, xid: u16, data: Bytes) -> Result<(), UsageError> {
        match self.live(xid)?.kind {
            Kind::Inject {
                ready: true,
                sent_eof: false,
            } => self.send_data(xid, data),
            _ => Err(UsageError::WrongState {
                xid,
                what: "take file data (not an inject that is ready and unfinished)",
            }),
        }
    }

    /// Ends the file: the agent renames it into place and answers.
    pub fn finish_file(&mut self, xid: u16) -> Result<(), UsageError> {
        match self.live(xid)?.kind {
            Kind::Inject {
                ready: true,
                sent_eof: false,
            } => {
                self.send(xid, Packet::Eof { channel: 0 })?;
                if let Some(Transaction {
                    kind: Kind::Inject { sent_eof, .. },
                    ..
                }) = self.transactions.get_mut(&xid)
                {
                    *sent_eof = true;
                }
                Ok(())
            }
            _ => Err(UsageError::WrongState {
                xid,
                what: "finish a file (not an inject that is ready and unfinished)",
            }),
        }
    }

    /// Asks for the content of `path`, read as `user`: [`ClientEvent::Output`](crate::link::ClientEvent::Output) on channel 0,
    /// then `OutputEnd` and `Finished`.
    pub fn extract(
        &mut self,
        user: impl Into<Bytes>,
        path: impl Into<Bytes>,
    ) -> Result<u16, UsageError> {
        let packet = Packet::Extract {
            user: user.into(),
            path: path.into(),
        };
        self.open(Kind::Extract, packet)
    }

    /// Subscribes to an event source (`agent`, `kmsg`, `file:PATH`).
    pub fn monitor(&mut self, source: impl Into<Bytes>) -> Result<u16, UsageError> {
        self.require_v4("monitor")?;
        let packet = Packet::Monitor {
            source: source.into(),
        };
        self.open(Kind::Monitor { ending: false }, packet)
    }

    /// Asks the monitor's source to flush what is pending; answered by `Settled { seq }`.
    pub fn settle(&mut self, xid: u16, seq: u32) -> Result<(), UsageError> {
        self.require_v4("settle")?;
        match self.live(xid)?.kind {
            Kind::Monitor { .. } => self.send(xid, Packet::Settle { seq }),
            _ => Err(UsageError::WrongState {
                xid,
                what: "settle (not a monitor)",
            }),
        }
    }

    /// Ends a monitor; `Finished` follows.
    pub fn end_monitor(&mut self, xid: u16) -> Result<(), UsageError> {
        match self.live(xid)?.kind {
            Kind::Monitor { ending: false } => {
                self.send(xid, Packet::Eof { channel: 0 })?;
                if let Some(Transaction {
                    kind: Kind::Monitor { ending },
                    ..
                }) = self.transactions.get_mut(&xid)
                {
                    *ending = true;
                }
                Ok(())
            }
            _ => Err(UsageError::WrongState {
                xid,
                what: "end a monitor (not a monitor, or already ending)",
            }),
        }
    }

    /// Asks for process information about a running command (bit *n* of `mask` asks for
    /// field type *n*, see [`crate::wire::field`]).
    pub fn procinfo(&mut self, xid: u16, mask: u32) -> Result<(), UsageError> {
        self.require_v4("procinfo")?;
        match self.live(xid)?.kind {
            Kind::Command => self.send(xid, Packet::ProcInfoQuery { mask }),
            _ => Err(UsageError::WrongState {
                xid,
                what: "answer procinfo (not a command)",
            }),
        }
    }

    /// What a transaction owes the agent when its application gives up on it (a dropped
    /// handle, a local failure, a user's abort): a monitor is ended, an inject or extract
    /// aborted with an interrupt (the agent removes an inject's temporary and stops
    /// reading an extract's file). A command is left to run to its end (interrupt it
    /// explicitly to stop it); so is a monitor already ending. Like any intent it queues
    /// nothing and answers `QueueFull` while the transmit buffer is over its limit, so a
    /// caller that cannot wait keeps the xid and tries again once there is room.
    pub fn abandon(&mut self, xid: u16) -> Result<(), UsageError> {
        match self.live(xid)?.kind {
            Kind::Monitor { ending: false } => self.end_monitor(xid),
            Kind::Inject { .. } | Kind::Extract => self.interrupt(xid, Signal::KILL),
            Kind::Command | Kind::Monitor { ending: true } => Ok(()),
        }
    }

    /// Asks the agent to stop (it kills what it started and exits).
    pub fn quit(&mut self) -> Result<(), UsageError> {
        self.core.check_open()?;
        self.send(0, Packet::Quit)
    }
}
