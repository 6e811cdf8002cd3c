//! KDIPC runtime: the coherence protocol, the fault path, the transport,
//! and the nameserver's registry.

pub mod certs;
pub mod config;
pub mod fault;
pub mod interrupts;
pub mod nameserver;
pub mod node;
pub mod persist;
pub mod protocol;
pub mod registry;
pub mod semaphores;
pub mod stats;
pub mod transport;
pub mod undo;
pub mod wire;
