//! The osprov.io/v1alpha1 custom resource types (filled in by the core provisioner work).
