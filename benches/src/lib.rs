//! Benchmarks (see issue 7).
