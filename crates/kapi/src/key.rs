//! The key every stored object has: (resource, namespace, name). Its own module so the store and
//! its persistence both use it without depending on each other.

/// (resource, namespace, name); the namespace is empty for cluster-scoped kinds.
pub type Key = (String, String, String);
