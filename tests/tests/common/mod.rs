//! Shared by the BPF_PROG_TEST_RUN suites (the fixture lives in the harness,
//! the benchmark uses it too).
#![allow(dead_code)] // each suite uses its own part

pub use dataplane_tests::test_run::*;
