//! Support code for the benches and `tarn-load` (see README.md).
