//! Benchmarks of KDIPC (run with `cargo bench -p kdipc-benches`); each
//! prints its figures beside a physical reference measured in the same run.
