//! What one run measures and how big: the full plan, the `--quick` one, and the command
//! line that picks and sizes figures.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::clients::{Adapter, BlockingClient, MioClient, SmolClient};

#[derive(Clone, Debug)]
pub struct Plan {
    pub quick: bool,
    /// `true` round trips per method, in blocks of `rt_block` (methods interleaved).
    pub rt_n: usize,
    pub rt_block: usize,
    /// Bytes of the transfer and output figures, and repetitions of each.
    pub size: u64,
    pub reps: usize,
    /// Concurrent `sleep 1`s on one connection, and repetitions.
    pub sleeps: usize,
    pub sleep_reps: usize,
    /// Connections × `true`s per connection.
    pub conns: usize,
    pub per_conn: usize,
    /// Memory: output size and how long the client stops reading; stdin flood and the
    /// `sleep` it goes into.
    pub mem_output: u64,
    pub stall: Duration,
    pub flood: usize,
    /// Connections to one agent in the `mem` figure's idle-after-transfer scenario.
    pub idle_conns: usize,
    pub flood_sleep: u32,
    /// The farm: sessions in one client process, agent processes they are dealt over,
    /// `true`s per session, the file each session injects and extracts, repetitions.
    pub farm_sessions: usize,
    pub farm_agents: usize,
    pub farm_cmds: usize,
    pub farm_file: u64,
    pub farm_reps: usize,
    pub only: Option<Vec<String>>,
    pub adapters: Option<Vec<String>>,
    /// Where the `disk` figure writes (`--disk-dir`; see `disk.rs`).
    pub disk_dir: Option<PathBuf>,
}

impl Plan {
    pub fn full() -> Plan {
        Plan {
            quick: false,
            rt_n: 1000,
            rt_block: 100,
            size: 256 << 20,
            reps: 9,
            sleeps: 1000,
            sleep_reps: 3,
            conns: 100,
            per_conn: 20,
            mem_output: 256 << 20,
            stall: Duration::from_secs(3),
            flood: 64 << 20,
            idle_conns: 60,
            flood_sleep: 5,
            farm_sessions: 256,
            farm_agents: 8,
            farm_cmds: 10,
            farm_file: 1 << 20,
            farm_reps: 3,
            only: None,
            adapters: None,
            disk_dir: None,
        }
    }

    pub fn quick() -> Plan {
        Plan {
            quick: true,
            rt_n: 200,
            rt_block: 50,
            size: 32 << 20,
            reps: 3,
            sleeps: 200,
            sleep_reps: 1,
            conns: 100,
            per_conn: 5,
            mem_output: 64 << 20,
            stall: Duration::from_secs(1),
            flood: 16 << 20,
            idle_conns: 60,
            flood_sleep: 2,
            farm_sessions: 64,
            farm_agents: 8,
            farm_cmds: 5,
            farm_file: 1 << 20,
            farm_reps: 1,
            only: None,
            adapters: None,
            disk_dir: None,
        }
    }

    /// The adapters to measure, connected to `sock`.
    pub fn adapters(&self, sock: &Path) -> Vec<Box<dyn Adapter>> {
        let want = |n: &str| {
            self.adapters
                .as_ref()
                .is_none_or(|o| o.iter().any(|a| a == n))
        };
        let mut v: Vec<Box<dyn Adapter>> = Vec::new();
        if want("mio") {
            v.push(Box::new(MioClient::connect(sock)));
        }
        if want("smol") {
            v.push(Box::new(SmolClient::connect(sock)));
        }
        if want("smol1") {
            v.push(Box::new(SmolClient::connect_local(sock)));
        }
        if want("blocking") {
            v.push(Box::new(BlockingClient::connect(sock)));
        }
        v
    }

    /// The adapters of the `disk` figure: mio (the fastest inject) unless `--adapters` says.
    pub fn disk_adapters(&self, sock: &Path) -> Vec<Box<dyn Adapter>> {
        if self.adapters.is_some() {
            return self.adapters(sock);
        }
        vec![Box::new(MioClient::connect(sock))]
    }

    pub fn wants(&self, figure: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|f| f == figure))
    }
}

const USAGE: &str = "usage: e2e [--quick] [--only rt,extract,inject,output,cli,sleep,conns,mem,disk,startup,farm] \
                     [--adapters mio,smol,smol1,blocking] [--reps N] [--size MIB] [--rt N] \
                     [--disk-dir DIR]";

pub fn parse_args() -> Result<Plan, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut plan = if args.iter().any(|a| a == "--quick") {
        Plan::quick()
    } else {
        Plan::full()
    };
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--quick" | "--bench" => {}
            "--only" => plan.only = Some(value("--only")?.split(',').map(str::to_owned).collect()),
            "--adapters" => {
                plan.adapters = Some(value("--adapters")?.split(',').map(str::to_owned).collect())
            }
            "--reps" => plan.reps = value("--reps")?.parse().map_err(|e| format!("{e}"))?,
            "--size" => {
                plan.size = value("--size")?
                    .parse::<u64>()
                    .map_err(|e| format!("{e}"))?
                    << 20
            }
            "--disk-dir" => plan.disk_dir = Some(PathBuf::from(value("--disk-dir")?)),
            "--rt" => plan.rt_n = value("--rt")?.parse().map_err(|e| format!("{e}"))?,
            "-h" | "--help" => return Err(USAGE.into()),
            // cargo bench passes filters through; there is nothing to filter.
            _ => {}
        }
    }
    plan.rt_block = plan.rt_block.min(plan.rt_n).max(1);
    Ok(plan)
}
