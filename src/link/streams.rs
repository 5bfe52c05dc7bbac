//! What one transaction delivers, as the client adapters hand it to applications: a
//! command's output stream ([`RunEvent`], collected into [`Output`]), a monitor's events
//! ([`MonitorEvent`]) and a transfer's progress ([`TransferEvent`]). Each view is made from
//! the [`ClientEvent`]s of its transaction in one exhaustive `match` here, so every adapter
//! shows the same thing and none decides on its own what to drop.

use bytes::Bytes;

use super::{ClientEvent, LinkError, Outcome};

/// One piece of a running command's output, or its end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunEvent {
    Stdout(Bytes),
    Stderr(Bytes),
    /// The command ended; nothing follows. A lost link ends with
    /// `Finished(Outcome::LinkLost(_))`.
    Finished(Outcome),
}

impl RunEvent {
    /// What a command's stream shows of an event of its transaction: its output (tty
    /// output is all stdout) and its end. The end of one output channel (`OutputEnd`) is
    /// not shown: `Finished` follows the end of both. A procinfo answer goes to whoever
    /// asked (the adapters route it), not into the stream. The other events never concern
    /// a command's transaction.
    pub fn from_event(event: ClientEvent) -> Option<RunEvent> {
        match event {
            ClientEvent::Output {
                channel: 2, data, ..
            } => Some(RunEvent::Stderr(data)),
            ClientEvent::Output { data, .. } => Some(RunEvent::Stdout(data)),
            ClientEvent::Finished { outcome, .. } => Some(RunEvent::Finished(outcome)),
            ClientEvent::OutputEnd { .. } | ClientEvent::ProcInfo { .. } => None,
            ClientEvent::Connected { .. }
            | ClientEvent::InjectReady { .. }
            | ClientEvent::MonitorData { .. }
            | ClientEvent::Settled { .. }
            | ClientEvent::LinkDead
            | ClientEvent::ProtocolViolation(_) => None,
        }
    }
}

/// Everything a finished command printed, and how it ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub outcome: Outcome,
}

impl Output {
    /// Collects a command's stream. A stream that ends without `Finished` (it was taken
    /// before) reports the link as lost.
    pub fn collect(events: impl IntoIterator<Item = RunEvent>) -> Output {
        let mut out = Output {
            stdout: Vec::new(),
            stderr: Vec::new(),
            outcome: Outcome::LinkLost(LinkError::Closed),
        };
        for event in events {
            if out.add(event) {
                break;
            }
        }
        out
    }

    /// Adds one event; returns true at the end (`Finished`).
    pub fn add(&mut self, event: RunEvent) -> bool {
        match event {
            RunEvent::Stdout(d) => self.stdout.extend_from_slice(&d),
            RunEvent::Stderr(d) => self.stderr.extend_from_slice(&d),
            RunEvent::Finished(outcome) => {
                self.outcome = outcome;
                return true;
            }
        }
        false
    }
}

/// What a monitor delivers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MonitorEvent {
    /// One event of the source (for line sources, one or more lines).
    Data(Bytes),
    /// Everything pending when `settle(seq)` arrived has been delivered.
    Settled(u32),
    /// The subscription is over (`Completed` after the client ended it).
    Finished(Outcome),
}

impl MonitorEvent {
    /// What a monitor shows of an event of its transaction. The others never concern a
    /// monitor's transaction.
    pub fn from_event(event: ClientEvent) -> Option<MonitorEvent> {
        match event {
            ClientEvent::MonitorData { data, .. } => Some(MonitorEvent::Data(data)),
            ClientEvent::Settled { seq, .. } => Some(MonitorEvent::Settled(seq)),
            ClientEvent::Finished { outcome, .. } => Some(MonitorEvent::Finished(outcome)),
            ClientEvent::Connected { .. }
            | ClientEvent::Output { .. }
            | ClientEvent::OutputEnd { .. }
            | ClientEvent::InjectReady { .. }
            | ClientEvent::ProcInfo { .. }
            | ClientEvent::LinkDead
            | ClientEvent::ProtocolViolation(_) => None,
        }
    }
}

/// How an inject or extract goes on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TransferEvent {
    /// Inject: the agent opened the file, send the data now.
    Ready,
    /// Extract: the next piece of the file.
    Data(Bytes),
    /// The transfer is over.
    Finished(Outcome),
}

impl TransferEvent {
    /// What a transfer shows of an event of its transaction. The end of an extract's data
    /// (`OutputEnd`) is not shown: `Finished` says whether the whole file arrived. The
    /// others never concern a transfer's transaction.
    pub fn from_event(event: ClientEvent) -> Option<TransferEvent> {
        match event {
            ClientEvent::InjectReady { .. } => Some(TransferEvent::Ready),
            ClientEvent::Output { data, .. } => Some(TransferEvent::Data(data)),
            ClientEvent::Finished { outcome, .. } => Some(TransferEvent::Finished(outcome)),
            ClientEvent::OutputEnd { .. } => None,
            ClientEvent::Connected { .. }
            | ClientEvent::MonitorData { .. }
            | ClientEvent::Settled { .. }
            | ClientEvent::ProcInfo { .. }
            | ClientEvent::LinkDead
            | ClientEvent::ProtocolViolation(_) => None,
        }
    }
}
