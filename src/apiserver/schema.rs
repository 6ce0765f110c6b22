//! Structural schema handling: pruning, defaulting and validation of custom resources.
