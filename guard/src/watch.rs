//! TODO(owner assigned): watch
