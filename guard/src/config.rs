//! TODO(owner assigned): config
