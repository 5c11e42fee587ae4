//! TODO(helper-2)
