#![no_std]
// This file exists so the agent can depend on this crate (to rebuild it when
// it changes); the programs are in main.rs.
