//! SSA tests.
