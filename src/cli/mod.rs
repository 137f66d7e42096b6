//! Terminal presentation of the commands that need more than a line of output.

pub mod demo;
