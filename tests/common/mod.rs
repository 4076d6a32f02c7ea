//! Setups more than one test file uses, written once. Each test file that
//! needs them says `mod common;`; what a file does not use is no warning.
#![allow(dead_code)]

pub mod promtool;
pub mod script;
pub mod sim_run;
