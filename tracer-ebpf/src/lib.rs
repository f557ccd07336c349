#![no_std]
// The library target lets the agent's build script depend on this crate, so cargo rebuilds the
// programs when their sources change.
