//! Criterion benchmarks of tenantbench's hot paths live in benches/benches/.
