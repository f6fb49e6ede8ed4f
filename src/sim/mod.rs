//! `parley sim`: a simulated OpenAI-compatible server. (Owned by the sim work.)

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use crate::tokenizer::Tokenizer;

/// Flags of `parley sim` (also used to start the in-process sim when `parley bench` has no URL).
#[derive(Clone, Debug, clap::Args)]
pub struct SimArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0 picks a free one and prints it).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Tokenizer used to count prompt tokens: a tokenizer.json, an HF model directory, or "builtin".
    #[arg(long)]
    pub tokenizer_path: Option<PathBuf>,
    /// Write one JSON line per request with the server's own view of it.
    #[arg(long)]
    pub record: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
}

/// A running sim; dropping it does not stop it, call [`SimHandle::shutdown`].
pub struct SimHandle {
    pub addr: SocketAddr,
}

impl SimHandle {
    /// Stops the executors and flushes the record file.
    pub fn shutdown(self) {
        unimplemented!()
    }
}

/// Starts the sim on its own executor threads and returns once it is listening.
pub fn spawn(_args: &SimArgs, _tokenizer: Arc<Tokenizer>) -> Result<SimHandle, SimError> {
    unimplemented!()
}

/// Runs `parley sim` in the foreground until SIGINT/SIGTERM.
pub fn run(_args: &SimArgs) -> Result<(), SimError> {
    unimplemented!()
}
