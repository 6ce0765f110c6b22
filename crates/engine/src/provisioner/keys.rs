//! The keys everything in osprov indexes by: a host or a dispatcher within its namespace (the
//! occupancy book, the inventory cache, the engine's sessions, the controller's triggers).

/// A host within a namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostKey {
    pub namespace: String,
    pub host: String,
}

/// A dispatcher within a namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DispKey {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for DispKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}
