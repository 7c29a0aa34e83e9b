//! Bounded-memory summaries the rules and the metrics share, kept apart from the rules so that
//! each rule's file holds only what it flags and why.

pub mod beacon;
pub mod bloom;
pub mod bounded;
pub mod ewma;
pub mod learning;
pub mod network;
pub mod topk;
pub mod window_sum;
