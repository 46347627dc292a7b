//! TODO(owner assigned): verdict
