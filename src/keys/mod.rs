//! API keys and what sluice knows about each: cleaning, injection and fingerprints
//! ([`apikey`]), what a 429's body says about the key's pending capacity ([`capacity`]),
//! and the per-key cooldowns, room and `maxAllowed` shared by the proxy and the queue
//! ([`keystate`]).

pub mod apikey;
pub mod capacity;
pub mod keystate;
