//! TODO: list formats, normalization, rules
