//! Endurance and overload of an mTLS pair (issue 13): the soak (a fixed
//! rate for a long time with certificates rotating, sampled from `/proc`
//! and the sidecars' metrics, judged for failures and growth) and the
//! overload run (three times the maximum rate: shed, bounded, recovered).
//! Run by `weft-soak` and, shorter, by `tests/tests/endurance.rs`.

pub mod endurance;
pub mod load;
pub mod overload;
pub mod pair;
pub mod sample;
pub mod verdict;
